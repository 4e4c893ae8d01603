"""``UserError``: bad input from the person running njet (a name, a path, an option), as opposed to a bug.

The command line turns it into exit code 2 and one line on stderr; everything else is an internal error (exit 1).
It subclasses ``ValueError`` so that the Python API keeps the project's rule "bad input -> ValueError".
"""

from __future__ import annotations

__all__ = ["UserError", "first_line"]


class UserError(ValueError):
    """Bad input: the message is one line that says what is wrong and, where it helps, what to do instead."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type name when the message is empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
