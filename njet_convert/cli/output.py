"""The output folder of a run (docs/design.md, "Atomic output"): checked before any work, written into a staging
sibling that replaces it whole at the end; a write that fails is bad input (exit 2) and leaves ``--out`` as it
was."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from .exits import disk_full

__all__ = ["default_out", "prepare_out", "staged", "writing"]


def default_out(model: str) -> str:
    """``out/<MODEL>`` with MODEL made a safe folder name (a recipe path: its file stem)."""
    name = Path(model).stem if model.endswith((".yaml", ".yml")) else model
    return os.path.join("out", re.sub(r"[^\w.-]+", "_", name).strip("_") or "model")


def prepare_out(path: str) -> Path:
    """The output folder, checked before any work: replaceable (absent, empty or written by njet) and its parent
    writable (the run writes into a temporary sibling folder and swaps it in at the end)."""
    from ..serialization import check_replaceable

    out = Path(path)
    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to output directory {path!r}: {err.strerror or err}") from None
    return out


@contextlib.contextmanager
def staged(out: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """A staging folder that becomes ``out`` when the block succeeds; on an error ``out`` keeps its previous
    result (the staging folder is kept only when it holds an unfinished fine-tune's checkpoint, to resume)."""
    from ..atomic import replace_folder

    try:
        with replace_folder(out, keep=_resumable) as stage:
            try:
                yield stage
            except BaseException:
                if _resumable(stage):
                    log(f"note: {out} is unchanged; the unfinished run's checkpoint is in {stage}/checkpoint.pt "
                        f"(continue with --resume {stage})")
                raise
    except OSError as err:  # the final swap; a full disk anywhere in the run is said as such (exits.disk_full)
        if disk_full(err):
            raise
        raise UserError(f"cannot replace output directory {str(out)!r}: {err.strerror or err}") from None


def _resumable(folder: Path) -> bool:
    """An unfinished fine-tune's staging folder stays, for ``--resume``."""
    return (folder / "checkpoint.pt").is_file()


def writing(stage: Path, write: Callable[[], Any]) -> None:
    """Run ``write()``; an OSError (a full disk, a permission) is one line that says ``--out`` is unchanged."""
    try:
        write()
    except OSError as err:
        raise UserError(f"cannot write to output directory {str(stage.parent)!r}: {err.strerror or err}; its "
                        "previous contents are unchanged") from None
