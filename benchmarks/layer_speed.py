"""Forward+backward speed of NJetConv2d against nn.Conv2d k×k of the same shape, and training steps of converted
networks against the originals — all ratios measured side by side in one run.

Layer table: for each map size, batch, basis (the jet of order 2/3/4 against a 3×3 conv; the tensor bases
(2, 2) and (4, 4) against 3×3 and 5×5 convs) and σ, every variant is timed in interleaved rounds (one call of each
per round, median over rounds), so the ratios share the machine's load at that moment. Variants: ``dense``
(composed kernel, one conv2d), ``separable`` (njet_layers/separable.py) and ``auto`` (what the layer picks — by
the cost model, or with ``--autotune`` by timing the candidates once per shape; timed separately only when it picks
another path).

Step table: one SGD step (forward, loss, backward, step) of ResNet-32 (CIFAR, 32×32) and MobileNetV2 against the
same network converted with ``njet_convert.convert(model, order=3)`` (default ``subsample="safe"``: strided convs
run at full resolution, then σ-matched subsampling; and with ``subsample="keep"``), and with every converted conv
rebuilt as a
tensor-basis layer of its own kernel size (``order=(k-1, k-1)``; weights random: speed only).

    python benchmarks/layer_speed.py --quick             # 32², batch 32, σ 1 and 4, order 3 and (2, 2); ResNet-32
    python benchmarks/layer_speed.py                     # the full grid and both networks (~10 min, 2 threads)
    python benchmarks/layer_speed.py --device cuda       # the same on a GPU
    python benchmarks/layer_speed.py --quick --channels-last --nets   # both the conv and N-Jet on channels-last input
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import njet_convert  # noqa: F401  (before torchvision: the import guard, docs/design.md "Import cost")
from njet_layers import NJetConv2d, set_autotune
from njet_layers.basis import BasisOrder, describe_basis

__all__ = ["Case", "main", "resnet32", "tensor_basis_model", "time_interleaved"]

BASES: dict[str, BasisOrder] = {"2": 2, "3": 3, "4": 4, "2x2": (2, 2), "4x4": (4, 4)}


@dataclass(frozen=True)
class Case:
    """One layer benchmark: channels in = out, square map size, batch, basis, σ."""

    channels: int
    size: int
    batch: int
    order: BasisOrder
    sigma: float

    @property
    def conv_kernel(self) -> int:
        """Kernel size of the conv this layer stands for: 3 for the jet, the basis's own size for a tensor basis."""
        return 3 if isinstance(self.order, int) else self.order[0] + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: Mapping[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step, measured in interleaved rounds after one warm-up call each."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _fwd_bwd(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return step


def bench_layer(case: Case, device: torch.device, rounds: int, max_gmacs: float,
                memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, object]:
    """Seconds per forward+backward of the k×k conv and each N-Jet variant (``None``: skipped, too slow), all on
    one input in ``memory_format``."""
    c, k = case.channels, case.conv_kernel
    x = torch.randn(case.batch, c, case.size, case.size, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    njet = {impl: NJetConv2d(c, c, order=case.order, sigma=case.sigma, impl=impl)
            for impl in ("dense", "separable", "auto")}
    modules: dict[str, nn.Module] = {"conv": nn.Conv2d(c, c, k, padding=k // 2, bias=False), **njet}
    auto = njet["auto"].to(device).train()
    choice = auto.chosen_impl(x)  # under --autotune: timed here, once per shape
    kernel = auto.kernel_size
    skip = {"auto"} if choice in ("dense", "separable") else set()
    if 3.0 * case.batch * case.size**2 * c * c * kernel**2 / 1e9 > max_gmacs:
        skip.add("dense")
        if choice == "dense":
            skip.add("auto")
    steps = {name: _fwd_bwd(m.to(device).train(), x) for name, m in modules.items() if name not in skip}
    result: dict[str, object] = dict.fromkeys(modules)
    result.update(time_interleaved(steps, rounds, device))
    if "auto" in skip and choice in result:
        result["auto"] = result[choice]
    result.update(kernel=kernel, choice=choice)
    return result


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet32(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-32 (He et al. 2016): 3 stages × 5 basic blocks, 16-32-64 channels."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(5):
            layers.append(_BasicBlock(cin, width, 2 if stage and not block else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def tensor_basis_model(njet_model: nn.Module) -> nn.Module:
    """``njet_model`` with every NJetConv2d rebuilt as a tensor-basis layer of its kernel size (random α).

    Stands in for an ``order="exact"`` conversion in speed measurements: same shapes, strides, crops, σ.
    """
    for name, layer in list(njet_model.named_modules()):
        if isinstance(layer, NJetConv2d):
            n = layer.kernel_size - 1
            new = NJetConv2d(
                layer.in_channels, layer.out_channels, order=(n, n), sigma=float(layer.sigma.detach()), k=layer.k,
                groups=layer.groups, bias=layer.bias is not None, stride=layer.stride, crop=layer.crop,
                sigma_bounds=layer.sigma_bounds,
            )
            parent, _, attr = name.rpartition(".")
            setattr(njet_model.get_submodule(parent) if parent else njet_model, attr, new)
    return njet_model


def _networks(name: str) -> dict[str, nn.Module]:
    from njet_convert import convert

    if name == "resnet32":
        original = resnet32()
    else:
        import torchvision

        original = torchvision.models.mobilenet_v2()
    jet, _ = convert(original, order=3)
    kept, _ = convert(original, order=3, subsample="keep")
    tensor = tensor_basis_model(convert(original, order=3)[0])
    return {"original": original, "order 3": jet, "order 3, strides kept": kept, "tensor (own kernel)": tensor}


def bench_step(name: str, size: int, batch: int, device: torch.device, rounds: int) -> dict[str, float]:
    """Seconds per SGD training step of the original network and its N-Jet versions."""
    classes = 10 if name == "resnet32" else 1000
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    steps = {}
    for label, model in _networks(name).items():
        model = model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        steps[label] = step
    return time_interleaved(steps, rounds, device)


def _cases(args: argparse.Namespace) -> list[Case]:
    return [
        Case(args.channels_small if size <= 32 else args.channels_large, size, batch, BASES[basis], sigma)
        for size in args.sizes for batch in args.batches for basis in args.bases for sigma in args.sigmas
    ]


def _ratio(value: object, base: float) -> str:
    return "skip" if value is None else f"{float(value) / base:.2f}"  # type: ignore[arg-type]


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    """Print the layer table and the training-step table as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32², batch 32, σ 1 and 4, order 3 and 2x2; ResNet-32")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 112])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--channels-small", type=int, default=64, help="channels at maps of 32 px and less")
    parser.add_argument("--channels-large", type=int, default=32, help="channels at larger maps")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--max-gmacs", type=float, default=30.0, help="skip dense runs above this many GMACs")
    parser.add_argument("--nets", nargs="*", default=None, choices=["resnet32", "mobilenet_v2"],
                        help="training-step tables (default both; --quick: ResNet-32; none: --nets alone)")
    parser.add_argument("--step-batch", type=int, default=32)
    parser.add_argument("--mobilenet-size", type=int, default=112)
    parser.add_argument("--mobilenet-batch", type=int, default=8)
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="the layer table's input (the conv's and every N-Jet layer's) in channels-last format")
    parser.add_argument("--autotune", action="store_true",
                        help="auto chooses by timing the candidates once per shape (njet_layers.set_autotune)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sigmas, args.bases, args.sizes, args.batches = [1.0, 4.0], ["3", "2x2"], [32], [32]
    if args.nets is None:
        args.nets = ["resnet32"] if args.quick else ["resnet32", "mobilenet_v2"]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    set_autotune(args.autotune)
    torch.manual_seed(0)
    start = time.perf_counter()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} load={_load()}")
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    if not args.no_layers:
        print(f"\nlayer input {'channels-last' if args.channels_last else 'NCHW'}")
        print("\n| size | batch | C | basis | σ | s | k×k conv ms | dense/conv | separable/conv | auto/conv (choice) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for case in _cases(args):
            r = bench_layer(case, device, args.rounds, args.max_gmacs, layout)
            base = float(r["conv"])  # type: ignore[arg-type]
            print(
                f"| {case.size} | {case.batch} | {case.channels} | {describe_basis(case.order)} vs "
                f"{case.conv_kernel}×{case.conv_kernel} | {case.sigma:g} | {r['kernel']} | {base * 1e3:.2f} | "
                f"{_ratio(r['dense'], base)} | {_ratio(r['separable'], base)} | {_ratio(r['auto'], base)} "
                f"({r['choice']}) |",
                flush=True,
            )
    for net in args.nets:
        size, batch = (32, args.step_batch) if net == "resnet32" else (args.mobilenet_size, args.mobilenet_batch)
        step = bench_step(net, size, batch, device, args.rounds)
        print(f"\n| {net} ({size}×{size}, batch {batch}) | ms / training step | ratio |")
        print("|---|---|---|")
        for label, seconds in step.items():
            print(f"| {label} | {seconds * 1e3:.1f} | {seconds / step['original']:.2f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load={_load()}")


if __name__ == "__main__":
    main()
