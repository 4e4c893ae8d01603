"""Reproduce the paper's central claims at CPU scale and print tables: paper | ours | command.

    python benchmarks/science.py sigma            # Exp. 1.2A: σ follows the input scale
    python benchmarks/science.py robust --depth 2 # Table 5: scale robustness (2-layer; run --depth 4 too)
    python benchmarks/science.py seg              # Exp. 1.1B: U-Net vs N-Jet U-Net, mIoU per scale setting
    python benchmarks/science.py aspp             # Exp. 2B: ASPP parameter counts, σ per branch learned

``--quick`` shrinks everything to a smoke run; ``--full`` uses the paper-like sizes (hours on CPU). Runs use one
thread (``--threads``) and fixed seeds; ``--json PATH`` also writes the raw rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace

import torch

import njet_convert  # noqa: F401  (torchvision guard before timm/torchvision imports)
from njet_convert.experiments import aspp_sharing, scale_robustness, segmentation, sigma_scale
from njet_convert.experiments._train import TrainConfig

PAPER_TABLE5 = {  # (depth, variant) -> (MNIST, MNIST×4) as printed in the paper
    (2, "Standard 3x3"): ("97.04 ± 0.22", "86.27 ± 3.44"), (2, "Standard 5x5"): ("98.62 ± 0.08", "88.67 ± 5.97"),
    (2, "Standard 9x9"): ("98.93 ± 0.08", "95.84 ± 0.76"), (2, "Standard 11x11"): ("98.72 ± 0.20", "95.75 ± 1.50"),
    (2, "Dilated 3x3 (d=2)"): ("98.47 ± 0.25", "89.87 ± 3.67"), (2, "N-Jet"): ("99.05 ± 0.04", "98.11 ± 0.16"),
    (4, "Standard 3x3"): ("98.49 ± 0.20", "86.53 ± 7.15"), (4, "Standard 5x5"): ("98.54 ± 0.37", "97.47 ± 0.41"),
    (4, "Standard 9x9"): ("98.91 ± 0.18", "94.23 ± 4.01"), (4, "Standard 11x11"): ("98.81 ± 0.20", "96.21 ± 1.40"),
    (4, "Dilated 3x3 (d=2)"): ("98.40 ± 0.38", "91.28 ± 1.88"), (4, "N-Jet"): ("99.37 ± 0.05", "98.87 ± 0.21"),
}


def _command() -> str:
    return "python benchmarks/science.py " + " ".join(sys.argv[1:])


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def do_sigma(args: argparse.Namespace) -> list[dict]:
    cfg = sigma_scale.SigmaScaleConfig()
    if args.quick:
        cfg = replace(cfg, seeds=(0,), n_train=300, n_test=200, train=TrainConfig(epochs=1))
    elif args.full:
        cfg = replace(cfg, n_train=4000, width=32, train=replace(cfg.train, epochs=20))
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    if args.sigma_lr is not None:
        cfg = replace(cfg, train=replace(cfg.train, sigma_lr=args.sigma_lr))
    if args.epochs:
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    if args.factors:
        cfg = replace(cfg, factors=tuple(args.factors))
    if args.max_pool:
        cfg = replace(cfg, safe_subsample=False)
    rows = sigma_scale.run(cfg)
    summ = sigma_scale.summarize(rows)
    table = [[f"{f:g}×", f"{e['s1']:.3f} ± {e['s1_std']:.3f}", f"{e['s2']:.3f} ± {e['s2_std']:.3f}",
              _pm(e["acc"], e["acc_std"])] for f, e in summ.items()]
    print(f"\nExp. 1.2A — learned σ per input scale (digits, {cfg.n_train} train, {len(cfg.seeds)} seeds, "
          f"{cfg.train.epochs} epochs, Adam lr {cfg.train.lr:g}, σ lr {cfg.train.sigma_lr or cfg.train.lr:g})")
    print(_table(["resize", "σ layer 1", "σ layer 2", "test acc %"], table))
    if 1.5 in summ and 2.0 in summ:
        ratio = [summ[2.0][f"s{i}"] / summ[1.5][f"s{i}"] for i in (1, 2)]
        print(_table(["quantity", "paper (MNIST)", "ours layer 1", "ours layer 2", "command"], [
            ["σ_2.0 / σ_1.5 (ideal 2/1.5 = 1.333)", f"{2.82 / (2.81 * 1.5 / 2.0):.3f}", f"{ratio[0]:.3f}",
             f"{ratio[1]:.3f}", f"`{_command()}`"],
            ["σ_2.0", "2.82 ± 0.04", f"{summ[2.0]['s1']:.2f}", f"{summ[2.0]['s2']:.2f}", ""],
            ["(2.0/1.5)·σ_1.5", "2.81 ± 0.04", f"{summ[1.5]['s1'] * 2 / 1.5:.2f}", f"{summ[1.5]['s2'] * 2 / 1.5:.2f}",
             ""],
        ]))
    print(_settling(rows))
    return rows


def _settling(rows: list[dict]) -> str:
    """How far σ still moved over the last quarter of the epochs (per layer, largest over runs): has it settled?"""
    runs = [r["trajectory"] for r in rows if len(r.get("trajectory", [])) >= 4]
    if not runs:
        return ""
    tail = max(1, len(runs[0]) // 4)
    moves = [max(abs(t[-1][i] - t[-1 - tail][i]) for t in runs) for i in range(len(runs[0][0]))]
    steps = max(r["steps"] for r in rows)
    return (f"σ settling: largest |Δσ| over the last {tail} of {len(runs[0])} epochs per layer "
            f"{', '.join(f'{m:.3f}' for m in moves)} ({steps} optimiser steps per run)")


def do_robust(args: argparse.Namespace) -> list[dict]:
    cfg = scale_robustness.ScaleRobustnessConfig()
    if args.depth:
        cfg = replace(cfg, depths=(args.depth,))
    if args.quick:
        cfg = replace(cfg, seeds=(0,), n_train=200, n_test=100, train=TrainConfig(epochs=1), n_train_large=100,
                      epochs_large=1)
    elif args.full:
        cfg = replace(cfg, n_train=4000, width=32, train=replace(cfg.train, epochs=20), n_train_large=4000,
                      epochs_large=20)
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    if args.variants:
        cfg = replace(cfg, variants=tuple(args.variants))
    if args.factors:
        cfg = replace(cfg, factors=tuple(args.factors))
    if args.sigma_lr is not None:
        cfg = replace(cfg, train=replace(cfg.train, sigma_lr=args.sigma_lr))
    if args.epochs_large:
        cfg = replace(cfg, epochs_large=args.epochs_large)
    if args.n_train:
        cfg = replace(cfg, n_train=args.n_train, n_train_large=args.n_train)
    rows = scale_robustness.run(cfg)
    summ = scale_robustness.summarize(rows)
    table = []
    for depth in cfg.depths:
        for name in cfg.variants:
            paper = PAPER_TABLE5[(depth, name)]
            ours = [_pm(*summ[(depth, name, f)]) if (depth, name, f) in summ else "—" for f in (1.0, 4.0)]
            table.append([f"{depth}-layer {name}", paper[0], ours[0], paper[1], ours[1]])
    print(f"\nTable 5 — accuracy % (mean ± std, {len(cfg.seeds)} seeds; ours: opencv digits padded to 28 px, "
          f"{cfg.n_test} test, width {cfg.width}; 28 px: {cfg.n_train} train, {cfg.train.epochs} epochs; 112 px: "
          f"{min(cfg.n_train, cfg.n_train_large)} train, {cfg.epochs_large} epochs)")
    print(_table(["net", "paper MNIST", "ours 28 px", "paper MNIST×4", "ours 112 px"], table))
    print(f"command: `{_command()}`")
    return rows


def do_seg(args: argparse.Namespace) -> list[dict]:
    cfg = segmentation.SegmentationConfig()
    if args.quick:
        cfg = replace(cfg, settings=("s1", "s2"), n_train=8, n_val=4,
                      train=replace(cfg.train, epochs=1))
    elif args.full:
        cfg = replace(cfg, seeds=(0, 1, 2, 3, 4), n_train=2000, n_val=500, width=64, object_size=28,
                      train=replace(cfg.train, epochs=50, batch_size=1, lr=1e-4))
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    if args.settings:
        cfg = replace(cfg, settings=tuple(args.settings))
    if args.n_train:
        cfg = replace(cfg, n_train=args.n_train)
    if args.n_val:
        cfg = replace(cfg, n_val=args.n_val)
    if args.epochs:
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    rows = segmentation.run(cfg)
    summ = segmentation.summarize(rows)
    table = []
    for setting in cfg.settings:
        cells = [_pm(*summ[(setting, m)]) for m in cfg.models]
        sig = [r["sigmas"] for r in rows if r["setting"] == setting and r["sigmas"]]
        mean_sigma = sum(sum(s) / len(s) for s in sig) / len(sig) if sig else float("nan")
        table.append([setting, *cells, f"{mean_sigma:.2f}"])
    print(f"\nExp. 1.1B — validation mIoU % ({len(cfg.seeds)} seed(s), {cfg.n_train} train / {cfg.n_val} val images, "
          f"width {cfg.width}, {cfg.train.epochs} epochs, objects {cfg.object_size} px at s = 1; paper: width 64, "
          "50 epochs, 5 seeds, Fig. 10 — baseline falls for large objects, N-Jet stays high)")
    print(_table(["scale setting", *cfg.models, "N-Jet mean σ over layers"], table))
    print(f"command: `{_command()}`")
    return rows


def do_aspp(args: argparse.Namespace) -> list[dict]:
    counts = aspp_sharing.parameter_table()
    print("\nExp. 2B — ASPP head parameters (2048 input channels, 21 classes)")
    print(_table(["model", "paper", "ours (σ's counted)", "ours, paper's way (σ's not counted)"],
                 [[r["model"], f"{r['paper']:,}", f"{r['ours']:,}", f"{r['ours_paper_way']:,}"] for r in counts]))
    steps = 4 if args.quick else 60
    rows = aspp_sharing.sigma_learning(steps=steps)  # Adam: lr 1e-3 on α, 1e-2 on log σ
    print(f"\nExp. 2B — σ per branch (init rate/k) after {steps} Adam steps, N-Jet ASPP order 3 with shared α on "
          "ImageNet MobileNetV2 features (frozen), multi-scale Fashion-MNIST segmentation (s ∈ {1..4})")
    print(_table(["branch (rate)", "σ init", "σ learned", "kernel size"],
                 [[str(r["rate"]), f"{r['sigma_init']:.3f}", f"{r['sigma']:.3f}", str(r["kernel_size"])]
                  for r in rows["branches"]]))
    print(f"loss {rows['loss_first']:.3f} -> {rows['loss_last']:.3f}; command: `{_command()}`")
    return [{"counts": counts, **rows}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["sigma", "robust", "seg", "aspp"])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    size.add_argument("--full", action="store_true", help="paper-like sizes (hours on CPU)")
    parser.add_argument("--depth", type=int, choices=[2, 4], help="robust: one depth only")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--settings", nargs="+", choices=list(segmentation.SegmentationConfig().settings))
    parser.add_argument("--sigma-lr", type=float, help="sigma/robust: learning rate of log σ (default: the α lr)")
    parser.add_argument("--variants", nargs="+", choices=list(scale_robustness.VARIANTS), help="robust: these nets")
    parser.add_argument("--factors", type=float, nargs="+", help="sigma/robust: resize factors")
    parser.add_argument("--max-pool", action="store_true", help="sigma: 2×2 max pooling instead of safe subsampling")
    parser.add_argument("--n-train", type=int, help="seg: training images per setting (default 100); "
                        "robust: training images at every size (default 1500 at 28 px, 1000 at ×4; 4000: every digit "
                        "not in the test split)")
    parser.add_argument("--n-val", type=int, help="seg: validation images per setting (default 50)")
    parser.add_argument("--epochs", type=int, help="seg, sigma: training epochs (default 8)")
    parser.add_argument("--epochs-large", type=int, help="robust: training epochs on the ×4 images (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("--json", help="also write the raw result rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {"sigma": do_sigma, "robust": do_robust, "seg": do_seg, "aspp": do_aspp}[args.experiment](args)
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=1, default=str)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
