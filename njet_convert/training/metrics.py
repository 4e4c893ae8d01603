"""Metrics of a run: running means, top-1 accuracy, and rows written to JSONL, CSV and (if installed) TensorBoard.

Only rank 0 writes. ``metrics.jsonl`` gets every row (``kind`` = ``step`` or ``epoch``), ``metrics.csv`` the
epoch rows (rewritten atomically, columns = union of keys). On resume, rows past the checkpoint's step are
dropped, so the files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write_text

__all__ = ["EpochTotals", "MetricsWriter", "RunningMean", "format_metrics", "progress_bar", "top1_correct"]


def top1_correct(logits: Tensor, target: Tensor, ignore_index: int = -100) -> tuple[int, int]:
    """``(correct, counted)`` of arg-max predictions (classes on dim 1; ``ignore_index`` targets left out)."""
    pred = logits.argmax(dim=1)
    valid = target != ignore_index
    return int(((pred == target) & valid).sum()), int(valid.sum())


class RunningMean:
    """Sum and count of a metric over an epoch."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float, count: int = 1) -> None:
        self.total += value * count
        self.count += count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


class EpochTotals:
    """This rank's sums over the epoch so far: loss (times batch size), images, correct and counted predictions.

    ``as_list`` is what a checkpoint keeps, so that a resumed epoch reports the same means as an uninterrupted one.
    """

    def __init__(self, loss_sum: float = 0.0, count: int = 0, correct: int = 0, counted: int = 0) -> None:
        self.loss = RunningMean()
        self.loss.total, self.loss.count = loss_sum, count
        self.correct, self.counted = correct, counted

    def add(self, loss: float, n: int, hits: tuple[int, int]) -> None:
        self.loss.add(loss, n)
        self.correct += hits[0]
        self.counted += hits[1]

    def as_list(self) -> list[float]:
        return [self.loss.total, self.loss.count, self.correct, self.counted]

    @property
    def accuracy(self) -> str:
        return f"{100.0 * self.correct / self.counted:.1f}%" if self.counted else "-"


def format_metrics(values: dict[str, float] | None) -> str:
    """``"acc 91.20%, loss 0.31"``: a metrics dict as a log line (``-`` when empty)."""
    if not values:
        return "-"
    return ", ".join(f"{k} {v:.2f}{'%' if k in ('acc', 'agreement') else ''}" for k, v in values.items())


def progress_bar(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on stderr (the caller decides whether one is wanted: rank 0, a terminal, progress on)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, leave=False, dynamic_ncols=True, desc=desc)


class MetricsWriter:
    """Append metric rows to ``out_dir/metrics.jsonl`` (+ CSV of epoch rows, + TensorBoard when available)."""

    def __init__(self, out_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled and out_dir is not None
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if not self.enabled:
            return
        self.dir = Path(out_dir)  # type: ignore[arg-type]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        if self.jsonl.exists():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            if resume_step is not None:
                rows = [r for r in rows if r.get("global_step", 0) <= resume_step]
                atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
            else:
                self.jsonl.unlink()
                rows = []
            self.rows = rows
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            step = int(row.get("global_step", 0))
            for key, value in row.items():
                if isinstance(value, int | float) and key not in ("global_step", "epoch"):
                    self.tb.add_scalar(f"{row.get('kind', 'step')}/{key}", value, step)
        if row.get("kind") == "epoch":
            self._write_csv()

    def _write_csv(self) -> None:
        epochs = [r for r in self.rows if r.get("kind") == "epoch"]
        columns: list[str] = []
        for r in epochs:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(epochs)
        atomic_write_text(self.dir / "metrics.csv", buf.getvalue())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
