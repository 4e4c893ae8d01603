"""Atomic writes: a file, or a whole output folder, is replaced whole or not at all (docs/design.md, "Atomic
output").

- :func:`atomic_write`: a temporary file in the target's folder, then ``os.replace`` — a crash or an error never
  leaves a half-written file at the target, and an existing file stays as it was until the new one is complete.
- :func:`replace_folder`: every output of one run is written into a temporary sibling folder, which is swapped in
  for the target at the end (one atomic exchange on Linux; elsewhere two renames, the old folder kept until the
  new one is in place). A failure before the swap (an exception, a full disk, a signal) leaves the old folder as
  it was and removes the temporary one.

Files and folders get the modes the user's umask gives (``mkstemp``/``mkdtemp`` alone would make them private).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "remove_stale_staging", "replace_folder", "swap_folders"]

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15)
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Run ``write(tmp_path)``, then move the result to ``path`` (``fsync``: flush it to disk first)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def replace_folder(target: str | os.PathLike, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block ends without error it becomes ``target``.

    On an error the temporary folder is removed (kept when ``keep(folder)`` is true, e.g. when it holds a
    checkpoint to resume from) and ``target`` is untouched. Staging folders of earlier saves of ``target`` whose
    process is gone (killed with SIGKILL, or the machine lost power) are removed first, except those ``keep``
    accepts; a live process's staging folder is never touched (see :func:`remove_stale_staging`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target, keep)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target) + f"{os.getpid()}-", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        _umask_modes(staging)
        swap_folders(staging, target)
    except BaseException:
        if keep is None or not keep(staging):
            shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(target: str | os.PathLike, keep: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove the staging folders ``.NAME.new-PID-*`` beside ``target`` whose writer (process PID on this machine)
    no longer runs and which ``keep`` does not accept; the removed folders. A folder whose name carries no PID
    (written by an older version) is left alone: nothing tells whether its writer still runs."""
    target = Path(target)
    prefix = _staging_prefix(target)
    removed = []
    for folder in target.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name[len(prefix):].partition("-")[0]
        if not pid.isdigit() or _running(int(pid)) or not folder.is_dir() or (keep is not None and keep(folder)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.new-"


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal exists too)."""
    if pid <= 0:
        return True  # not a real writer's id: never treat it as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _umask_modes(folder: Path) -> None:
    """Give every file in ``folder`` the umask's mode (some writers, e.g. safetensors, create private files)."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def swap_folders(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` (an existing ``target`` is replaced and then removed)."""
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old)  # an empty folder as rename target: allowed
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # put the old result back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux's renameat2(RENAME_EXCHANGE); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0
