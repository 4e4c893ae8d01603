"""The ceiling of an order-N conversion: what each converted layer's approximation costs on its own.

For each conv that the conversion turns into an N-Jet layer, the network is converted with only that layer selected
(``convert(model, order=N, include=[name], calibration=...)``: every other conv keeps its original kernel, and the
layer's data-aware fit sees the original network's own activations) and its top-1 agreement with the original on the
held-out photos is measured. The loss of each row is what that layer's order-N approximation costs by itself: it ranks
the layers, and their sum is the part of the gap of the full conversion that no later layer can undo without training
(a 3×3 kernel at order 3 lacks its x²y² direction; a 5×5 kernel has 25 directions and the order-3 basis 10). The last
rows give the full calibrated conversion for comparison.

    python benchmarks/fidelity_ceiling.py --network mobilenet_v2 --calibration 64 --heldout 300 --threads 1

Times are CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import time

import torch

import njet_convert
from njet_convert.fidelity import agreement, logits

__all__ = ["main"]


def _network(name: str, args):
    """The model, its calibration and held-out images (see benchmarks/fidelity.py)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_fidelity_benchmark", Path(__file__).with_name("fidelity.py"))
    fidelity = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fidelity  # dataclasses look their module up
    spec.loader.exec_module(fidelity)
    return fidelity.NETWORKS[name](args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v2", choices=["mobilenet_v2", "efficientnet_lite0",
                                                                      "mnist_cnn"])
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    case = _network(args.network, args)
    reference = logits(case.model, case.heldout)
    cpu = time.process_time()
    full, report = njet_convert.convert(case.model, order=args.order, calibration=case.calibration)
    full_agree, full_kl = agreement(full, reference, case.heldout)
    print(f"{case.name}, order {args.order}, {case.calibration.shape[0]} calibration / {case.heldout.shape[0]} "
          f"held-out images at {case.heldout.shape[-1]} px, torch threads={torch.get_num_threads()}")
    print(f"| {'only this layer converted':<28} | kernel | sigma | size | top-1 agree |  loss |     KL |")
    print(f"|{'-' * 30}|--------|-------|------|-------------|-------|--------|")
    total = 0.0
    for record in report.layers:
        one, rep = njet_convert.convert(case.model, order=args.order, include=[record.name],
                                        calibration=case.calibration)
        agree, kl = agreement(one, reference, case.heldout)
        (mine,) = rep.layers
        total += 1 - agree
        kernel = "x".join(map(str, record.original_shape[-2:]))
        print(f"| {record.name:<28} | {kernel:>6} | {mine.sigma:.3f} | {mine.kernel_size:>4} | {100 * agree:>10.1f}% "
              f"| {100 * (1 - agree):>5.1f} | {kl:.4f} |", flush=True)
    print(f"| {'sum of the losses':<28} | {'':>6} | {'':>5} | {'':>4} | {100 * (1 - total):>10.1f}% "
          f"| {100 * total:>5.1f} |        |")
    print(f"| {'all layers converted':<28} | {'':>6} | {'':>5} | {'':>4} | {100 * full_agree:>10.1f}% "
          f"| {100 * (1 - full_agree):>5.1f} | {full_kl:.4f} |")
    print(f"CPU {time.process_time() - cpu:.0f} s")


if __name__ == "__main__":
    main()
