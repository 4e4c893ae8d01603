"""Measured path choice for ``impl="auto"``: time the candidate paths once per layer shape and keep the fastest.

The cost model of :mod:`njet_layers.dispatch` decides from constants measured on one machine; on another host
(another CPU, another load pattern, a GPU without a fitted entry) its crossover can sit in the wrong place — on a
noisier 2-core host the previous separable path's efficiency factor came out 2.0–3.1 against the table's 1.6, so
``auto`` took separable at σ = 1 where dense was faster (docs/layer.md). With :func:`set_autotune` on, the first
forward of a layer shape in training or inference times forward + backward of every path the cost model keeps within
``CANDIDATE_SPREAD`` of its best on that very input, and every later call with the same key takes the fastest —
the ``torch.backends.cudnn.benchmark`` idea. Off by default: the choice then depends on timing, so two runs (or two
ranks) may take different, numerically slightly different, paths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["CANDIDATE_SPREAD", "autotune_choices", "autotuning", "cached_choice", "clear_autotune", "is_autotuning",
           "measured_choice", "set_autotune"]

CANDIDATE_SPREAD: float = 4.0  # paths the cost model puts above this many times its best are not timed
_REPEATS = 3
_state: dict[str, bool] = {"enabled": False}
_choices: dict[Hashable, str] = {}
_timings: dict[Hashable, dict[str, float]] = {}


def set_autotune(enabled: bool) -> None:
    """Turn measured path choice for ``impl="auto"`` layers on or off (module docstring)."""
    _state["enabled"] = bool(enabled)


def is_autotuning() -> bool:
    """Whether ``auto`` layers choose by measurement now."""
    return _state["enabled"]


@contextmanager
def autotuning(enabled: bool = True) -> Iterator[None]:
    """``with autotuning():`` — measured choice inside the block, the previous setting after it."""
    before = _state["enabled"]
    set_autotune(enabled)
    try:
        yield
    finally:
        set_autotune(before)


def clear_autotune() -> None:
    """Forget every measured choice (after moving to another device or changing the thread count)."""
    _choices.clear()
    _timings.clear()


def autotune_choices() -> dict[Hashable, tuple[str, dict[str, float]]]:
    """Per layer key: the path taken and the seconds per forward + backward measured for each candidate."""
    return {key: (choice, dict(_timings[key])) for key, choice in _choices.items()}


def cached_choice(key: Hashable) -> str | None:
    """The path already chosen for ``key``, or None (a layer checks this before it computes any cost)."""
    return _choices.get(key)


def measured_choice(key: Hashable, paths: dict[str, Callable[[Tensor], Tensor]], x: Tensor,
                    params: Sequence[Tensor]) -> str:
    """The fastest of ``paths`` (name → forward of the layer by that path) on ``x``, timed once per ``key``.

    Backward is timed with :func:`torch.autograd.grad` against ``x`` and ``params``, so no ``.grad`` is touched.
    """
    if key not in _choices:
        # one candidate: nothing to time (kept all the same, so that the next call skips the cost model too)
        seconds = {name: _seconds(path, x, params) for name, path in paths.items()} if len(paths) > 1 else {}
        _timings[key] = seconds
        _choices[key] = min(seconds, key=seconds.__getitem__) if seconds else next(iter(paths))
    return _choices[key]


def _seconds(path: Callable[[Tensor], Tensor], x: Tensor, params: Sequence[Tensor]) -> float:
    """Median seconds of forward (+ backward when gradients are recorded) over ``_REPEATS`` calls after a warm-up."""
    backward = torch.is_grad_enabled()
    inp = x.detach().requires_grad_(backward)
    wrt = [inp, *(p for p in params if p.requires_grad)] if backward else []
    times = []
    for i in range(_REPEATS + 1):  # the first call warms caches and workspaces up
        _sync(x)
        start = time.perf_counter()
        out = path(inp)
        if wrt:
            torch.autograd.grad(out.float().square().sum(), wrt, allow_unused=True)
        _sync(x)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(x: Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
