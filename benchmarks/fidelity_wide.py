"""Calibrating wide convs: a ResNet with 128- and 256-channel 3×3 convs, trained here on Fashion-MNIST, converted
to order-3 N-Jet layers, plain and calibrated, with every conv calibrated whatever its width.

The network is the CIFAR ResNet of the zoo with one basic block per stage at widths 32-128-256 (ResNet-18's widths
in its last two stages; ``layer3.0.conv2`` has 256 input channels, 2560 basis features at order 3, beyond the
exact fit's ``max_features``, so it is calibrated blockwise), on 1×28×28 inputs. It is trained on first use for
``--train-images`` Fashion-MNIST training images (one epoch, SGD, one torch thread: a few minutes) so that its
kernels are real, and cached as safetensors under the data folder (``$NJET_DATA`` or ``~/.cache/njet/data``);
later runs load it. Calibration images come from the training split, the evaluation images from the test split.

Rows: the plain least-squares conversion; the calibrated one at several ``block_features`` (features per block of
the wide layer at most: 10 is one input channel per block, 2560 the whole layer in one block; fewer when the samples
support fewer, see the last column; the narrower dense convs use the exact fit up to ``min(2048, block_features)``
features, so the row ``10`` fits every dense conv one input channel per block).
Columns: top-1 agreement with the original and KL(original ‖ converted) on the test images, test accuracy, the
wide layer's held-out output error, conversion time (wall, CPU) and the process's peak resident memory.

    python benchmarks/fidelity_wide.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import njet_convert
from njet_convert.data.datasets import default_data_dir
from njet_convert.data.fashion_mnist import load_fashion_mnist
from njet_convert.fidelity import agreement, logits
from njet_convert.fitting import CalibrationOptions
from njet_convert.models.cifar_resnet import BasicBlock, CifarResNet

sys.path.insert(0, str(Path(__file__).parent))
from fidelity import _peak_rss_gb, _reset_peak_rss

__all__ = ["main", "wide_resnet"]

WIDTHS = (32, 128, 256)
WIDE_LAYER = "layer3.0.conv2"


def wide_resnet() -> nn.Module:
    """The benchmark's architecture (random initialisation)."""
    return CifarResNet(BasicBlock, 1, WIDTHS, num_classes=10, in_chans=1)


def _prepare(images: Tensor) -> Tensor:
    return (images.unsqueeze(1) - 0.286) / 0.353  # Fashion-MNIST's mean and std


def trained_model(train_images: int, seed: int = 0) -> nn.Module:
    """The cached trained network, trained now (and cached) on first use."""
    from safetensors.torch import load_file, save_file

    from njet_convert.atomic import atomic_write

    path = default_data_dir() / "benchmarks" / f"fashion_wide_resnet_{train_images}_{seed}.safetensors"
    model = wide_resnet()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    torch.manual_seed(seed)
    images, labels = load_fashion_mnist("train")
    x, y = _prepare(images[:train_images]), labels[:train_images]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = -(-train_images // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(train_images)
    for step in range(steps):
        idx = order[step * 64 : (step + 1) * 64]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"trained {train_images} images in {time.perf_counter() - start:.0f} s (last loss {float(loss):.3f}); "
          f"cached at {path}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    return model.eval()


def _accuracy(out: Tensor, labels: Tensor) -> float:
    return float((out.argmax(-1) == labels).double().mean())


def _layer_error(model: nn.Module, original: nn.Module, images: Tensor) -> float:
    """Relative squared error of the wide layer's output (each network on its own inputs)."""
    outs = []
    for net in (model, original):
        got = []
        hook = net.get_submodule(WIDE_LAYER).register_forward_hook(lambda m, a, o, got=got: got.append(o))
        try:
            logits(net, images)
        finally:
            hook.remove()
        outs.append(torch.cat(got))
    return float((outs[0] - outs[1]).pow(2).sum() / outs[1].pow(2).sum())


def _note(report) -> str:
    return next((r.note or "plain fit" for r in report.layers if r.name == WIDE_LAYER), "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=12000, help="training images (first use only)")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images (training split)")
    parser.add_argument("--test", type=int, default=2000, help="evaluation images (test split)")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--block-features", type=int, nargs="+", default=[10, 128, 512, 2560])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    original = trained_model(args.train_images)
    train, _ = load_fashion_mnist("train")
    test, test_labels = load_fashion_mnist("test")
    calib = _prepare(train[-args.calibration:])  # never among the training images of a default run
    held, labels = _prepare(test[: args.test]), test_labels[: args.test]
    reference = logits(original, held)
    print(f"ResNet widths {WIDTHS} on Fashion-MNIST (28 px), order {args.order}, {args.calibration} calibration / "
          f"{args.test} test images, torch threads={torch.get_num_threads()}; original test accuracy "
          f"{100 * _accuracy(reference, labels):.1f} %")
    print(f"{'conversion':<28} {'agree':>7} {'KL':>8} {'accuracy':>8} {'wide err':>8} {'time s':>7} {'cpu s':>7} "
          f"{'peak GB':>7}  {WIDE_LAYER} fitted as")
    runs = [("plain", None, None)] + [(f"calibrated, block {b}", calib, b) for b in args.block_features]
    for label, data, block in runs:
        opts = CalibrationOptions(block_features=block or 512, max_features=min(2048, block or 2048))
        _reset_peak_rss()
        start, cpu = time.perf_counter(), time.process_time()
        converted, report = njet_convert.convert(original, order=args.order, calibration=data,
                                                 calibration_options=opts)
        elapsed, elapsed_cpu, peak = time.perf_counter() - start, time.process_time() - cpu, _peak_rss_gb()
        agree, kl = agreement(converted, reference, held)
        acc = _accuracy(logits(converted, held), labels)
        err = _layer_error(converted, original, held[:256])
        print(f"{label:<28} {100 * agree:>6.1f}% {kl:>8.4f} {100 * acc:>7.1f}% {err:>8.4f} {elapsed:>7.1f} "
              f"{elapsed_cpu:>7.1f} {peak:>7.2f}  {_note(report)}", flush=True)


if __name__ == "__main__":
    main()
