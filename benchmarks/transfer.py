"""Is converting worth it for my data? Real pretrained weights fine-tuned on Fashion-MNIST at 1×, 2× and 0.5×.

Per scale, side by side at the same number of steps (docs/design.md, "Resolution learning from a converted
start"):

- **original**: the pretrained network fine-tuned as it is (the MNIST CNN gets an adaptive pool before its
  flatten, so that it runs at every size; at 1× it is the identity);
- **converted, resolution learned**: every conv replaced by the tensor basis of its own kernel size, fitted exactly
  (``convert(order="exact")``); σ held for ``--sigma-delay`` epochs while α adapts, then the resolution search
  (``FinetuneConfig.resolution_search``: per stage the octave of σ and subsampling factor of lowest training loss,
  batch norm on each batch's statistics, a move taken only ``--search-confidence`` standard errors clear of
  staying), then σ learned at ``--sigma-lr`` (``--covariant``: every point on the covariant law and no search, the
  earlier variant); each converted subsampling factor held on its stride's grid within ``--factor-hold`` octaves
  (``FinetuneConfig.factor_hold``, default 0.25);
- **converted, factor not held** (``--variants free``): the same with ``factor_hold=0``, the size law alone (a σ
  that drifts moves the factor off 2 and jitters the ``nearest`` grid);
- **converted, within budget** (``--variants budget``): resolution learned as above, the search held to
  ``--budget`` (default 1.5) times the converted network's multiply-adds at the reference size
  (``FinetuneConfig.search_max_macs``): the question of a user whose deployment can afford that much;
- **converted, σ frozen**: the same network with σ fixed (so with the original's sizes);
- **converted, zoom given** (``--variants given``): the control for the search, the move it should find made by
  hand before the first step (``rescale_stage``: the first stage's σ and subsampling factor × the scale, so a 2×
  input is brought back to the reference size at once; at 0.5× σ stops at its bound), then σ learned, no search:
  what absorbing the zoom can give on this data when nothing has to find it (``--given-stage K``: the zoom given to
  stage K instead, the stages before it kept at full detail).

Columns: test accuracy, σ and subsampling factor per stage before → after, multiply-adds per image of the
exported ONNX model (counted from its Conv / Gemm / MatMul nodes), seconds per training step, and the optimiser
steps in which the σ step bound (``FinetuneConfig.sigma_max_step``) cut some σ back.

``--seeds``: one run per seed (the new head's initialisation and the batch order), and a last table of each row's
mean and range: one run of MobileNetV2 moves by up to 3 points from seed to seed, so a single run cannot settle a
1-point target. ``--heldout N``: each network is also tested on N further test images (from index 5000), a slice
no choice was made on.

Every run is seeded, the new head's initialisation included (torch seeds each process differently, and until
2026-12-07 MobileNetV2's new head was drawn from that: its rows then differed from one process to the next). The
data split is fixed before any tuning: training images are the first ``--train`` of a seed-0 permutation of
Fashion-MNIST's training set, test images the first ``--test`` of its test set; images are resized as a whole
(bilinear, antialiased when shrinking).

    python benchmarks/transfer.py --quick            # MNIST CNN, 2000 train / 500 test, 2 epochs: < 10 min
    python benchmarks/transfer.py                    # 4000 / 1000, 2 epochs
    python benchmarks/transfer.py --mobilenet        # also MobileNetV2 (ImageNet weights), reference size 56 px
    python benchmarks/transfer.py --quick --networks mobilenet_v2 --variants learned --search-batchnorm running
    python benchmarks/transfer.py --quick --mobilenet --seeds 0 1 2 --heldout 2000   # mean and range over seeds
    python benchmarks/transfer.py --quick --variants learned budget --budget 1.5
    python benchmarks/transfer.py --quick --networks mobilenet_v2 --scales 2 --variants learned given
    python benchmarks/transfer.py --quick --networks mobilenet_v2 --scales 2 --variants given --given-stage 1
    python benchmarks/transfer.py --quick --networks mobilenet_v2 --variants learned free --seeds 0 1 2 --heldout 2000
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))

from sigma_gradients import exact_convert

from njet_convert import export_onnx
from njet_convert.data.fashion_mnist import load_fashion_mnist
from njet_convert.host_memory import host_memory_summary, reuse_host_memory
from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn, load_mobilenet_v2
from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.resolution import multiply_adds
from njet_convert.training.resolution_search import rescale_stage, resolution_stages
from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["HELDOUT_FROM", "fashion_split", "heldout_split", "main", "onnx_multiply_adds", "resized", "stages"]

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def fashion_split(n_train: int, n_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed split: ``[N, 1, 28, 28]`` images in [0, 1] and labels (see the module doc)."""
    x_tr, y_tr = load_fashion_mnist("train")
    x_te, y_te = load_fashion_mnist("test")
    order = torch.randperm(x_tr.shape[0], generator=torch.Generator().manual_seed(0))[:n_train]
    return x_tr[order, None], y_tr[order], x_te[:n_test, None], y_te[:n_test]


