"""``UserError``: bad input from the person running njet (a name, a path, an option), as opposed to a bug, and
:func:`first_line`, the one way an error becomes one line of text.

The command line turns a ``UserError`` into exit code 2 and one line on stderr; everything else is an internal error
(exit 1). It subclasses ``ValueError`` so that the Python API keeps the project's rule "bad input -> ValueError".
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["UserError", "first_line"]


class UserError(ValueError):
    """Bad input: the message is one line that says what is wrong and, where it helps, what to do instead."""


def first_line(err: BaseException | str, *, limit: int = 300, prefer: Callable[[str], bool] | None = None) -> str:
    """One line for ``err``: the first non-empty line of its message (the first that ``prefer`` accepts, when one
    does), its type name when the message is empty, cut to ``limit`` characters."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    if prefer is not None:
        lines = [line for line in lines if prefer(line)] or lines
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
