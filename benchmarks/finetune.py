"""Fine-tuning a converted real network at CPU scale: the pretrained MNIST CNN of digit-recognizer-py, converted
to order-3 N-Jet layers and fine-tuned for ≤ 2 epochs on real handwritten digits.

Why this baseline: it is a real network trained by someone else on MNIST (3× conv3×3 + ReLU + max-pool, fc
1152→256→10); we rebuild it from its state_dict keys. MNIST itself is not available offline, so the data are the
5000 opencv-doc digits (20×20, padded to MNIST's 28×28 layout), split 4000 train / 1000 test with a fixed seed,
normalised like MNIST (mean 0.1307, std 0.3081). Rows: the original network (no fine-tuning), the original
fine-tuned with the same recipe (so the comparison is fair: fine-tuning on these digits helps any network),
the converted network before fine-tuning, and after.

Conversion is the real path, ``njet_convert.convert`` with its default safe subsampling (each 2×2 max-pool →
stride-1 pool + SafeSubsample linked to the conv before it). This network flattens a fixed 3×3×128 map into a
Linear layer: ``convert(..., input_size=(1, 28, 28))`` pins that map to 3×3 (an adaptive average pool, the
identity at conversion), so ``--sigma learned`` can move every SafeSubsample's factor; ``--sigma fixed`` fine-tunes
α only (σ stays as converted, sizes as in the original).

    python benchmarks/finetune.py --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import njet_convert
from njet_convert.data.opencv_digits import digits_split
from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn
from njet_convert.training import FinetuneConfig, finetune
from njet_layers import NJetConv2d

__all__ = ["accuracy", "convert_network", "main"]

def convert_network(
    model: nn.Module, order: int, k: float, calibration: Tensor | None = None, learn_sigma: bool = True,
    r: float = 4.0, sigma_grid: list[float] | None = None,
) -> tuple[nn.Module, str]:
    """The real conversion path: :func:`njet_convert.convert` with its defaults (``subsample="safe"``: each max-pool
    becomes a stride-1 pool + a SafeSubsample linked to the preceding N-Jet layer's σ). With ``calibration``
    (unlabeled training images) the kernels are fitted data-aware. Returns the converted copy and a description."""
    converted, report = njet_convert.convert(model, order=order, k=k, calibration=calibration, r=r,
                                             sigma_grid=sigma_grid, learn_sigma=learn_sigma, progress=False,
                                             input_size=(1, 28, 28))
    how = f"njet_convert.convert(order={order}, k={k:g}, r={r:g}, subsample='safe', learn_sigma={learn_sigma}"
    how += f", sigma_grid={sigma_grid}" if sigma_grid else ""
    how += f", calibration={calibration.shape[0]} training images)" if calibration is not None else ")"
    return converted.eval(), f"{how}; {len(report.layers)} convs"


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--sigma-lr", type=float, default=None, help="σ learning rate (default: --lr, the paper's)")
    parser.add_argument("--r", type=float, default=4.0, help="safe-subsampling r (factor = stride·2^((σ-σ0)/r))")
    parser.add_argument("--sigma-grid", type=float, nargs="+", default=None,
                        help="σ candidates of the kernel fit (default: the fitting module's grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machines)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--distill", action="store_true", help="distil the original network instead of labels")
    parser.add_argument("--out", default=None, help="output folder (checkpoint, metrics, plots)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=int, default=0,
                        help="fit the conversion on this many (unlabeled) training images; 0: plain fit")
    parser.add_argument("--sigma", nargs="+", choices=("fixed", "learned"), default=["fixed", "learned"],
                        help="fine-tune with σ fixed (α only) and/or learned")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x_tr, y_tr, x_te, y_te = digits_split(4000, 1000, seed=0)
    x_tr, x_te = (x_tr - MNIST_MEAN) / MNIST_STD, (x_te - MNIST_MEAN) / MNIST_STD
    original = load_mnist_cnn()
    cfg = dict(lr=args.lr, sigma_lr=args.sigma_lr, batch_size=args.batch_size, seed=args.seed, warmup_epochs=0.1,
               progress=False)
    rows = [("original MNIST CNN (no fine-tuning)", accuracy(original, x_te, y_te), "-")]

    t0 = time.perf_counter()
    base_ft = copy.deepcopy(original)
    finetune(base_ft, (x_tr, y_tr), epochs=args.epochs, config=FinetuneConfig(**cfg), device="cpu")
    rows.append((f"original, fine-tuned {args.epochs} ep (same recipe)", accuracy(base_ft, x_te, y_te),
                 f"{time.perf_counter() - t0:.0f}s"))
    print(rows[0], rows[1], flush=True)

    calib = x_tr[: args.calibration] if args.calibration else None
    teacher = original if args.distill else None
    notes, hows = [], []
    for mode in args.sigma:
        t0 = time.perf_counter()
        converted, how = convert_network(original, args.order, args.k, calib, learn_sigma=mode == "learned", r=args.r,
                                         sigma_grid=args.sigma_grid)
        hows.append(how)
        label = f"N-Jet order {args.order}, σ {mode}"
        sigma0 = _sigmas(converted)
        rows.append((f"{label}, before fine-tuning", accuracy(converted, x_te, y_te),
                     f"{time.perf_counter() - t0:.1f}s"))
        out = Path(args.out) / mode if args.out else None
        t0 = time.perf_counter()
        try:
            result = finetune(converted, (x_tr, y_tr), (x_te, y_te), epochs=args.epochs,
                              config=FinetuneConfig(**cfg), teacher=teacher, out_dir=out, device="cpu")
        except RuntimeError as err:  # e.g. learned σ shrinking a feature map below the pool's window
            rows.append((f"{label}: fine-tuning FAILED", float("nan"), f"{time.perf_counter() - t0:.0f}s"))
            now = [round(float(m.sigma.detach()), 3) for m in converted.modules() if isinstance(m, NJetConv2d)]
            notes.append(f"σ {mode}: {str(err).splitlines()[0]}; σ per layer at the failure {now}")
            print(rows[-1], flush=True)
            continue
        rows.append((f"{label}, fine-tuned {args.epochs} ep{' (distilled)' if args.distill else ''}",
                     accuracy(converted, x_te, y_te), f"{time.perf_counter() - t0:.0f}s"))
        print(rows[-2], rows[-1], flush=True)
        notes.append(f"σ {mode}: {_sigma_moves(sigma0, _sigmas(converted))}; {_health(result)}; "
                     f"after vs original {rows[-1][1] - rows[0][1]:+.2f} points")
        if result.plots:
            notes.append("plots: " + ", ".join(str(p) for p in result.plots.values()))

    print("MNIST CNN (digit-recognizer-py) on opencv digits: 4000 train / 1000 test")
    print("conversion: " + " | ".join(dict.fromkeys(hows)))
    print(f"| {'model':<48} | test acc % | time |")
    print(f"|{'-' * 50}|-----------:|-----:|")
    for name, acc, secs in rows:
        print(f"| {name:<48} | {acc:10.2f} | {secs:>4} |")
    print("\n".join(notes))

def _sigmas(model: nn.Module) -> list[float]:
    return [float(m.sigma.detach()) for m in model.modules() if isinstance(m, NJetConv2d)]


def _sigma_moves(before: list[float], after: list[float]) -> str:
    """σ per layer before → after and min / median / max of |Δσ|."""
    moves = sorted(abs(a - b) for a, b in zip(before, after, strict=True))
    pairs = ", ".join(f"{b:.3f}→{a:.3f}" for b, a in zip(before, after, strict=True))
    return (f"σ per layer {pairs}; |Δσ| min {moves[0]:.3f} / median {moves[len(moves) // 2]:.3f} / "
            f"max {moves[-1]:.3f}")


def _health(result) -> str:
    """What the training metrics said about σ on a bound, 1-px maps and multiply-adds per image."""
    last = result.history[-1] if result.history else {}
    bound = ", ".join(last.get("sigma_at_bound", [])) or "none"
    tiny = ", ".join(last.get("maps_at_1px", [])) or "none"
    macs = f"{result.multiply_adds_before:,} → {result.multiply_adds_after:,}" if result.multiply_adds_before else "-"
    return f"σ on a bound: {bound}; 1-px maps: {tiny}; multiply-adds/image {macs}"


if __name__ == "__main__":
    main()
