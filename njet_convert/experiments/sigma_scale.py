"""Exp. 1.2A: does the learned σ follow the input scale?

The 2-layer N-Jet toy net (σ initialised to 1) is trained on the same digits resized 1×, 1.5× and 2×. If the
net learns the data's resolution, σ grows with the resize factor, and ``sigma_2.0 / sigma_1.5 ≈ 2.0 / 1.5``
(the paper: (2.0/1.5)·σ_1.5 = 2.81 ± 0.04 vs σ_2.0 = 2.82 ± 0.04 on MNIST).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from njet_convert.models.mnist_toy import ToyConfig, ToyNet, toy_sigmas

from ._data import digits_split, resize_images
from ._train import TrainConfig, evaluate_accuracy, seed_everything, shuffled_batches, train_epochs

__all__ = ["SigmaScaleConfig", "run", "summarize"]


@dataclass(frozen=True)
class SigmaScaleConfig:
    """Sizes of the experiment (defaults: ~5 CPU-minutes; ``benchmarks/science.py sigma --full`` for more)."""

    factors: tuple[float, ...] = (1.0, 1.5, 2.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 2000
    n_test: int = 1000
    depth: int = 2
    width: int = 8
    safe_subsample: bool = True  # False: fixed 2×2 max pooling, so σ of layer 1 no longer sets the map size
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=32, lr=1e-2))


def run(cfg: SigmaScaleConfig, log: bool = True) -> list[dict[str, object]]:
    """One row per (factor, seed): learned σ per layer and test accuracy."""
    x_tr, y_tr, x_te, y_te = digits_split(cfg.n_train, cfg.n_test)
    rows = []
    for factor in cfg.factors:
        xs_tr, xs_te = resize_images(x_tr, factor), resize_images(x_te, factor)
        for seed in cfg.seeds:
            seed_everything(seed)
            model = ToyNet(ToyConfig(depth=cfg.depth, width=cfg.width, conv="njet", safe_subsample=cfg.safe_subsample))
            train_cfg = TrainConfig(**{**cfg.train.__dict__, "seed": seed})
            trajectory: list[list[float]] = []  # σ per layer after each epoch: has σ settled?
            stats = train_epochs(model, shuffled_batches(xs_tr, y_tr, train_cfg.batch_size, seed), train_cfg,
                                 on_epoch=lambda epoch, loss, t=trajectory, m=model: t.append(toy_sigmas(m)))
            row = {"factor": factor, "seed": seed, "size": xs_tr.shape[-1], "sigmas": toy_sigmas(model),
                   "acc": evaluate_accuracy(model, xs_te, y_te), "seconds": stats["seconds"],
                   "steps": int(stats["steps"]), "trajectory": trajectory}
            rows.append(row)
            if log:
                print(f"  factor {factor}: seed {seed} sigma {[round(s, 3) for s in row['sigmas']]} "
                      f"acc {row['acc']:.2f}% ({row['seconds']:.0f}s)", flush=True)
    return rows


def summarize(rows: list[dict[str, object]]) -> dict[float, dict[str, float]]:
    """Per factor: mean/std of σ of the first layer (``s1``) and the second (``s2``), and accuracy."""
    out: dict[float, dict[str, float]] = {}
    for factor in sorted({r["factor"] for r in rows}):  # type: ignore[type-var]
        sel = [r for r in rows if r["factor"] == factor]
        entry: dict[str, float] = {}
        for layer in range(len(sel[0]["sigmas"])):  # type: ignore[arg-type]
            vals = [r["sigmas"][layer] for r in sel]  # type: ignore[index]
            entry[f"s{layer + 1}"] = statistics.mean(vals)
            entry[f"s{layer + 1}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        accs = [r["acc"] for r in sel]
        entry["acc"] = statistics.mean(accs)  # type: ignore[arg-type]
        entry["acc_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0  # type: ignore[arg-type]
        out[float(factor)] = entry  # type: ignore[arg-type]
    return out


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(1)
    print(summarize(run(SigmaScaleConfig(seeds=(0,), n_train=500, n_test=200, train=TrainConfig(epochs=1)))))
