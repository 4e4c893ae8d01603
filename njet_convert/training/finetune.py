"""``finetune``: train a converted N-Jet network so that α and σ — its resolution — are learned from data.

One function that runs the same way in a plain ``python`` process (CPU, or one GPU with AMP) and under
``torchrun --nproc_per_node N`` (DDP, one process per device, only rank 0 writes). The loop checks its state
every step: a NaN/Inf loss stops the run (the last good checkpoint stays), SIGTERM/SIGINT finish the current step,
write a checkpoint and return, and ``resume=`` continues from a checkpoint with identical optimiser, scheduler,
sampler and RNG state — on CPU the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from njet_layers import SafeSubsample

from ..errors import first_line
from .checkpoint import CHECKPOINT_NAME, capture_rng_state, read_checkpoint, restore_rng_state, save_checkpoint
from .config import DistillConfig, FinetuneConfig
from .data import EpochLoader, split_batch
from .distill import distillation_loss, teacher_logits
from .distributed import DistContext, setup_distributed
from .interrupt import GracefulInterrupt
from .metrics import MetricsWriter, RunningMean, top1_correct
from .optim import build_optimizer, build_scheduler
from .plots import feature_sizes, plot_feature_sizes, plot_first_filters, plot_sigma_history, sigma_values
from .precision import Precision, fp32_njet_kernels, resolve_precision
from .resolution import multiply_adds, resolution_health

__all__ = ["FinetuneResult", "NonFiniteLossError", "evaluate", "finetune"]

LossFn = Callable[[Tensor, Tensor], Tensor]


class NonFiniteLossError(RuntimeError):
    """The run diverged: the training or validation loss, a parameter or a buffer (batch-norm statistics) became
    NaN or Inf. The run stopped and the last good checkpoint was kept (never overwritten by a diverged state)."""


@dataclass
class FinetuneResult:
    """What a run produced. ``model`` is the trained module itself (trained in place, not a copy)."""

    model: nn.Module
    epochs_done: int
    global_step: int
    interrupted: bool = False
    signal: int | None = None  # the signal that stopped an interrupted run (SIGINT 2, SIGTERM 15)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    val_before: dict[str, float] | None = None
    val_after: dict[str, float] | None = None
    checkpoint: Path | None = None
    out_dir: Path | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    multiply_adds_before: int | None = None  # per image of the first training (or validation) input
    multiply_adds_after: int | None = None


def finetune(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    epochs: int,
    config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device = "auto",
    loss_fn: LossFn | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (in place) for ``epochs`` epochs; see the module docstring.

    Args:
        model: a converted network (any ``nn.Module`` works; N-Jet layers get their own parameter groups).
        train_data: a DataLoader, a Dataset, a tensor of images (unlabeled: needs ``teacher``) or a tuple
            ``(images, labels)``. Batches are tensors, ``(images, labels, ...)`` or dicts with ``image``/``label``.
        val_data: same forms; top-1 accuracy (and agreement with the teacher) before, per epoch and after.
        epochs: total epochs of the run (a resumed run continues up to this number).
        config: hyper-parameters (:class:`FinetuneConfig`); defaults are the paper's SGD settings.
        teacher: the original network: distil its outputs (KL on softened logits, see ``config.distill``).
        out_dir: where rank 0 writes ``checkpoint.pt``, ``metrics.jsonl``/``.csv`` and the PNG plots; None: no files.
        resume: a checkpoint file (or an ``out_dir``) of this model to continue from.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        loss_fn: ``loss_fn(logits, labels)`` for labeled batches; default cross-entropy.

    Raises:
        ValueError: bad arguments or data (names the problem); NonFiniteLossError: the loss became NaN/Inf.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    config = config or FinetuneConfig()
    if teacher is not None and config.distill is None:
        config.distill = DistillConfig()
    if config.distill is not None and teacher is None:
        raise ValueError("config.distill is set but teacher= is None: distillation needs the original network")
    state = read_checkpoint(resume, model) if resume is not None else None  # validate before touching anything
    ctx = setup_distributed(device)
    try:
        result = _Trainer(model, train_data, val_data, epochs, config, teacher, out_dir, ctx, loss_fn).run(state)
        # Every rank leaves the group together: rank 0 still writes plots and measures multiply-adds after the last
        # step, and a rank that tore down its gloo group and exited meanwhile aborted at exit now and then.
        ctx.barrier()
        return result
    finally:
        ctx.close()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    if isinstance(output, list | tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(f"model output of type {type(output).__name__} is not logits (a tensor)")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: EpochLoader, ctx: DistContext, precision: Precision, teacher: nn.Module | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and loss on labeled data, agreement with ``teacher``'s arg-max when given (all ranks)."""
    was_training = model.training
    model.eval()
    sums = [0.0] * 5  # correct, counted, loss_sum, agree, n
    try:
        for batch in loader.epoch(0):
            x, y = split_batch(batch)
            x = _to_device(x, ctx.device)
            with precision.autocast():
                logits = _logits(model(x)).float()
                ref = _logits(teacher_logits(teacher, x)).float() if teacher is not None else None
            if y is not None:
                y = y.to(ctx.device)
                _check_labels(y, logits.shape[1], "validation data")
                correct, counted = top1_correct(logits, y)
                sums[0] += correct
                sums[1] += counted
                sums[2] += float(F.cross_entropy(logits, y, reduction="sum"))
            if ref is not None:
                sums[3] += float((logits.argmax(1) == ref.argmax(1)).sum())
            sums[4] += logits.argmax(1).numel()
    finally:
        model.train(was_training)
    correct, counted, loss_sum, agree, n = ctx.sum(sums)
    out: dict[str, float] = {}
    if counted:
        out.update(acc=100.0 * correct / counted, loss=loss_sum / counted)
    if teacher is not None and n:
        out["agreement"] = 100.0 * agree / n
    return out


