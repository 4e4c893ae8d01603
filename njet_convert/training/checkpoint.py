"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically, read safely.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, the position in the data (epoch and
batches done in it, which fixes the sampler), the global step, and the RNG states of every rank (torch, CUDA,
Python, numpy) — as tensors and plain Python types only, so it loads with ``torch.load(weights_only=True)``.
It is written to a temporary file in the same folder and renamed over the old one (``os.replace``), so a crash
or a kill while writing never leaves a torn file: the previous checkpoint stays until the new one is complete.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import first_line

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "REQUIRED_KEYS",
    "RunProgress",
    "capture_rng_state",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "njet-finetune/1"
CHECKPOINT_NAME = "checkpoint.pt"
# What resuming reads without a default; a checkpoint lacking one of them cannot continue the run.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng")


@dataclass
class RunProgress:
    """Where a run stands and what it has recorded — everything a checkpoint keeps besides the module states.

    ``partial`` is this rank's epoch sums so far (:class:`~njet_convert.training.metrics.EpochTotals`), so that a
    run resumed mid-epoch reports the means of an uninterrupted one.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    sigma_history: list[dict[str, float]] = field(default_factory=list)
    sigma_steps: list[int] = field(default_factory=list)
    sizes_before: dict[str, list[int]] = field(default_factory=dict)
    macs_before: int | None = None
    val_before: dict[str, float] | None = None
    partial: list[float] = field(default_factory=lambda: [0.0, 0, 0, 0])
    resolution_search: list[dict[str, Any]] | None = None  # the stages' choices, once the search has run
    stages_before: list[dict[str, Any]] = field(default_factory=list)  # σ and factor per subsampling point
    stage_history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: step, stages, map size per point
    sigma_steps_bounded: int = 0  # optimiser steps in which FinetuneConfig.sigma_max_step cut some σ back

    def payload(self) -> dict[str, Any]:
        """The checkpoint keys of this progress (``partial`` is gathered over ranks by the caller)."""
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "history": {"epochs": self.history, "sigma": self.sigma_history, "sigma_steps": self.sigma_steps},
            "feature_sizes_before": self.sizes_before, "val_before": self.val_before,
            "multiply_adds_before": self.macs_before, "resolution_search": self.resolution_search,
            "stages_before": self.stages_before, "stage_history": self.stage_history,
            "sigma_steps_bounded": self.sigma_steps_bounded,
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], rank: int, world_size: int) -> RunProgress:
        """Inverse of :meth:`payload`; this rank's ``partial`` sums when the checkpoint had as many ranks."""
        hist = state.get("history", {})
        progress = cls(
            epoch=int(state["epoch"]), step_in_epoch=int(state["step_in_epoch"]),
            global_step=int(state["global_step"]), history=list(hist.get("epochs", [])),
            sigma_history=list(hist.get("sigma", [])), sigma_steps=list(hist.get("sigma_steps", [])),
            sizes_before=dict(state.get("feature_sizes_before", {})), macs_before=state.get("multiply_adds_before"),
            val_before=state.get("val_before"), resolution_search=state.get("resolution_search"),
            stages_before=list(state.get("stages_before", [])), stage_history=list(state.get("stage_history", [])),
            sigma_steps_bounded=int(state.get("sigma_steps_bounded", 0)),
        )
        partial = state.get("partial")
        if partial is not None and len(partial) == world_size:
            progress.partial = list(partial[rank])
        return progress


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python ``random``, numpy) as tensors and plain types."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: temporary file, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: _torch_save({"format": CHECKPOINT_FORMAT, **payload}, tmp), fsync=True)


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file: a full disk is then ``OSError(ENOSPC)`` (exit 2, "no space left"),
    not the ``RuntimeError`` "unexpected pos" that torch's own file writer raises for it."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def read_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``) and check it fits ``model``.

    A folder is read as ``folder/checkpoint.pt``. Raises ``ValueError`` naming the problem when the file is
    missing, unreadable, not a fine-tuning checkpoint, or holds weights of a different architecture.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"resume={str(path)!r}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same user error
        reason = f"{type(exc).__name__}: {first_line(exc).split('. ')[0][:160]}"
        raise ValueError(f"resume={str(path)!r} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume={str(path)!r} is not a fine-tuning checkpoint (format {CHECKPOINT_FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing or not isinstance(state["model"], dict):
        raise ValueError(f"resume={str(path)!r} is a damaged fine-tuning checkpoint (missing "
                         f"{', '.join(repr(k) for k in missing) or 'the model state'}): resume from another one")
    if model is not None:
        _check_fits(path, state["model"], model)
    return state


def _check_fits(path: Path, saved: dict[str, torch.Tensor], model: nn.Module) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if tuple(saved[k].shape) != tuple(expected[k].shape))
    if missing or extra or shapes:
        detail = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("shape differs", shapes))
            if keys
        )
        raise ValueError(f"resume={str(path)!r} is not a checkpoint of this model ({detail})")
