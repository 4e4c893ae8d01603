"""What fine-tuning did to resolution: σ per layer over training, feature-map sizes per layer before and after
(like the paper's Figs. 7–8), and the first N-Jet layer's learned filters — as PNGs (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample

__all__ = [
    "feature_sizes",
    "plot_feature_sizes",
    "plot_first_filters",
    "plot_resolution",
    "plot_sigma_history",
    "sigma_values",
    "write_plots",
]


def sigma_values(model: nn.Module) -> dict[str, float]:
    """σ of every NJetConv2d (and every SafeSubsample with its own σ), by module name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, NJetConv2d) or (isinstance(module, SafeSubsample) and module.source is None):
            out[name or "(root)"] = float(module.sigma.detach())
    return out


@torch.no_grad()
def feature_sizes(model: nn.Module, images: Tensor) -> dict[str, list[int]]:
    """Spatial size ``[H, W]`` of each NJetConv2d / SafeSubsample output on ``images`` (hooks on one pass)."""
    sizes: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, NJetConv2d | SafeSubsample):
            def hook(mod, inp, out, name=name):
                if isinstance(out, Tensor) and out.dim() >= 3:
                    sizes[name] = [int(s) for s in out.shape[-2:]]
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sigma_history(history: list[dict[str, float]], steps: list[int], path: str | Path) -> Path | None:
    """One line per layer: σ against the training step."""
    if not history or not history[0]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in history[0]:
        ax.plot(steps, [h.get(name, float("nan")) for h in history], marker="o", ms=3, label=name)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("σ")
    ax.set_title("σ per layer during fine-tuning")
    if len(history[0]) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_resolution(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """σ (top) and output-map height (bottom) of every subsampling point against the training step: the network's
    resolution over fine-tuning, stage by stage (``history``: ``RunProgress.stage_history``)."""
    if not history or not history[0]["stages"]:
        return None
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [h["step"] for h in history]
    for i, stage in enumerate(history[0]["stages"]):
        rows = [h["stages"][i] if i < len(h["stages"]) else {} for h in history]
        top.plot(steps, [r.get("sigma", float("nan")) for r in rows], marker="o", ms=3, label=stage["name"])
        bottom.plot(steps, [(r.get("size") or [float("nan")])[0] for r in rows], marker="o", ms=3)
    top.set_ylabel("σ of the stage")
    top.set_title("resolution per subsampling point during fine-tuning")
    bottom.set_ylabel("output map height (px)")
    bottom.set_xlabel("optimiser step")
    if len(history[0]["stages"]) <= 12:
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_feature_sizes(before: dict[str, list[int]], after: dict[str, list[int]], path: str | Path,
                       multiply_adds: tuple[int, int] | None = None) -> Path | None:
    """Bars of each layer's output height before and after fine-tuning (the paper's Figs. 7–8); the title gives
    the multiply-adds per image before and after when known (what the change of resolution costs or saves)."""
    names = list(before)
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    x = torch.arange(len(names)).float()
    ax.bar((x - 0.2).tolist(), [before[n][0] for n in names], width=0.4, label="before")
    ax.bar((x + 0.2).tolist(), [after.get(n, [0])[0] for n in names], width=0.4, label="after")
    ax.set_xticks(x.tolist())
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("feature-map height (px)")
    title = "feature-map size per layer"
    if multiply_adds is not None:
        mb, ma = (m / 1e6 for m in multiply_adds)
        title += f"\nmultiply-adds per image: {mb:.3g} M before, {ma:.3g} M after"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def plot_first_filters(model: nn.Module, path: str | Path, max_filters: int = 64) -> Path | None:
    """The first NJetConv2d's composed filters (first input channel), one tile per output channel."""
    layer = next((m for m in model.modules() if isinstance(m, NJetConv2d)), None)
    if layer is None:
        return None
    kernels = layer.kernel().float().cpu()[:max_filters, 0]
    plt = _pyplot()
    n = kernels.shape[0]
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            k = kernels[i]
            lim = float(k.abs().max()) or 1.0
            ax.imshow(k.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(f"first N-Jet layer filters (σ={float(layer.sigma):.3g}, {layer.kernel_size}×{layer.kernel_size})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_plots(model: nn.Module, out_dir: Path, progress: Any, probe: Tensor | None,
                multiply_adds_after: int | None) -> dict[str, Path]:
    """The PNGs of a finished run in ``out_dir``: σ over the steps, σ and map size per stage over the steps
    (``resolution.png``), the first layer's filters, and (with a probe
    image and sizes before training) feature-map sizes before and after; ``progress`` is the run's
    :class:`~njet_convert.training.checkpoint.RunProgress`. Raises ImportError without matplotlib."""
    made = {
        "sigma": plot_sigma_history(progress.sigma_history, progress.sigma_steps, out_dir / "sigma.png"),
        "filters": plot_first_filters(model, out_dir / "first_layer_filters.png"),
        "resolution": plot_resolution(getattr(progress, "stage_history", []), out_dir / "resolution.png"),
    }
    if probe is not None and progress.sizes_before:
        after = feature_sizes(model, probe)
        before = progress.macs_before
        macs = (before, multiply_adds_after) if before is not None and multiply_adds_after is not None else None
        made["feature_sizes"] = plot_feature_sizes(progress.sizes_before, after, out_dir / "feature_sizes.png",
                                                   multiply_adds=macs)
    return {k: v for k, v in made.items() if v is not None}
