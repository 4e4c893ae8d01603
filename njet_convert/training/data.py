"""Training data in any of the forms users have (DataLoader, Dataset, tensors), sharded over ranks, resumable.

Every map-style dataset is read through a :class:`ResumableSampler` — a :class:`DistributedSampler` (world size 1
in a plain run) whose epoch fixes the shuffle and that can skip the batches a resumed run has already seen, so an
interrupted epoch continues with exactly the samples the uninterrupted run would have used.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, TensorDataset

from .distributed import DistContext

__all__ = ["EpochLoader", "ResumableSampler", "ShardSampler", "split_batch", "to_dataset"]


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start an epoch after its first ``skip`` samples (see :meth:`skip_next`)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 drop_last: bool) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self._skip = 0

    def skip_next(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of the next iteration only."""
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        return iter(indices)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample evaluated exactly once over all ranks."""

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def to_dataset(data: Any, name: str) -> Dataset | DataLoader:
    """A Dataset (or, for an IterableDataset loader, the loader) from a DataLoader, Dataset or tensors."""
    if isinstance(data, DataLoader | Dataset):
        return data
    if isinstance(data, Tensor):
        return TensorDataset(data)
    if isinstance(data, Sequence) and data and all(isinstance(t, Tensor) for t in data):
        lengths = {t.shape[0] for t in data}
        if len(lengths) != 1:
            raise ValueError(f"{name}: tensors hold different numbers of samples {sorted(lengths)}")
        if len(data) > 1:
            _check_label_tensor(data[1], name)
        return TensorDataset(*data)
    kind = type(data).__name__
    raise ValueError(f"{name} must be a DataLoader, a Dataset, a tensor or a tuple of tensors, got {kind}")


def _check_label_tensor(labels: Tensor, name: str) -> None:
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0 and int(labels[labels < 0].max()) != -100:
        raise ValueError(f"{name}: labels out of range (min {int(labels.min())} < 0)")


class EpochLoader:
    """Batches of one rank for a given epoch, optionally starting after the batches already done."""

    def __init__(self, data: Any, name: str, batch_size: int, workers: int, ctx: DistContext, seed: int,
                 train: bool) -> None:
        source = to_dataset(data, name)
        self.ctx, self.train, self.seed = ctx, train, seed
        # Worker seeds come from this generator, reseeded per epoch: they depend on (seed, epoch, rank) only and
        # creating an iterator never draws from the global RNG (which a resumed run restores from the checkpoint).
        self.generator = torch.Generator()
        kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": workers,
                                  "pin_memory": ctx.device.type == "cuda"}
        shuffle = train
        if isinstance(source, DataLoader):
            loader = source
            source = loader.dataset
            kwargs.update(num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                          pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn)
            if loader.batch_size is not None:
                kwargs["batch_size"] = loader.batch_size
            shuffle = train and isinstance(loader.sampler, RandomSampler)
            if isinstance(source, IterableDataset):
                if ctx.distributed:
                    warnings.warn(f"{name} is an IterableDataset: every rank reads it whole (no sharding)",
                                  stacklevel=3)
                self.loader, self.sampler = loader, None
                return
        if isinstance(source, IterableDataset):
            raise ValueError(f"{name}: pass an IterableDataset inside a DataLoader")
        if len(source) == 0:
            raise ValueError(f"{name} is empty")
        if train:
            self.sampler = ResumableSampler(source, ctx.world_size, ctx.rank, shuffle, seed, drop_last=False)
            # drop a ragged last batch (a batch of 1 breaks batch norm) unless that would leave nothing
            kwargs["drop_last"] = len(self.sampler) >= 2 * kwargs["batch_size"]
        else:
            self.sampler = ShardSampler(len(source), ctx.world_size, ctx.rank)
        self.loader = DataLoader(source, sampler=self.sampler, generator=self.generator, **kwargs)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from batch ``skip_batches`` on."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.ctx.rank)
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.set_epoch(epoch)
            self.sampler.skip_next(skip_batches * self.loader.batch_size)
            return _worker_errors_as_raised(iter(self.loader))
        it = _worker_errors_as_raised(iter(self.loader))
        for _ in range(skip_batches):
            next(it, None)
        return it


def _worker_errors_as_raised(batches: Iterator[Any]) -> Iterator[Any]:
    """The batches; a ValueError raised in a DataLoader worker (an unreadable image) comes back with its own
    one-line message, not wrapped in the worker's traceback as torch re-raises it."""
    try:
        yield from batches
    except ValueError as err:
        text = str(err).strip()
        if "Original Traceback" not in text:
            raise
        last = text.splitlines()[-1]  # "package.module.ErrorType: the message"
        raise type(err)(last.split(": ", 1)[-1]) from None


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(inputs, labels or None)`` from a batch that is a tensor, ``(x,)``, ``(x, y, ...)`` or a dict."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, dict):
        x = batch.get("image", batch.get("input", batch.get("pixel_values")))
        if x is None:
            raise ValueError(f"batch dict needs an 'image' or 'input' key, got {sorted(batch)}")
        return x, batch.get("label", batch.get("labels"))
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    raise ValueError(f"cannot read a batch of type {type(batch).__name__}: expected a tensor or (images, labels)")