HELDOUT_FROM = 5000  # held-out test images start here: far from the first --test, which the tables were read on


def heldout_split(n: int) -> tuple[Tensor, Tensor]:
    """Test images ``[HELDOUT_FROM, HELDOUT_FROM + n)``: a second test slice for checking a choice made on the first."""
    x_te, y_te = load_fashion_mnist("test")
    return x_te[HELDOUT_FROM:HELDOUT_FROM + n, None], y_te[HELDOUT_FROM:HELDOUT_FROM + n]


def resized(x: Tensor, size: int) -> Tensor:
    """Images resized to ``size``×``size`` (bilinear, antialiased when shrinking)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


def stages(model: nn.Module) -> list[tuple[float, float]]:
    """(σ, factor) of every subsampling point (σ of the N-Jet layer that drives it), in network order."""
    return [(float(m.sigma.detach()), m.factor) for m in model.modules() if isinstance(m, SafeSubsample)]


def onnx_multiply_adds(path: Path) -> int:
    """Multiply-adds of one image through an ONNX file exported with batch 1: Conv, Gemm and MatMul nodes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out, weight = shapes[node.output[0]], shapes[node.input[1]]
            total += math.prod(out) * math.prod(weight[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            total += math.prod(shapes[node.output[0]]) * a[-1]
    return total


class _Pinned(nn.Module):
    """The MNIST CNN with an adaptive pool to its 3×3 flatten size, so the original runs at any input size."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.conv_layers, self.pin, self.fc_layers = cnn.conv_layers, nn.AdaptiveAvgPool2d(3), cnn.fc_layers

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_layers(self.pin(self.conv_layers(x)).flatten(1))


def _mnist_cnn() -> tuple[nn.Module, nn.Module, dict]:
    original = load_mnist_cnn()
    return _Pinned(copy.deepcopy(original)), exact_convert(original, input_size=(1, 28, 28)), {"ref": 28}


def _mobilenet() -> tuple[nn.Module, nn.Module, dict]:
    original = load_mobilenet_v2()
    original.classifier[-1] = nn.Linear(original.classifier[-1].in_features, 10)
    return copy.deepcopy(original), exact_convert(original, input_size=(3, 56, 56)), {"ref": 56, "rgb": True}


def _prepare(x: Tensor, size: int, info: dict) -> Tensor:
    x = resized(x, size)
    if info.get("rgb"):
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _IMAGENET)
        return (x.expand(-1, 3, -1, -1) - mean) / std
    return (x - MNIST_MEAN) / MNIST_STD


def _covariant(model: nn.Module) -> nn.Module:
    for point in model.modules():
        if isinstance(point, SafeSubsample) and point.anchor is not None:
            point.use_law_("covariant")
    return model


def _zoom_given(model: nn.Module, scale: float, images: Tensor, stage: int = 0) -> nn.Module:
    """Stage ``stage``'s σ and factor × ``scale`` (the move that absorbs a zoom), before any training."""
    stages_ = resolution_stages(model, images)
    if not 0 <= stage < len(stages_):
        raise SystemExit(f"--given-stage {stage}: the network has stages 0–{len(stages_) - 1}")
    rescale_stage(model, stages_[stage], math.log2(scale))
    return model


def _freeze_sigma(model: nn.Module) -> nn.Module:
    for layer in model.modules():
        if isinstance(layer, NJetConv2d):
            layer.log_sigma.requires_grad_(False)
    return model


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return 100.0 * float(torch.cat([model(b).argmax(1) for b in x.split(250)]).eq(y).float().mean())


def _run(model: nn.Module, data: tuple, args, sigma_lr: float, search: bool = False,
         max_macs: float | None = None, seed: int = 0, hold: float | None = FinetuneConfig.factor_hold) -> dict:
    x_tr, y_tr, x_te, y_te, heldout = data
    before = stages(model)
    cfg = FinetuneConfig(lr=args.lr, sigma_lr=sigma_lr, batch_size=64, seed=seed, warmup_epochs=0.1, progress=False,
                         plots=False, tensorboard=False, max_steps_per_epoch=args.max_steps,
                         sigma_delay_epochs=args.sigma_delay, resolution_search=search,
                         search_batchnorm=args.search_batchnorm, search_max_macs=max_macs,
                         search_confidence=args.search_confidence,
                         factor_hold=hold)
    start = time.perf_counter()
    result = finetune(model, (x_tr, y_tr), epochs=args.epochs, config=cfg, device="cpu")
    seconds = (time.perf_counter() - start) / max(result.global_step, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model.eval(), path, x_te[:1], dynamic_batch=False, verify=False)
        macs = onnx_multiply_adds(path)
    return {"acc": _accuracy(model, x_te, y_te), "heldout": _accuracy(model, *heldout) if heldout else None,
            "before": before, "after": stages(model), "macs": macs,
            "step": seconds, "cut": result.history[-1].get("sigma_steps_bounded", 0) if result.history else 0}


_NETWORKS = {"mnist_cnn": ("MNIST CNN", _mnist_cnn), "mobilenet_v2": ("MobileNetV2", _mobilenet)}
_VARIANTS = {"original": "original", "learned": "converted, resolution learned",
             "budget": "converted, resolution learned within budget", "frozen": "converted, σ frozen",
             "given": "converted, zoom given", "free": "converted, resolution learned, factor not held"}


def _fmt(values: list[tuple[float, float]], which: int) -> str:
    return " ".join(f"{v[which]:.2f}" for v in values) or "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 0.5])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--sigma-lr", type=float, default=0.01, help="lr of log σ (SGD, momentum 0.9)")
    parser.add_argument("--sigma-delay", type=float, default=0.5, help="epochs σ is held while α adapts")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch")
    parser.add_argument("--covariant", action="store_true",
                        help="resolution learned = covariant law + σ gradients, no search (the earlier variant)")
    parser.add_argument("--search-batchnorm", choices=("running", "batch"), default="batch",
                        help="batch-norm statistics of the search (FinetuneConfig.search_batchnorm)")
    parser.add_argument("--search-confidence", type=float, default=FinetuneConfig.search_confidence,
                        help="standard errors of its per-example loss drop a search move needs (0: the mean alone)")
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help=f"also test on N other test images (from index {HELDOUT_FROM}): a choice's check")
    parser.add_argument("--budget", type=float, default=1.5,
                        help="the budget variant: multiply-adds at most this times the converted network's at 1×")
    parser.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 (ImageNet weights)")
    parser.add_argument("--networks", nargs="+", choices=tuple(_NETWORKS), default=None,
                        help="the networks to run (default: mnist_cnn, and mobilenet_v2 with --mobilenet)")
    parser.add_argument("--variants", nargs="+", choices=_VARIANTS,
                        default=["original", "learned", "budget", "frozen"],
                        help="the rows to run per scale (default: all but given and free)")
    parser.add_argument("--factor-hold", type=float, default=FinetuneConfig.factor_hold, metavar="OCT",
                        help="octaves within which each converted factor stays on its stride's grid "
                             "(FinetuneConfig.factor_hold, default 0.25; the free variant: 0)")
    parser.add_argument("--given-stage", type=int, default=0, metavar="K",
                        help="the stage the zoom is given to with --variants given (0: the first; each stage ends at "
                             "a subsampling point)")
    parser.add_argument("--quick", action="store_true", help="MNIST CNN, 2000 train / 500 test, 2 epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per seed (the new head's initialisation and the batch order); with more than "
                             "one, a last table gives each row's mean and range")
    parser.add_argument("--plain-memory", action="store_true",
                        help="leave PyTorch's and glibc's allocation settings as they are (default: reuse host "
                             "memory across steps, njet_convert.host_memory)")
    args = parser.parse_args(argv)
    if not args.plain_memory:
        reuse_host_memory()  # before the first tensor
    memory = host_memory_summary()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.train, args.test, args.epochs = 2000, 500, 2
    x_tr, y_tr, x_te, y_te = fashion_split(args.train, args.test)
    heldout = heldout_split(args.heldout) if args.heldout else None
    networks = args.networks or ["mnist_cnn"] + (["mobilenet_v2"] if args.mobilenet else [])
    learning = ("covariant law, no search" if args.covariant else
                f"search when σ is released ({args.search_batchnorm} batch-norm statistics, moves "
                f"{args.search_confidence:g} standard errors clear of staying)")
    print(f"Fashion-MNIST, {args.train} train / {args.test} test (fixed split), {args.epochs} epoch(s), SGD lr "
          f"{args.lr:g}, σ lr {args.sigma_lr:g} (held {args.sigma_delay:g} epochs), batch 64, cosine; "
          f"resolution learned: {learning}; host memory: {memory}\n")
    held = f" (held-out {args.heldout})" if heldout else ""
    print(f"| network | scale (px) | variant | test acc %{held} | σ per stage before → after | factor per stage "
          "before → after | ONNX multiply-adds/image | s/step | σ steps cut |")
    print("|---|---|---|---|---|---|---|---|---|")
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for network in networks:
        for scale in args.scales:
            for seed in args.seeds:
                for key, r in _scale_runs(network, scale, seed, args, (x_tr, y_tr, x_te, y_te), heldout):
                    runs.setdefault((network, f"{scale:g}", key), []).append(r)
    if len(args.seeds) > 1:
        _print_spread(runs, args.seeds)


