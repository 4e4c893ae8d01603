"""``finetune``: train a converted N-Jet network so that α and σ — its resolution — are learned from data.

One function that runs the same way in a plain ``python`` process (CPU, or one GPU with AMP) and under
``torchrun --nproc_per_node N`` (DDP, one process per device, only rank 0 writes). The loop checks its state
every step: a NaN/Inf loss stops the run (the last good checkpoint stays), SIGTERM/SIGINT finish the current step,
write a checkpoint and return, and ``resume=`` continues from a checkpoint with identical optimiser, scheduler,
sampler and RNG state — on CPU the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from njet_layers import SafeSubsample, autotuning

from ..errors import first_line
from .checkpoint import (
    CHECKPOINT_NAME,
    RunProgress,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import DistillConfig, FinetuneConfig
from .data import EpochLoader, split_batch
from .distill import distillation_loss, teacher_logits
from .distributed import setup_distributed
from .divergence import NonFiniteLossError, diverged_error, first_nonfinite
from .evaluate import evaluate, labels_out_of_range, logits_of, to_device
from .interrupt import GracefulInterrupt
from .metrics import EpochTotals, MetricsWriter, format_metrics, progress_bar, top1_correct
from .optim import build_optimizer, build_scheduler
from .plots import feature_sizes, sigma_values, write_plots
from .precision import fp32_njet_kernels, resolve_precision
from .resolution import multiply_adds, resolution_health, resolution_lines, stage_table
from .resolution_search import StageChoice, converted_points, hold_factors, resolution_stages, search_resolution
from .sigma_step import SigmaStepBound

__all__ = ["FinetuneResult", "NonFiniteLossError", "evaluate", "finetune"]

LossFn = Callable[[Tensor, Tensor], Tensor]


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
    resolution_search: list[dict[str, Any]] | None = None  # per stage: octave, σ and factor before/after, losses
    stages_before: list[dict[str, Any]] = field(default_factory=list)  # per subsampling point: name, σ, factor
    stages_after: list[dict[str, Any]] = field(default_factory=list)


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
    if config.factor_hold is not None and converted_points(model):
        hold_factors(model, config.factor_hold)
    ctx = setup_distributed(device)
    try:
        trainer = _Trainer(model, train_data, val_data, epochs, config, teacher, out_dir, ctx, loss_fn)
        with autotuning(config.autotune) if config.autotune else nullcontext():
            result = trainer.run(state)
        # The DDP wrapper holds the process group (and gloo's worker threads) alive: drop it before the group is
        # destroyed, or the process can abort at interpreter exit ("terminate called without an active exception").
        # Then every rank leaves the group together: rank 0 still writes plots and measures multiply-adds after
        # the last step, and a rank that tore down its group and exited meanwhile aborted at exit now and then.
        del trainer
        gc.collect()
        ctx.barrier()
        return result
    finally:
        ctx.close()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Trainer:
    """The state of one run; ``run`` is the loop. Kept private: ``finetune`` is the interface."""

    def __init__(self, model, train_data, val_data, epochs, config, teacher, out_dir, ctx, loss_fn) -> None:
        self.config, self.ctx, self.epochs = config, ctx, epochs
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=config.label_smoothing))
        self.precision = resolve_precision(config.amp, ctx.device)
        self.channels_last = config.channels_last is True or (
            config.channels_last == "auto" and ctx.device.type == "cuda")
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
        self.sigma_bound = SigmaStepBound(self.optimizer, config.sigma_max_step) if config.sigma_max_step else None
        self.scaler = self.precision.scaler()
        self.progress = RunProgress()
        self.probe: Tensor | None = None
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        self.last_good: Path | None = None
        self.net: nn.Module = self.model
        self._rng_to_restore: list[dict[str, Any]] | None = None

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, state: dict[str, Any] | None) -> FinetuneResult:
        # Signals are caught from the start (validation before training included): the run stops after its
        # next step with a checkpoint, instead of dying without one.
        with GracefulInterrupt() as stop:
            return self._run(state, stop)

    def _run(self, state: dict[str, Any] | None, stop: GracefulInterrupt) -> FinetuneResult:
        self._start(state)
        interrupted = False
        try:
            with fp32_njet_kernels(self.model, self.precision.enabled):
                while self.progress.epoch < self.epochs and not interrupted:
                    interrupted = self._train_epoch(stop)
        finally:
            self.metrics.close()
        return self._result(interrupted, stop)

    def _train_epoch(self, stop: GracefulInterrupt) -> bool:
        """One epoch (or the rest of a resumed one); True when a signal stopped it (a checkpoint was written)."""
        p = self.progress
        self.net.train()
        totals, seen, start = EpochTotals(*p.partial), 0, time.perf_counter()  # type: ignore[arg-type]
        batches = self.train_loader.epoch(p.epoch, p.step_in_epoch)
        bar = self._bar()
        for _ in range(p.step_in_epoch, self.steps_per_epoch):
            batch = next(batches, None)
            if batch is None:
                break
            self._release_sigma_when_due()
            loss, n, hits = self._step(batch)
            stopping = self._check_step(loss, stop)
            p.step_in_epoch += 1
            p.global_step += 1
            totals.add(loss, n, hits)
            seen += n
            p.partial = totals.as_list()
            self._log_step(bar, loss, totals, seen * self.ctx.world_size / max(time.perf_counter() - start, 1e-9))
            if stopping:
                return self._stop(bar, stop)
        if bar is not None:
            bar.close()
        self.ctx.broadcast_buffers(self.model)
        self._end_epoch(totals, seen * self.ctx.world_size / max(time.perf_counter() - start, 1e-9))
        return False

    def _step(self, batch: Any) -> tuple[float, int, tuple[int, int]]:
        """One optimiser step; returns the loss, the batch size and (correct, counted) for the accuracy."""
        x, y = split_batch(batch)
        x = to_device(x, self.ctx.device, self.channels_last)
        y = y.to(self.ctx.device, non_blocking=True) if y is not None else None
        if y is None and self.teacher is None:
            raise ValueError("train_data has no labels: pass teacher= to distil the original network's outputs")
        with self.precision.autocast():
            logits = logits_of(self.net(x))
            ref = logits_of(teacher_logits(self.teacher, x)) if self.teacher is not None else None
        bad = y is not None and labels_out_of_range(y, logits.shape[1])
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
            self._bounded_step()
            self.scaler.update()
            self.scheduler.step()
        target = y if y is not None else ref.argmax(1)  # type: ignore[union-attr]
        hits = top1_correct(logits.detach(), target) if target.dim() == logits.dim() - 1 else (0, 0)
        return value, x.shape[0], hits

    def _bounded_step(self) -> None:
        """The optimiser's step, with every σ's move held to ``sigma_max_step`` octaves (counted when it cuts)."""
        if self.sigma_bound is None:
            self.scaler.step(self.optimizer)
            return
        self.sigma_bound.before()
        self.scaler.step(self.optimizer)
        if self.sigma_bound.after():
            self.progress.sigma_steps_bounded += 1

    # -- resolution search ----------------------------------------------------------------------------------
    def _release_sigma_when_due(self) -> None:
        """At the step σ is released (the end of ``sigma_delay_epochs``): drop the momentum σ gathered while its lr
        was 0 — SGD's buffer keeps summing σ's gradients through the delay, and released at once it moves σ by
        ~1 / (1 − momentum) steps in one (a converted MNIST CNN's σ then runs to its lower bound and the run ends
        at chance, docs/design.md) — and run the resolution search when it is asked for."""
        release = round(self.config.sigma_delay_epochs * self.steps_per_epoch)
        if release > 0 and self.progress.global_step == release:
            self._forget_sigma_momentum()
        self._search_when_due(release)

    def _search_when_due(self, release: int) -> None:
        """Run the resolution search once, at the step σ is released, or the first step after it."""
        cfg, p = self.config, self.progress
        if not cfg.resolution_search or p.resolution_search is not None or p.global_step < release:
            return
        batches = self.train_loader.epoch(p.epoch + 7919, 0)  # its own fixed batches: the run's stream is untouched
        probes = [split_batch(b) for _, b in zip(range(cfg.search_batches), batches, strict=False)]
        images = to_device(probes[0][0], self.ctx.device, self.channels_last)
        stages = resolution_stages(self.model, images)
        cost = (lambda m: float(multiply_adds(m, images[:1]))) if cfg.search_max_macs is not None else None
        choices = search_resolution(self.model, lambda m: self._search_loss(m, probes), stages, cfg.search_octaves,
                                    batch_statistics=cfg.search_batchnorm == "batch", cost=cost,
                                    max_cost=cfg.search_max_macs, confidence=cfg.search_confidence)
        self._forget_sigma_momentum()
        self._forget_refitted_alpha_momentum(choices)
        p.resolution_search = [c.as_dict() for c in choices]
        budget = (self._budget_note(cost(self.model), cfg.search_max_macs)
                  if cost is not None and cfg.search_max_macs is not None else "")
        self._say("resolution search: " + ("; ".join(c.describe() for c in choices) or "no N-Jet stage") + budget)

    @staticmethod
    def _budget_note(macs: float, budget: float) -> str:
        """How the searched network stands against the budget (the search steers by it, it cannot promise it)."""
        verdict = "within" if macs <= budget else "over"
        return f" ({macs:,.0f} multiply-adds/image, {verdict} the budget of {budget:,.0f})"

    @torch.no_grad()
    def _search_loss(self, model: nn.Module, probes: list[tuple[Tensor, Tensor | None]]) -> Tensor:
        """The run's loss of every example of the search batches, of all ranks (every rank makes the same choice,
        and the search tests a move's gain example by example)."""
        losses = []
        with self.precision.autocast():
            for x, y in probes:
                x = to_device(x, self.ctx.device, self.channels_last)
                logits = logits_of(model(x)).float()
                ref = logits_of(teacher_logits(self.teacher, x)) if self.teacher is not None else None
                y = y.to(self.ctx.device) if y is not None else None
                losses += [float(self._example_loss(logits[i:i + 1], ref, y, i)) for i in range(x.shape[0])]
        return torch.tensor([v for rank in self.ctx.gather(losses) for v in rank], dtype=torch.float64)

    def _example_loss(self, logits: Tensor, ref: Tensor | None, y: Tensor | None, i: int) -> Tensor:
        """The training loss of example ``i`` of a batch (its logits ``[1, …]``; the teacher's, labels)."""
        label = y[i:i + 1] if y is not None else None
        if ref is not None:
            return distillation_loss(logits, ref[i:i + 1], label, self.config.distill, self.config.label_smoothing)
        return self.loss_fn(logits, label)

    def _forget_sigma_momentum(self) -> None:
        """σ's optimiser state (momentum, Adam moments) gathered during the delay or before the search points at the
        old σ: drop it."""
        for group in self.optimizer.param_groups:
            if group.get("name") == "sigma":
                for param in group["params"]:
                    self.optimizer.state.pop(param, None)

    def _forget_refitted_alpha_momentum(self, choices: list[StageChoice]) -> None:
        """α of a jet layer the search moved by whole octaves was refitted to the dilated kernel: its optimiser
        state points at the α it replaced, so drop it."""
        modules = dict(self.model.named_modules())
        for choice in choices:
            for name in choice.refitted:
                self.optimizer.state.pop(modules[name].alpha, None)

    # -- set-up and results ---------------------------------------------------------------------------------
    def _start(self, state: dict[str, Any] | None) -> None:
        """Check the data fits, restore a checkpoint or measure the start (sizes, multiply-adds, validation)."""
        self._check_model_takes_data()
        if state is not None:
            self._restore(state)
        p, main = self.progress, self.ctx.is_main
        self.metrics = MetricsWriter(self.out_dir, enabled=main, tensorboard=self.config.tensorboard,
                                     resume_step=p.global_step if state is not None else None)
        self.probe = self._probe_batch() if main else None  # sizes, health and multiply-adds on rank 0
        if state is None:
            p.stages_before = stage_table(self.model)
            if self.probe is not None:
                p.sizes_before = feature_sizes(self.model, self.probe)
                p.macs_before = multiply_adds(self.model, self.probe)
                self._record_stages(p.sizes_before)
            if self.val_loader is not None:
                p.val_before = evaluate(self.model, self.val_loader, self.ctx, self.precision, self.teacher)
                self._say(f"validation before fine-tuning: {format_metrics(p.val_before)}")
            self._record_sigma()
        self._wrap()
        self._restore_rng()
        if state is None and self.ctx.rank:
            _seed_all(self.config.seed + self.ctx.rank)  # dropout etc. differ between ranks; rank 0 keeps its stream

    def _result(self, interrupted: bool, stop: GracefulInterrupt) -> FinetuneResult:
        p = self.progress
        macs_after = multiply_adds(self.model, self.probe) if self.probe is not None else None
        plots = self._finish(macs_after) if not interrupted else {}
        stages_after = stage_table(self.model)
        if not interrupted:
            for line in resolution_lines(p.stages_before, stages_after, (p.macs_before, macs_after)):
                self._say(line)
        return FinetuneResult(
            model=self.model, epochs_done=p.epoch, global_step=p.global_step, interrupted=interrupted,
            signal=stop.requested if interrupted else None,
            history=list(p.history), val_before=p.val_before,
            val_after=p.history[-1].get("val") if p.history else None,
            checkpoint=self.last_good, out_dir=self.out_dir, plots=plots, multiply_adds_before=p.macs_before,
            multiply_adds_after=macs_after, resolution_search=p.resolution_search,
            stages_before=list(p.stages_before), stages_after=stages_after,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = RunProgress.from_checkpoint(state, self.ctx.rank, self.ctx.world_size)
        self.last_good = self.checkpoint_path if self.checkpoint_path and self.checkpoint_path.exists() else None
        self._rng_to_restore = state["rng"]

    def _restore_rng(self) -> None:
        states = self._rng_to_restore
        if states is None:
            return
        if len(states) != self.ctx.world_size:
            self._say(f"checkpoint was written by {len(states)} ranks, this run has {self.ctx.world_size}: "
                      "RNG states are reseeded (results will not match an uninterrupted run exactly)")
            _seed_all(self.config.seed + 7919 * (self.progress.global_step + 1) + self.ctx.rank)
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
        return to_device(x.unsqueeze(0), self.ctx.device, self.channels_last)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _check_step(self, loss: float, stop: GracefulInterrupt) -> bool:
        """Stop on a NaN/Inf loss or state on any rank; True when a signal asks (any rank) to stop after it."""
        nonfinite = not math.isfinite(loss)
        bad = None if nonfinite else first_nonfinite(self.model)  # a finite loss can hide diverged weights
        nonfinite, stopping, bad_state = self.ctx.flags([nonfinite, stop.requested is not None, bad is not None])
        if nonfinite:
            self._diverged()
        if bad_state:
            where = f"step {self.progress.step_in_epoch + 1} of epoch {self.progress.epoch + 1}"
            self._diverged(f"{bad or 'a parameter or buffer on another rank'} became NaN/Inf at {where}")
        return stopping

    def _log_step(self, bar: Any, loss: float, totals: EpochTotals, rate: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{totals.loss.mean:.4f}", acc=totals.accuracy, img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
        p = self.progress
        if p.global_step % self.config.extra.get("log_every", 50) == 0:
            self.metrics.log({"kind": "step", "epoch": p.epoch, "global_step": p.global_step, "loss": loss, "lr": lr})
            self._record_sigma()

    def _stop(self, bar: Any, stop: GracefulInterrupt) -> bool:
        """A signal arrived: checkpoint the position after this step and say how to continue."""
        if bar is not None:
            bar.close()
        self.ctx.broadcast_buffers(self.model)
        self._save()
        where = f"epoch {self.progress.epoch + 1}, step {self.progress.step_in_epoch}/{self.steps_per_epoch}"
        self._say(f"stopped by {stop.name or 'a signal on another rank'} at {where}; checkpoint: "
                  f"{self.last_good}; continue with resume={str(self.last_good)!r}")
        return True

    def _end_epoch(self, totals: EpochTotals, rate: float) -> None:
        """The epoch's row (train and validation metrics, σ, resolution health), logged and checkpointed."""
        p, ctx = self.progress, self.ctx
        summed = ctx.sum(totals.as_list())
        row: dict[str, Any] = {
            "kind": "epoch", "epoch": p.epoch + 1, "global_step": p.global_step,
            "train_loss": summed[0] / max(summed[1], 1),
            "train_acc": 100.0 * summed[2] / summed[3] if summed[3] else None,
            "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": rate,
        }
        if self.val_loader is not None and ((p.epoch + 1) % self.config.eval_every == 0 or p.epoch + 1 == self.epochs):
            val = evaluate(self.model, self.val_loader, ctx, self.precision, self.teacher)
            if not all(math.isfinite(v) for v in val.values()):
                self._diverged(f"the validation loss became NaN/Inf after epoch {p.epoch + 1}")
            row["val"] = val
            row.update({f"val_{k}": v for k, v in val.items()})
        self._record_sigma()
        row.update({f"sigma/{k}": v for k, v in p.sigma_history[-1].items()})
        row.update(self._resolution_row())
        self._note_sigma_bound(row)
        p.epoch += 1
        p.step_in_epoch = 0
        p.partial = [0.0, 0, 0, 0]
        p.history.append(row)
        self.metrics.log({k: v for k, v in row.items() if k != "val"})
        acc = "" if row["train_acc"] is None else f", acc {row['train_acc']:.2f}%"
        val_text = "; val " + format_metrics(row["val"]) if "val" in row else ""
        self._say(f"epoch {p.epoch}/{self.epochs}: train loss {row['train_loss']:.4f}{acc}{val_text}")
        self._save()

    def _note_sigma_bound(self, row: dict[str, Any]) -> None:
        """``sigma_steps_bounded`` (steps so far in which the σ step bound cut a σ back) in the row; said when the
        bound cut this epoch, since it means σ's gradient asked for more than ``sigma_max_step`` allows."""
        if self.sigma_bound is None:
            return
        before = next((r["sigma_steps_bounded"] for r in reversed(self.progress.history)
                       if "sigma_steps_bounded" in r), 0)
        row["sigma_steps_bounded"] = total = self.progress.sigma_steps_bounded
        if total > before:
            self._say(f"σ step bound: {total - before} step(s) this epoch moved some σ by more than "
                      f"{self.config.sigma_max_step:g} octave and were cut back")

    def _diverged(self, what: str | None = None) -> None:
        p = self.progress
        where = f"epoch {p.epoch + 1}, step {p.step_in_epoch + 1} (global step {p.global_step + 1})"
        self.metrics.close()
        raise diverged_error(what or f"loss became NaN/Inf at {where}", self.last_good)

    def _record_sigma(self) -> None:
        self.progress.sigma_history.append(sigma_values(self.model))
        self.progress.sigma_steps.append(self.progress.global_step)

    def _record_stages(self, sizes: dict[str, list[int]]) -> None:
        """σ, factor and output size of every subsampling point now (the resolution plot over training)."""
        stages = [{**row, "size": sizes.get(row["name"])} for row in stage_table(self.model)]
        self.progress.stage_history.append({"step": self.progress.global_step, "stages": stages})

    def _resolution_row(self) -> dict[str, Any]:
        """σ on a bound, maps of 1 px and multiply-adds per image now (rank 0; said on stderr when not empty)."""
        if not self.ctx.is_main:
            return {}
        sizes = feature_sizes(self.model, self.probe) if self.probe is not None else None
        row: dict[str, Any] = dict(resolution_health(self.model, sizes))
        if self.probe is not None:
            row["multiply_adds"] = multiply_adds(self.model, self.probe)
        if sizes is not None:
            self._record_stages(sizes)
        for key, what in (("sigma_at_bound", "σ on its bound"), ("maps_at_1px", "feature map down to 1 px")):
            if row.get(key):
                self._say(f"{what}: {', '.join(row[key])}")
        return row

    def _save(self) -> None:
        rng = self.ctx.gather(capture_rng_state())  # collectives: every rank takes part
        partial = self.ctx.gather(list(self.progress.partial))
        if not self.ctx.is_main or self.checkpoint_path is None:
            return
        payload = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.precision.needs_scaler else None,
            **self.progress.payload(), "epochs": self.epochs, "world_size": self.ctx.world_size, "rng": rng,
            "partial": partial, "config": self.config.to_dict(),
            "sampler": {"epoch": self.progress.epoch, "skip_batches": self.progress.step_in_epoch,
                        "seed": self.config.seed},
        }
        self.last_good = save_checkpoint(self.checkpoint_path, payload)

    def _finish(self, macs_after: int | None) -> dict[str, Path]:
        """The PNG plots; a reporting step never costs the trained result, so a missing matplotlib skips them."""
        if not self.ctx.is_main or self.out_dir is None or not self.config.plots:
            return {}
        try:
            return write_plots(self.model, self.out_dir, self.progress, self.probe, macs_after)
        except ImportError as exc:
            self._say(f"plots skipped: {first_line(exc)} (pip install 'njet[plots]' to get them); "
                      "the trained model is kept", always=True)
            return {}

    def _bar(self) -> Any:
        if not (self.ctx.is_main and self.config.progress and sys.stderr.isatty()):
            return None
        return progress_bar(self.steps_per_epoch, self.progress.step_in_epoch,
                            f"epoch {self.progress.epoch + 1}/{self.epochs}")

    def _say(self, message: str, always: bool = False) -> None:
        if self.ctx.is_main and (self.config.progress or always):
            print(f"[finetune] {message}", file=sys.stderr, flush=True)
