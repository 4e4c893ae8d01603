"""Forward+backward speed of NJetConv2d (dense, basis-first, FFT, auto) against nn.Conv2d 3×3, side by side.

Every case times all variants interleaved (one step of each per round, median over rounds), so the ratios to the
3×3 conv share the machine's load at that moment. Also times one SGD training step of N-Jet-ResNet-32 against
ResNet-32 (CIFAR: 3 stages of 5 basic blocks, 16-32-64 channels). In the N-Jet version every 3×3 conv becomes
``NJetConv2d(order=3, sigma=1)`` with its stride kept (``stride=2`` on the two downsampling convs).

    python benchmarks/layer_speed.py --quick            # 64→64, 32×32, batch 32 (the issue's setting) + ResNet-32
    python benchmarks/layer_speed.py                    # the full grid (σ × channels × size)
    python benchmarks/layer_speed.py --channels 64 --sizes 32 --sigmas 1 2 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d
from njet_layers.dispatch import FFT_MAX_BYTES, fft_cost

__all__ = ["Case", "main", "resnet32", "time_interleaved"]

VARIANTS = ("conv3x3", "dense", "basis_first", "fft", "auto")


@dataclass(frozen=True)
class Case:
    """One layer benchmark: channels in = out, square spatial size, batch, σ."""

    channels: int
    size: int
    batch: int
    sigma: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
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


def _layer_macs(case: Case, kernel: int) -> float:
    """Forward+backward multiply-adds of a dense conv with this kernel (3 convolutions' worth)."""
    return 3.0 * case.batch * case.size**2 * case.channels**2 * kernel**2


def bench_layer(case: Case, device: torch.device, rounds: int, max_gmacs: float) -> dict[str, float | None]:
    """Seconds per forward+backward for each variant (None where skipped as too slow for the budget)."""
    c = case.channels
    x = torch.randn(case.batch, c, case.size, case.size, device=device, requires_grad=True)
    modules: dict[str, nn.Module] = {"conv3x3": nn.Conv2d(c, c, 3, padding=1, bias=False)}
    for impl in VARIANTS[1:]:
        modules[impl] = NJetConv2d(c, c, order=3, sigma=case.sigma, impl=impl)  # type: ignore[arg-type]
    kernel = modules["dense"].kernel_size  # type: ignore[union-attr]
    auto_choice = modules["auto"].resolve_impl((case.size, case.size), batch=case.batch)  # type: ignore[operator]
    skip = set()
    if _layer_macs(case, kernel) / 1e9 > max_gmacs:
        skip.add("dense")
    size = (case.size, case.size)
    if fft_cost(c, c, modules["fft"].radius, size, size)[1] > 4 * FFT_MAX_BYTES:  # type: ignore[arg-type]
        skip.add("fft")  # filter spectra too large for this machine's memory budget
    if auto_choice in skip:
        skip.add("auto")
    steps = {name: _fwd_bwd(m.to(device), x) for name, m in modules.items() if name not in skip}
    result: dict[str, float | None] = dict.fromkeys(VARIANTS)
    result.update(time_interleaved(steps, rounds, device))
    result["kernel"] = kernel
    result["auto_choice"] = auto_choice  # type: ignore[assignment]
    return result


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, conv: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 1), nn.BatchNorm2d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _njet(cin: int, cout: int, stride: int) -> nn.Module:
    return NJetConv2d(cin, cout, order=3, sigma=1.0, stride=stride)


def resnet32(njet: bool = False, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-32 (He et al. 2016): 3 stages × 5 basic blocks, 16-32-64 channels; N-Jet convs if ``njet``."""
    conv = _njet if njet else _conv3x3
    layers: list[nn.Module] = [conv(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(5):
            layers.append(_BasicBlock(cin, width, 2 if stage and not block else 1, conv))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def bench_resnet(device: torch.device, batch: int, rounds: int) -> dict[str, float]:
    """Seconds per SGD training step (forward, loss, backward, step) of ResNet-32 and N-Jet-ResNet-32."""
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {}
    for name, njet in (("resnet32", False), ("njet_resnet32", True)):
        model = resnet32(njet).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        steps[name] = step
    return time_interleaved(steps, rounds, device)


def _cases(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [Case(64, 32, 32, s) for s in args.sigmas]
    batch_for = {32: args.batch_small, 112: args.batch_large}
    return [
        Case(c, size, batch_for.get(size, args.batch_large), s)
        for size in args.sizes for c in args.channels for s in args.sigmas
    ]


def _fmt(value: float | None, base: float) -> str:
    return "skip" if value is None else f"{value / base:.2f}"


def main(argv: list[str] | None = None) -> None:
    """Print the layer table and the ResNet-32 step table as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only 64→64 channels, 32×32, batch 32")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 112])
    parser.add_argument("--batch-small", type=int, default=32, help="batch at 32 px (CIFAR-like)")
    parser.add_argument("--batch-large", type=int, default=8, help="batch at other sizes (ImageNet-like)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--max-gmacs", type=float, default=40.0, help="skip dense runs above this many GMACs")
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    if not args.no_layers:
        print("\n| C→C | size | batch | σ | s | conv3x3 ms | dense/3×3 | basis-first/3×3 | FFT/3×3 | "
              "auto/3×3 (choice) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for case in _cases(args):
            r = bench_layer(case, device, args.rounds, args.max_gmacs)
            base = r["conv3x3"]
            print(
                f"| {case.channels} | {case.size} | {case.batch} | {case.sigma:g} | {r['kernel']} | {base * 1e3:.1f} | "
                f"{_fmt(r['dense'], base)} | {_fmt(r['basis_first'], base)} | {_fmt(r['fft'], base)} | "
                f"{_fmt(r['auto'], base)} "
                f"({r['auto_choice']}) |",
                flush=True,
            )
    if not args.no_resnet:
        r = bench_resnet(device, args.resnet_batch, args.rounds)
        print(f"\n| model (batch {args.resnet_batch}, 32×32) | ms / training step | ratio |")
        print("|---|---|---|")
        for name in ("resnet32", "njet_resnet32"):
            print(f"| {name} | {r[name] * 1e3:.1f} | {r[name] / r['resnet32']:.2f} |")


if __name__ == "__main__":
    main()
