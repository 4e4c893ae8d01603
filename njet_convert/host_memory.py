"""Host memory that training reuses instead of faulting in afresh every step (Linux, glibc).

Why: PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks over its mmap threshold
(at most 32 MiB) from fresh ``mmap`` calls and returns them on free, so each training step touches its large
activations as new pages, one page fault per 4 KiB. On the project's CPU a fine-tuning run of MobileNetV2 at
112 px spent 2 min 33 s of its 3 min 37 s in the kernel this way (docs/finetuning.md, "Host memory").

:func:`reuse_host_memory` does two things, each only where the user has not chosen otherwise:

- sets ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's switch for 2 MiB-aligned allocations advised as transparent huge
  pages (512 times fewer faults for the blocks that are still mapped afresh). PyTorch reads it once, at the first
  CPU allocation of the process, so it takes effect only when called before any tensor exists;
- fixes glibc's mmap threshold at its 32 MiB maximum and raises its trim threshold, so that blocks up to 32 MiB
  stay in the heap for the next step instead of being returned to the system and faulted in again.

Values and results are unchanged; only where the bytes live. Nothing happens off Linux or without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["THP_ENV", "host_memory_summary", "huge_pages_active", "reuse_host_memory"]

THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator (c10) at its first allocation
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit systems
_TRIM_THRESHOLD = 1 << 30
_PROBE_BYTES = 64 << 20  # above glibc's mmap threshold: always freshly mapped, so its page faults can be counted
_applied: dict[str, bool] = {}


def reuse_host_memory() -> dict[str, bool]:
    """Ask PyTorch for huge pages and glibc to keep freed blocks (see the module docstring); idempotent.

    Returns which of the two was applied: ``{"huge_pages": …, "heap_reuse": …}``. ``huge_pages`` is False when
    ``THP_MEM_ALLOC_ENABLE`` was already set (the user's choice stands) or off Linux; whether PyTorch then uses
    it is what :func:`huge_pages_active` tells, which allocates a tensor and so should be asked afterwards.
    """
    if not _applied:
        _applied["huge_pages"] = sys.platform == "linux" and THP_ENV not in os.environ
        if _applied["huge_pages"]:
            os.environ[THP_ENV] = "1"
        _applied["heap_reuse"] = _tune_glibc()
    return dict(_applied)


def _tune_glibc() -> bool:
    """Fix glibc's mmap threshold and raise its trim threshold (False where there is no glibc ``mallopt``)."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def huge_pages_active() -> bool:
    """Whether PyTorch's CPU allocator backs large tensors with huge pages: a fresh 64 MiB tensor written once
    takes fewer than 1024 page faults (4 KiB pages would take 16384). Costs one such allocation (~10 ms)."""
    if sys.platform != "linux":
        return False
    import resource

    import torch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(_PROBE_BYTES // 4, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1024


def host_memory_summary() -> str:
    """What holds now, for a benchmark's header: ``"huge pages on, heap reuse on"`` (allocates a probe tensor)."""
    heap = _applied.get("heap_reuse", False)
    return f"huge pages {'on' if huge_pages_active() else 'off'}, heap reuse {'on' if heap else 'off'}"