def _scale_runs(network: str, scale: float, seed: int, args, split: tuple[Tensor, ...],
                heldout: tuple[Tensor, Tensor] | None) -> Iterator[tuple[str, dict]]:
    """Every variant of ``args.variants`` on one network at one scale with one seed, each row printed as it ends."""
    name, build = _NETWORKS[network]
    torch.manual_seed(seed)  # the new head's initialisation: torch seeds each process afresh
    original, converted, info = build()
    size = max(4, round(info["ref"] * scale))
    x_tr, y_tr, x_te, y_te = split
    held = (_prepare(heldout[0], size, info), heldout[1]) if heldout else None
    data = (_prepare(x_tr, size, info), y_tr, _prepare(x_te, size, info), y_te, held)
    learned = _covariant(copy.deepcopy(converted)) if args.covariant else copy.deepcopy(converted)
    reference = _prepare(x_tr[:1], info["ref"], info)
    budget = args.budget * multiply_adds(converted, reference) if "budget" in args.variants else None
    variants = {"original": (original, args.lr, False, None),
                "learned": (learned, args.sigma_lr, not args.covariant, None),
                "budget": (copy.deepcopy(converted), args.sigma_lr, True, budget),
                "frozen": (_freeze_sigma(copy.deepcopy(converted)), 0.0, False, None)}
    if "free" in args.variants:
        variants["free"] = (copy.deepcopy(learned), args.sigma_lr, not args.covariant, None)
    if "given" in args.variants:
        given = _zoom_given(copy.deepcopy(converted), scale, data[0][:2], args.given_stage)
        variants["given"] = (given, args.sigma_lr, False, None)
    for key in args.variants:
        model, sigma_lr, search, max_macs = variants[key]
        variant = _VARIANTS[key] + (f" ({args.budget:g}× the 1× multiply-adds)" if max_macs else "")
        variant += f" to stage {args.given_stage}" if key == "given" and args.given_stage else ""
        variant += f", seed {seed}" if len(args.seeds) > 1 else ""
        torch.manual_seed(seed)
        r = _run(model, data, args, sigma_lr, search, max_macs, seed, 0.0 if key == "free" else args.factor_hold)
        acc = f"{r['acc']:.1f}" + (f" ({r['heldout']:.1f})" if r["heldout"] is not None else "")
        print(f"| {name} | {scale:g}× ({size}) | {variant} | {acc} | {_fmt(r['before'], 0)} → "
              f"{_fmt(r['after'], 0)} | {_fmt(r['before'], 1)} → {_fmt(r['after'], 1)} | "
              f"{r['macs'] / 1e6:.2f} M | {r['step']:.3f} | {r['cut']} |", flush=True)
        yield key, r


def _print_spread(runs: dict[tuple[str, str, str], list[dict]], seeds: list[int]) -> None:
    """Per network, scale and variant: test accuracy and multiply-adds as mean (min–max) over the seeds."""
    print(f"\nOver seeds {' '.join(map(str, seeds))}: mean (min–max)\n")
    print("| network | scale | variant | test acc % | held-out acc % | ONNX multiply-adds/image |")
    print("|---|---|---|---|---|---|")
    for (network, scale, key), rows in runs.items():
        columns = [_spread([r["acc"] for r in rows], ".1f"),
                   _spread([r["heldout"] for r in rows], ".1f") if rows[0]["heldout"] is not None else "-",
                   _spread([r["macs"] / 1e6 for r in rows], ".2f") + " M"]
        print(f"| {_NETWORKS[network][0]} | {scale}× | {_VARIANTS[key]} | " + " | ".join(columns) + " |")


def _spread(values: list[float], fmt: str) -> str:
    """``mean (min–max)``."""
    return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"

if __name__ == "__main__":
    main()
