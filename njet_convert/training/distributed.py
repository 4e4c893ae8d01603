"""One process per device under ``torchrun``: process group set-up, the few collectives the trainer needs.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the
trainer joins a process group (NCCL on CUDA, gloo on CPU) and wraps the model in DistributedDataParallel. A plain
``python`` run is world size 1 and touches no process group. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "resolve_device", "setup_distributed"]


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` → this rank's CUDA device when CUDA is available, else CPU; other values as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available on this machine")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a torch device, got {device!r}") from None


@dataclass
class DistContext:
    """Where this process stands: rank, world size, its device, and whether it owns the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (so all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def flags(self, values: list[bool]) -> list[bool]:
        """Element-wise OR of boolean flags over ranks, in one collective (stop requests, errors)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor([1.0 if v else 0.0 for v in values], device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v > 0) for v in tensor.tolist()]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (metrics: loss sums, counts)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order (small Python objects such as RNG states)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank.

        DDP broadcasts them before each forward, so after the last step every rank holds statistics updated by its
        own batch; this makes the replicas identical again (before evaluation and checkpoints).
        """
        if not self.distributed:
            return
        for buf in module.buffers():
            if self._comm_device().type == "cpu" and buf.device.type != "cpu":
                continue
            dist.broadcast(buf.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def setup_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (or reuse an initialised one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        return DistContext(rank, world_size, local_rank, resolve_device(device, local_rank))
    target = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, 0, target)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    backend = "nccl" if target.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, **({"device_id": target} if backend == "nccl" else {}))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, target, owns_group=True)