def _labels_out_of_range(y: Tensor, classes: int) -> bool:
    """Whether integer class labels fall outside ``0..classes-1`` (``-100``, cross-entropy's ignore index, is fine)."""
    return y.numel() > 0 and not y.is_floating_point() and bool(
        ((y >= classes) | ((y < 0) & (y != -100))).any())


def _check_labels(y: Tensor, classes: int, what: str) -> None:
    if _labels_out_of_range(y, classes):
        raise ValueError(f"{what}: labels out of range for a model with {classes} outputs (labels "
                         f"{int(y.min())}..{int(y.max())}; --num-classes too small?)")


def _to_device(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class _Trainer:
    """The state of one run; ``run`` is the loop. Kept private: ``finetune`` is the interface."""

    def __init__(self, model, train_data, val_data, epochs, config, teacher, out_dir, ctx, loss_fn) -> None:
        self.config, self.ctx, self.epochs = config, ctx, epochs
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=config.label_smoothing))
        self.precision = resolve_precision(config.amp, ctx.device)
        self.channels_last = config.channels_last and ctx.device.type == "cuda"
        _seed_all(config.seed)  # identical initial state on every rank
        self.model = model.to(ctx.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        self.train_loader = EpochLoader(train_data, "train_data", config.batch_size, config.workers, ctx,
                                        config.seed, train=True)
        self.val_loader = (EpochLoader(val_data, "val_data", config.batch_size, config.workers, ctx, config.seed,
                                       train=False) if val_data is not None else None)
        self.steps_per_epoch = len(self.train_loader)
        if config.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError("train_data yields no batch (fewer samples than one batch per rank?)")
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, self.steps_per_epoch, epochs, config)
        self.scaler = self.precision.scaler()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.sigma_history: list[dict[str, float]] = []
        self.sigma_steps: list[int] = []
        self.sizes_before: dict[str, list[int]] = {}
        self.macs_before: int | None = None
        self.probe: Tensor | None = None
        self.val_before: dict[str, float] | None = None
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        self.last_good: Path | None = None
        self.net: nn.Module = self.model
        self.partial: list[float] = [0.0, 0, 0, 0]  # this rank's loss sum, count, correct, counted in the epoch

    # -- set-up ---------------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        hist = state.get("history", {})
        self.history = list(hist.get("epochs", []))
        self.sigma_history = list(hist.get("sigma", []))
        self.sigma_steps = list(hist.get("sigma_steps", []))
        self.sizes_before = dict(state.get("feature_sizes_before", {}))
        self.macs_before = state.get("multiply_adds_before")
        self.val_before = state.get("val_before")
        self.last_good = self.checkpoint_path if self.checkpoint_path and self.checkpoint_path.exists() else None
        self._rng_to_restore = state["rng"]
        partial = state.get("partial")
        if partial is not None and len(partial) == self.ctx.world_size:
            self.partial = list(partial[self.ctx.rank])

    def _restore_rng(self) -> None:
        states = getattr(self, "_rng_to_restore", None)
        if states is None:
            return
        if len(states) != self.ctx.world_size:
            self._say(f"checkpoint was written by {len(states)} ranks, this run has {self.ctx.world_size}: "
                      "RNG states are reseeded (results will not match an uninterrupted run exactly)")
            _seed_all(self.config.seed + 7919 * (self.global_step + 1) + self.ctx.rank)
        else:
            restore_rng_state(states[self.ctx.rank])

    def _wrap(self) -> None:
        if not self.ctx.distributed:
            return
        find_unused = self.config.find_unused_parameters
        if find_unused is None:  # a SafeSubsample's own σ only sets integer sizes: it never gets a gradient
            find_unused = any(
                isinstance(m, SafeSubsample) and isinstance(getattr(m, "log_sigma", None), nn.Parameter)
                and m.log_sigma.requires_grad for m in self.model.modules()
            )
        ids = [self.ctx.device] if self.ctx.device.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=find_unused)

    def _check_model_takes_data(self) -> None:
        """A model that cannot take the data's inputs (channels, size) is bad input, not a crash mid-epoch."""
        x = self._probe_batch(self.train_loader)
        if x is None:
            return
        mode = self.model.training
        try:
            with torch.no_grad():
                self.model.eval()(x)
        except RuntimeError as exc:
            raise ValueError(f"the model cannot run on the training data's inputs of shape {tuple(x.shape)}: "
                             f"{first_line(exc)}") from None
        finally:
            self.model.train(mode)

    def _probe_batch(self, loader=None) -> Tensor | None:
        loader = loader or self.val_loader or self.train_loader
        dataset = loader.loader.dataset
        try:
            first = dataset[0]
        except Exception:  # iterable datasets: no probe, no size plot
            return None
        x, _ = split_batch(first if not isinstance(first, Tensor) else (first,))
        return _to_device(x.unsqueeze(0), self.ctx.device, self.channels_last)

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, state: dict[str, Any] | None) -> FinetuneResult:
        # Signals are caught from the start (validation before training included): the run stops after its
        # next step with a checkpoint, instead of dying without one.
        with GracefulInterrupt() as stop:
            return self._run(state, stop)

    def _run(self, state: dict[str, Any] | None, stop: GracefulInterrupt) -> FinetuneResult:
        self._check_model_takes_data()
        if state is not None:
            self._restore(state)
        main = self.ctx.is_main
        self.metrics = MetricsWriter(self.out_dir, enabled=main, tensorboard=self.config.tensorboard,
                                     resume_step=self.global_step if state is not None else None)
        self.probe = self._probe_batch() if main else None  # sizes, health and multiply-adds on rank 0
        probe = self.probe if (self.out_dir is not None and self.config.plots) else None
        if state is None:
            if self.probe is not None:
                self.sizes_before = feature_sizes(self.model, self.probe)
                self.macs_before = multiply_adds(self.model, self.probe)
            if self.val_loader is not None:
                self.val_before = evaluate(self.model, self.val_loader, self.ctx, self.precision, self.teacher)
                self._say(f"validation before fine-tuning: {_fmt(self.val_before)}")
            self._record_sigma()
        self._wrap()
        self._restore_rng()
        _seed_rank = None if state is not None else self.config.seed + self.ctx.rank
        if _seed_rank is not None and self.ctx.rank:
            _seed_all(_seed_rank)  # dropout etc. differ between ranks; rank 0 keeps the seeded stream
        interrupted = False
        try:
            with fp32_njet_kernels(self.model, self.precision.enabled):
                while self.epoch < self.epochs and not interrupted:
                    interrupted = self._train_epoch(stop)
        finally:
            self.metrics.close()
        val_after = self.history[-1].get("val") if self.history else None
        plots = self._finish(probe) if not interrupted else {}
        return FinetuneResult(
            model=self.model, epochs_done=self.epoch, global_step=self.global_step, interrupted=interrupted,
            signal=stop.requested if interrupted else None,
            history=list(self.history), val_before=self.val_before, val_after=val_after,
            checkpoint=self.last_good, out_dir=self.out_dir, plots=plots, multiply_adds_before=self.macs_before,
            multiply_adds_after=multiply_adds(self.model, self.probe) if self.probe is not None else None,
        )

    def _train_epoch(self, stop: GracefulInterrupt) -> bool:
        cfg, ctx = self.config, self.ctx
        self.net.train()
        loss_mean, correct = RunningMean(), [0, 0]
        loss_mean.total, loss_mean.count, correct[0], correct[1] = self.partial  # a resumed epoch's sums so far
        seen = 0
        start = time.perf_counter()
        batches = self.train_loader.epoch(self.epoch, self.step_in_epoch)
        bar = self._bar()
        for _ in range(self.step_in_epoch, self.steps_per_epoch):
            batch = next(batches, None)
            if batch is None:
                break
            loss, n, hits = self._step(batch)
            nonfinite = not math.isfinite(loss)
            bad = None if nonfinite else _first_nonfinite(self.model)  # a finite loss can hide diverged weights
            nonfinite, stopping, bad_state = ctx.flags([nonfinite, stop.requested is not None, bad is not None])
            if nonfinite:
                self._diverged()
            if bad_state:
                where = f"step {self.step_in_epoch + 1} of epoch {self.epoch + 1}"
                self._diverged(f"{bad or 'a parameter or buffer on another rank'} became NaN/Inf at {where}")
            self.step_in_epoch += 1
            self.global_step += 1
            loss_mean.add(loss, n)
            seen += n
            correct[0] += hits[0]
            correct[1] += hits[1]
            self.partial = [loss_mean.total, loss_mean.count, correct[0], correct[1]]
            rate = seen * ctx.world_size / max(time.perf_counter() - start, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_mean.mean:.4f}", acc=_pct(correct), img_s=f"{rate:.0f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
            if self.global_step % cfg.extra.get("log_every", 50) == 0:
                self.metrics.log({"kind": "step", "epoch": self.epoch, "global_step": self.global_step,
                                  "loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})
                self._record_sigma()
            if stopping:
                if bar is not None:
                    bar.close()
                ctx.broadcast_buffers(self.model)
                self._save()
                where = f"epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}"
                self._say(f"stopped by {stop.name or 'a signal on another rank'} at {where}; checkpoint: "
                          f"{self.last_good}; continue with resume={str(self.last_good)!r}")
                return True
        if bar is not None:
            bar.close()
        ctx.broadcast_buffers(self.model)
        totals = ctx.sum([loss_mean.total, loss_mean.count, correct[0], correct[1]])
        row: dict[str, Any] = {
            "kind": "epoch", "epoch": self.epoch + 1, "global_step": self.global_step,
            "train_loss": totals[0] / max(totals[1], 1),
            "train_acc": 100.0 * totals[2] / totals[3] if totals[3] else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": seen * ctx.world_size / max(time.perf_counter() - start, 1e-9),
        }
        if self.val_loader is not None and ((self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == self.epochs):
            val = evaluate(self.model, self.val_loader, ctx, self.precision, self.teacher)
            if not all(math.isfinite(v) for v in val.values()):
                self._diverged(f"the validation loss became NaN/Inf after epoch {self.epoch + 1}")
            row["val"] = val
            row.update({f"val_{k}": v for k, v in val.items()})
        self._record_sigma()
        row.update({f"sigma/{k}": v for k, v in self.sigma_history[-1].items()})
        row.update(self._resolution_row())
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = [0.0, 0, 0, 0]
        self.history.append(row)
        self.metrics.log({k: v for k, v in row.items() if k != "val"})
        acc = "" if row["train_acc"] is None else f", acc {row['train_acc']:.2f}%"
        val = "; val " + _fmt(row["val"]) if "val" in row else ""
        self._say(f"epoch {self.epoch}/{self.epochs}: train loss {row['train_loss']:.4f}{acc}{val}")
        self._save()
        return False

    def _step(self, batch: Any) -> tuple[float, int, tuple[int, int]]:
        """One optimiser step; returns the loss, the batch size and (correct, counted) for the accuracy."""
        x, y = split_batch(batch)
        x = _to_device(x, self.ctx.device, self.channels_last)
        y = y.to(self.ctx.device, non_blocking=True) if y is not None else None
        if y is None and self.teacher is None:
            raise ValueError("train_data has no labels: pass teacher= to distil the original network's outputs")
        with self.precision.autocast():
            logits = _logits(self.net(x))
            ref = _logits(teacher_logits(self.teacher, x)) if self.teacher is not None else None
        bad = y is not None and _labels_out_of_range(y, logits.shape[1])
        if self.ctx.flags([bad])[0]:
            seen = f"{int(y.min())}..{int(y.max())}" if y is not None and y.numel() else "on another rank"
            raise ValueError(f"train_data: labels out of range for a model with {logits.shape[1]} outputs "
                             f"(labels {seen})")
        if ref is not None:
            loss = distillation_loss(logits, ref, y, self.config.distill, self.config.label_smoothing)
        else:
            loss = self.loss_fn(logits.float(), y)
        value = float(loss.detach())
        if math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        target = y if y is not None else ref.argmax(1)
        hits = top1_correct(logits.detach(), target) if target.dim() == logits.dim() - 1 else (0, 0)
        return value, x.shape[0], hits

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _diverged(self, what: str | None = None) -> None:
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step {self.global_step + 1})"
        what = what or f"loss became NaN/Inf at {where}"
        kept = (f"the last good checkpoint {str(self.last_good)!r} is kept" if self.last_good is not None
                else "no checkpoint had been written yet")
        self.metrics.close()
        raise NonFiniteLossError(f"{what}; training stopped, {kept}. "
                                 "Lower the learning rate (or sigma_lr), or set grad_clip.")

    def _record_sigma(self) -> None:
        self.sigma_history.append(sigma_values(self.model))
        self.sigma_steps.append(self.global_step)

    def _resolution_row(self) -> dict[str, Any]:
        """σ on a bound, maps of 1 px and multiply-adds per image now (rank 0; said on stderr when not empty)."""
        if not self.ctx.is_main:
            return {}
        sizes = feature_sizes(self.model, self.probe) if self.probe is not None else None
        row: dict[str, Any] = dict(resolution_health(self.model, sizes))
        if self.probe is not None:
            row["multiply_adds"] = multiply_adds(self.model, self.probe)
        for key, what in (("sigma_at_bound", "σ on its bound"), ("maps_at_1px", "feature map down to 1 px")):
            if row.get(key):
                self._say(f"{what}: {', '.join(row[key])}")
        return row

    def _save(self) -> None:
        rng = self.ctx.gather(capture_rng_state())  # collectives: every rank takes part
        partial = self.ctx.gather(list(self.partial))
        if not self.ctx.is_main or self.checkpoint_path is None:
            return
        payload = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.precision.needs_scaler else None,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epochs": self.epochs, "world_size": self.ctx.world_size, "rng": rng,
            "partial": partial,
            "sampler": {"epoch": self.epoch, "skip_batches": self.step_in_epoch, "seed": self.config.seed},
            "config": self.config.to_dict(),
            "history": {"epochs": self.history, "sigma": self.sigma_history, "sigma_steps": self.sigma_steps},
            "feature_sizes_before": self.sizes_before, "val_before": self.val_before,
            "multiply_adds_before": self.macs_before,
        }
        self.last_good = save_checkpoint(self.checkpoint_path, payload)

    def _finish(self, probe: Tensor | None) -> dict[str, Path]:
        """The PNG plots; a reporting step never costs the trained result, so a missing matplotlib skips them."""
        if not self.ctx.is_main or self.out_dir is None or not self.config.plots:
            return {}
        try:
            return self._plots(probe)
        except ImportError as exc:
            self._say(f"plots skipped: {first_line(exc)} (pip install 'njet[plots]' to get them); "
                      "the trained model is kept", always=True)
            return {}

    def _plots(self, probe: Tensor | None) -> dict[str, Path]:
        plots: dict[str, Path] = {}
        made = {
            "sigma": plot_sigma_history(self.sigma_history, self.sigma_steps, self.out_dir / "sigma.png"),
            "filters": plot_first_filters(self.model, self.out_dir / "first_layer_filters.png"),
        }
        if probe is not None and self.sizes_before:
            after = feature_sizes(self.model, probe)
            macs = (self.macs_before, multiply_adds(self.model, probe)) if self.macs_before is not None else None
            made["feature_sizes"] = plot_feature_sizes(self.sizes_before, after, self.out_dir / "feature_sizes.png",
                                                       multiply_adds=macs)
        plots.update({k: v for k, v in made.items() if v is not None})
        return plots

    def _bar(self):
        if not (self.ctx.is_main and self.config.progress and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, leave=False, dynamic_ncols=True,
                    desc=f"epoch {self.epoch + 1}/{self.epochs}")

    def _say(self, message: str, always: bool = False) -> None:
        if self.ctx.is_main and (self.config.progress or always):
            print(f"[finetune] {message}", file=sys.stderr, flush=True)


def _first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first floating parameter or buffer holding NaN/Inf, or None (one fused check per tensor)."""
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def _pct(counts: list[int]) -> str:
    return f"{100.0 * counts[0] / counts[1]:.1f}%" if counts[1] else "-"


def _fmt(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{k} {v:.2f}{'%' if k in ('acc', 'agreement') else ''}" for k, v in values.items())
