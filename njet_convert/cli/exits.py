"""Exit codes and signals of ``njet-convert`` (docs/design.md, "Command line"): 0 done, 2 bad input (one line on
stderr, a full disk included), 1 internal error (one line, the traceback in a log file), 130 on Ctrl-C,
128 + signal when a fine-tune was stopped by a signal.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import UserError, first_line
from .parser import PROG

__all__ = ["REPORTING", "CtrlC", "Stopped", "api", "disk_full", "exit_code"]

REPORTING = "see 'Reporting problems' in the njet README for what to attach"

_T = TypeVar("_T")


class Stopped(Exception):
    """A run stopped by a signal (fine-tuning kept its checkpoint): exit ``128 + signal``, like the shell."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class CtrlC:
    """Remembers a Ctrl-C (and still raises KeyboardInterrupt): an import it broke can fail later with another
    error (ImportError, RecursionError), and that is still an interrupted run, not an internal error."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def exit_code(run: Callable[[], int], ctrl_c: CtrlC) -> int:
    """Run ``run()`` and turn how it ended into the exit code and at most one line on stderr."""
    try:
        return run()
    except UserError as err:
        print(f"{PROG}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"{PROG}: {first_line(err)}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if ctrl_c.seen:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        if disk_full(err):
            print(f"{PROG}: error: no space left on the device while writing ({first_line(err)}): free some space "
                  "and run again", file=sys.stderr)
            return 2
        log = _write_traceback()
        print(f"{PROG}: internal error: {type(err).__name__}: {first_line(err)} — the traceback is in {log}; "
              f"{REPORTING}", file=sys.stderr)
        return 1


def api(fn: Callable[[], _T], what: str) -> _T:
    """Run an API call; ValueError (bad input by the API's contract) becomes a UserError. Any other exception,
    TypeError included, is a bug somewhere and stays an internal error."""
    try:
        return fn()
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{what}: {first_line(err)}") from None
    except RuntimeError as err:
        if "pretrained" in str(err).lower() and "weights" in str(err).lower():
            raise UserError(f"{what}: {first_line(err)}; use --checkpoint PATH") from None
        raise


def disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or its cause) is a full disk or quota: OSError ENOSPC/EDQUOT, or a library's wrapped one."""
    import errno

    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("No space left on device", "Disk quota exceeded", "os error 28")):
            return True
        err = err.__cause__ or err.__context__
    return False


def _write_traceback() -> str:
    fd, path = tempfile.mkstemp(prefix="njet-convert-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(traceback.format_exc())
    return path
