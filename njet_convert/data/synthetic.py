"""Calibration inputs synthesised from a network's own batch-norm statistics, for users who have no data.

The idea of data-free quantization (ZeroQ; DeepInversion): a trained network's batch-norm layers store the mean and
variance of their inputs over the training set, so inputs whose per-channel feature statistics match those stored
statistics at every batch norm look, to the network, like its training data. Starting from smooth random noise, a batch
of images is optimised (Adam on the pixels) to minimise

    Σ_layers ‖μ_batch − μ_running‖² + ‖σ_batch − σ_running‖²    (per channel, over the batch and positions)

plus a small total-variation prior (natural images are locally smooth) and an L2 prior on the pixels, with a random
horizontal flip and shift of the batch at each step (so the images do not overfit one alignment of the network).
This is an independent implementation of that idea; nothing here needs labels or the training data.

Offered as ``convert(..., calibration="synthetic")`` and mixed with real images when there are few
(:func:`mix_synthetic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SYNTHETIC_IMAGES", "SynthesisConfig", "mix_synthetic", "synthesize"]

SYNTHETIC_IMAGES = 64  # what convert(calibration="synthetic") synthesises


@dataclass
class SynthesisConfig:
    """Knobs of :func:`synthesize`: optimisation ``steps`` per batch of ``batch_size`` images, Adam ``lr`` on the
    pixels, total-variation and L2 prior weights, the largest random shift in pixels per step."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 0.1
    tv_weight: float = 1e-3
    l2_weight: float = 1e-5
    jitter: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.jitter < 0:
            raise ValueError("SynthesisConfig: steps and batch_size must be >= 1, lr > 0, jitter >= 0")


def synthesize(model: nn.Module, n: int, shape: tuple[int, int, int], config: SynthesisConfig | None = None, *,
               progress: Callable[[str], None] | None = None) -> Tensor:
    """``n`` inputs ``[n, *shape]`` whose batch-norm statistics in ``model`` match its running statistics.

    ``shape``: ``(channels, height, width)`` of one input, in the model's input normalisation. Raises ValueError when
    the model has no batch norm with running statistics (nothing to match). The model's modes are restored.
    """
    cfg = config or SynthesisConfig()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    if not norms:
        raise ValueError("synthetic calibration needs batch-norm layers with running statistics in the model")
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        out = []
        for start in range(0, n, cfg.batch_size):
            count = min(cfg.batch_size, n - start)
            out.append(_one_batch(model, norms, count, shape, cfg, gen, param))
            if progress:
                progress(f"[synthesise] {start + count}/{n} images")
        return torch.cat(out)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.train(mode)


def mix_synthetic(real: Tensor, model: nn.Module, minimum: int, config: SynthesisConfig | None = None) -> Tensor:
    """``real`` topped up with synthesised inputs to at least ``minimum`` images (unchanged if it has as many).

    The synthetic images come first: the calibration holds out the last images, so its fidelity figure is then
    measured on real ones."""
    missing = minimum - real.shape[0]
    if missing <= 0:
        return real
    extra = synthesize(model, missing, tuple(real.shape[1:]), config).to(real.dtype)
    return torch.cat([extra, real])


def _one_batch(model, norms, count, shape, cfg: SynthesisConfig, gen, param) -> Tensor:
    noise = torch.randn(count, *shape, generator=gen)
    x = F.avg_pool2d(noise, 5, 1, 2).mul(2.0).to(param.device, param.dtype).requires_grad_(True)
    terms: list[Tensor] = []

    def hook(module, args):
        inp = args[0]
        mean = inp.mean(dim=(0, 2, 3))
        var = inp.var(dim=(0, 2, 3), unbiased=False)
        terms.append(F.mse_loss(mean, module.running_mean, reduction="sum")
                     + F.mse_loss(var.add(module.eps).sqrt(), module.running_var.add(module.eps).sqrt(),
                                  reduction="sum"))

    hooks = [m.register_forward_pre_hook(hook) for m in norms]
    optimiser = torch.optim.Adam([x], lr=cfg.lr)
    try:
        for step in range(cfg.steps):
            terms.clear()
            view = _jitter(x, cfg.jitter, gen)
            model(view)
            loss = torch.stack(terms).sum() / len(norms) + cfg.tv_weight * _total_variation(x) \
                + cfg.l2_weight * x.pow(2).sum() / count
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for group in optimiser.param_groups:  # cosine decay of the step size
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / cfg.steps))
    finally:
        for h in hooks:
            h.remove()
    return x.detach()


def _jitter(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    if pixels > 0:
        dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else x


def _total_variation(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
