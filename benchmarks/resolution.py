"""Resolution learning with its compute: does σ follow the input scale, and does the cost follow σ?

The paper's claim (Exp. 1.2A): trained on MNIST at 1×, 1.5× and 2× size, the learned σ scale with the input
(σ_2× / σ_1.5× ≈ 2 / 1.5), and with safe subsampling the feature maps — and so the compute — follow σ. Here, on the
5000 opencv-doc digits (4000 train / 1000 test, the split of ``benchmarks/finetune.py``) resized to 0.5×, 1× and
2× of their 28 px layout:

- the real MNIST CNN of ``digit-recognizer-py``, converted (order 3, safe subsampling with the shifted law
  ``factor = stride · 2^((σ − σ0)/r)``, r = 4) and fine-tuned with σ learned at the paper's default σ lr (= lr);
- the same CNN converted losslessly (``order="exact"``); before the first step (same task, same head) the resolution
  search (``FinetuneConfig.resolution_search``: per stage the octave of σ and subsampling factor of lowest training
  loss), then σ learned;
- ``--models order3-search``: the order-3 conversion (the first row's) with the search (the second row's);
- ``--models frozen``: the control, the CNN converted losslessly with σ frozen, so the original's filters and
  feature-map sizes (its flattened map pinned like the others') fine-tuned the same way: what the task gives
  without any resolution learning;
- the zoo's N-Jet toy net (``njet_mnist_toy2``: 2 N-Jet layers, σ initialised to 1, the paper's unshifted law),
  trained from scratch the same way.

Per scale: σ per N-Jet layer, the size of each subsampled map, multiply-adds per image
(``torch.utils.flop_counter``; N-Jet layers counted as the dense s×s conv they compose) before and after
training, and test accuracy. The ratios σ_2× / σ_1× (paper: ≈ 2) are printed under the table.

    python benchmarks/resolution.py                 # ~5-10 min on one CPU thread
    python benchmarks/resolution.py --quick         # 1 epoch each, 1000 training images
    python benchmarks/resolution.py --models search # only the exact + search rows
    python benchmarks/resolution.py --models order3 --scales 1 --sigma-delay 0.5   # σ released after half an epoch
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import njet_convert
from njet_convert.data.opencv_digits import digits_split
from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn
from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.plots import feature_sizes
from njet_convert.training.resolution import multiply_adds
from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["main", "measure", "scaled"]


def scaled(x: Tensor, scale: float) -> Tensor:
    """Images resized by ``scale`` (bilinear, antialiased when shrinking)."""
    if scale == 1.0:
        return x
    size = max(4, round(x.shape[-1] * scale))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=scale < 1)


@torch.no_grad()
def measure(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """σ per N-Jet layer, output size of each SafeSubsample, multiply-adds per image (N-Jet layers counted as their
    dense kernels, the count the published tables of this benchmark use) and test accuracy."""
    model.eval()
    sizes = feature_sizes(model, x[:1])
    subs = [n for n, m in model.named_modules() if isinstance(m, SafeSubsample)]
    acc = 100.0 * float((model(x).argmax(1) == y).float().mean())
    return {"sigma": [float(m.sigma.detach()) for m in model.modules() if isinstance(m, NJetConv2d)],
            "maps": [sizes[n][0] for n in subs if n in sizes], "macs": multiply_adds(model, x[:1], form="dense"),
            "acc": acc}


def _run(name: str, model: nn.Module, data: tuple, epochs: int, cfg: FinetuneConfig) -> dict:
    x_tr, y_tr, x_te, y_te = data
    before = measure(model, x_te, y_te)
    start = time.perf_counter()
    result = finetune(model, (x_tr, y_tr), epochs=epochs, config=cfg, device="cpu")
    after = measure(model, x_te, y_te)
    last = result.history[-1] if result.history else {}
    notes = [f"σ on a bound: {', '.join(last['sigma_at_bound'])}"] if last.get("sigma_at_bound") else []
    notes += [f"1-px maps: {', '.join(last['maps_at_1px'])}"] if last.get("maps_at_1px") else []
    return {"name": name, "before": before, "after": after, "seconds": time.perf_counter() - start, "notes": notes}


def _toy() -> nn.Module:
    import timm  # after njet_convert: its torchvision guard must run first

    return timm.create_model("njet_mnist_toy2")


def _fmt(values: list, digits: int = 2) -> str:
    return " ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def _table(rows: list[dict]) -> None:
    print("| model | scale (px) | σ per layer before → after | map sizes before → after | multiply-adds/image "
          "before → after | test acc % before → after | time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"| {r['name']} | {r['scale']:g}× ({r['px']}) | {_fmt(b['sigma'])} → {_fmt(a['sigma'])} | "
              f"{_fmt(b['maps'])} → {_fmt(a['maps'])} | {b['macs'] / 1e6:.2f} M → {a['macs'] / 1e6:.2f} M | "
              f"{b['acc']:.1f} → {a['acc']:.1f} | {r['seconds']:.0f} s |")


def _ratios(rows: list[dict]) -> None:
    for name in dict.fromkeys(r["name"] for r in rows):
        by_scale = {r["scale"]: r["after"] for r in rows if r["name"] == name}
        for lo, hi in ((1.0, 2.0), (0.5, 1.0)):
            if lo in by_scale and hi in by_scale:
                ratio = [s2 / s1 for s1, s2 in zip(by_scale[lo]["sigma"], by_scale[hi]["sigma"], strict=True)]
                macs = by_scale[hi]["macs"] / by_scale[lo]["macs"]
                print(f"{name}: σ_{hi:g}× / σ_{lo:g}× per layer {_fmt(ratio)} (paper: ≈ {hi / lo:g}); "
                      f"multiply-adds ratio {macs:.2f} (input pixels ×{(hi / lo) ** 2:g})")
        for r in (r for r in rows if r["name"] == name and r["notes"]):
            print(f"{name} at {r['scale']:g}×: {'; '.join(r['notes'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the converted CNN")
    parser.add_argument("--toy-epochs", type=int, default=3, help="training epochs of the toy net from scratch")
    parser.add_argument("--lr", type=float, default=0.01, help="lr of α and σ (the paper: σ lr = lr)")
    parser.add_argument("--train", type=int, default=4000, help="training images")
    parser.add_argument("--quick", action="store_true", help="1 epoch each on 1000 training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma-delay", type=float, default=0.0, metavar="EPOCHS",
                        help="epochs σ is held (and the search waits): FinetuneConfig.sigma_delay_epochs")
    parser.add_argument("--models", nargs="+", choices=("order3", "search", "order3-search", "frozen", "toy"),
                        default=["order3", "search", "toy"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.toy_epochs, args.train = 1, 1, 1000
    x_tr, y_tr, x_te, y_te = digits_split(4000, 1000, seed=0)
    x_tr, x_te = (x_tr[: args.train] - MNIST_MEAN) / MNIST_STD, (x_te - MNIST_MEAN) / MNIST_STD
    y_tr = y_tr[: args.train]
    cfg = FinetuneConfig(lr=args.lr, batch_size=64, seed=args.seed, warmup_epochs=0.1, progress=False, plots=False,
                         tensorboard=False, sigma_delay_epochs=args.sigma_delay)
    original = load_mnist_cnn()
    rows = []
    for scale in args.scales:
        data = (scaled(x_tr, scale), y_tr, scaled(x_te, scale), y_te)
        px = data[0].shape[-1]
        if "order3" in args.models:
            converted, _ = njet_convert.convert(original, input_size=(1, 28, 28))
            rows.append({**_run("converted MNIST CNN", converted, data, args.epochs, cfg), "scale": scale, "px": px})
        searched = dataclasses.replace(cfg, resolution_search=True)  # same digits, same head: search at once
        if "search" in args.models:
            exact, _ = njet_convert.convert(original, order="exact", input_size=(1, 28, 28))
            rows.append({**_run("exact + resolution search", exact, data, args.epochs, searched), "scale": scale,
                         "px": px})
        if "order3-search" in args.models:
            converted, _ = njet_convert.convert(original, input_size=(1, 28, 28))
            rows.append({**_run("order 3 + resolution search", converted, data, args.epochs, searched),
                         "scale": scale, "px": px})
        if "frozen" in args.models:
            frozen, _ = njet_convert.convert(original, order="exact", learn_sigma=False, input_size=(1, 28, 28))
            rows.append({**_run("exact, σ frozen (control)", frozen, data, args.epochs, cfg), "scale": scale,
                         "px": px})
        if "toy" in args.models:
            torch.manual_seed(args.seed)
            rows.append({**_run("N-Jet toy net (scratch)", _toy(), data, args.toy_epochs, cfg), "scale": scale,
                         "px": px})
        print(f"scale {scale:g} done", flush=True)
    print(f"opencv digits, {args.train} train / 1000 test, resized; SGD lr {args.lr:g} (σ lr = lr), cosine, batch 64; "
          f"converted CNN fine-tuned {args.epochs} ep, toy net trained {args.toy_epochs} ep from scratch")
    _table(rows)
    _ratios(rows)


if __name__ == "__main__":
    main()
