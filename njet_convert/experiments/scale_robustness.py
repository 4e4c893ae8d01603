"""Table 5 (Exp. 4A): scale robustness of 2- and 4-layer toy nets on digits at 28 px and resized ×4 (112 px).

Standard 3×3, 5×5, 9×9, 11×11 convs (2×2 max pooling between layers), 3×3 convs with dilation 2 (the paper's
Atrous setting on both sizes), and N-Jet (order 3, σ0 = 1, safe subsampling r = 4). Each net is trained and
tested at one size; accuracy mean ± std over seeds. Deformable convs are left out (no torchvision op on CPU
without the compiled extension).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from njet_convert.models.mnist_toy import ToyConfig, ToyNet, toy_sigmas

from ._data import digits_split, resize_images
from ._train import TrainConfig, evaluate_accuracy, seed_everything, shuffled_batches, train_epochs

__all__ = ["VARIANTS", "ScaleRobustnessConfig", "run", "summarize"]

# name -> ToyConfig overrides
VARIANTS: dict[str, dict[str, object]] = {
    "Standard 3x3": {"conv": "standard", "kernel_size": 3},
    "Standard 5x5": {"conv": "standard", "kernel_size": 5},
    "Standard 9x9": {"conv": "standard", "kernel_size": 9},
    "Standard 11x11": {"conv": "standard", "kernel_size": 11},
    "Dilated 3x3 (d=2)": {"conv": "dilated", "dilation": 2},
    "N-Jet": {"conv": "njet"},
}


@dataclass(frozen=True)
class ScaleRobustnessConfig:
    """Sizes of the experiment."""

    depths: tuple[int, ...] = (2, 4)
    factors: tuple[float, ...] = (1.0, 4.0)
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 1500
    n_test: int = 1000
    width: int = 8
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=32, lr=1e-2))
    # CPU budget: factors > 2 (the ×4 images cost 16× more per image) train on fewer images and epochs
    n_train_large: int = 1000
    epochs_large: int = 4


def run(cfg: ScaleRobustnessConfig, log: bool = True) -> list[dict[str, object]]:
    """One row per (depth, variant, factor, seed) with test accuracy (and σ's for N-Jet)."""
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants must be among {tuple(VARIANTS)}, got {unknown!r}")
    x_tr, y_tr, x_te, y_te = digits_split(cfg.n_train, cfg.n_test)
    rows = []
    for factor in cfg.factors:
        large = factor > 2
        n_train = min(cfg.n_train_large, cfg.n_train) if large else cfg.n_train
        xs_tr, ys_tr, xs_te = resize_images(x_tr[:n_train], factor), y_tr[:n_train], resize_images(x_te, factor)
        epochs = cfg.epochs_large if large else cfg.train.epochs
        for depth in cfg.depths:
            for name in cfg.variants:
                for seed in cfg.seeds:
                    seed_everything(seed)
                    model = ToyNet(ToyConfig(depth=depth, width=cfg.width, **VARIANTS[name]))  # type: ignore[arg-type]
                    tcfg = TrainConfig(**{**cfg.train.__dict__, "seed": seed, "epochs": epochs})
                    stats = train_epochs(model, shuffled_batches(xs_tr, ys_tr, tcfg.batch_size, seed), tcfg)
                    row = {"depth": depth, "variant": name, "factor": factor, "seed": seed,
                           "acc": evaluate_accuracy(model, xs_te, y_te), "sigmas": toy_sigmas(model),
                           "seconds": stats["seconds"]}
                    rows.append(row)
                    if log:
                        sig = f" sigma {[round(s, 2) for s in row['sigmas']]}" if row["sigmas"] else ""
                        print(f"  {depth}-layer x{factor:g} {name} seed {seed}: {row['acc']:.2f}%{sig} "
                              f"({row['seconds']:.0f}s)", flush=True)
    return rows


def summarize(rows: list[dict[str, object]]) -> dict[tuple[int, str, float], tuple[float, float]]:
    """(depth, variant, factor) -> (mean, std) accuracy over seeds."""
    out = {}
    for key in sorted({(r["depth"], r["variant"], r["factor"]) for r in rows}, key=str):
        accs = [r["acc"] for r in rows if (r["depth"], r["variant"], r["factor"]) == key]
        out[key] = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0)  # type: ignore[arg-type]
    return out
