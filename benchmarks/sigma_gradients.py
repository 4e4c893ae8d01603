"""Why σ does not learn on a converted network: gradients, α's compensation and the filter's σ-sensitivity per layer.

docs/design.md, "Resolution learning from a converted start" reports these tables. For every N-Jet layer of a
converted network (the real MNIST CNN, optionally MobileNetV2 with its ImageNet weights), for the paper's jet of
order 3 and 4 and the tensor basis of the kernel's own size (``order="exact"``), all fitted by ``convert``:

1. **gradients** on the fine-tuning task (opencv digits at 2×, where σ should grow; MobileNetV2: photos at 2×,
   distilled to the original at 1×): ``|dL/dlog σ|`` against α's, per parameter (RMS of ``dL/dα``) and relative
   (RMS of ``α · dL/dα``, the gradient along a relative change of one α, comparable to ``dL/dlog σ``);
2. **what α undoes**: one step of log σ by ``--delta`` (in the descent direction) on one layer, then ``--alpha-steps``
   SGD steps of α with σ fixed, against the same α steps without the σ step; the fraction of the σ step's kernel
   change ``ΔW`` that α removed is ``1 - <W_σ - W_0, ΔW> / |ΔW|²`` (W after the α steps, with and without);
3. **the loss along whole octaves of σ, before and after the change** (the resolution search's scale-space move,
   docs/design.md): per stage (the N-Jet layers up to a subsampling point), the loss with the stage's σ ×2^o and
   its point on its own law (σ alone: the factor follows σ by ``2^(Δσ / r)``, nearly not at all) against the same
   σ with the point on the covariant law (the factor ×2^o with it); the tensor basis only;
4. **the filter along σ**: ``|dW/dlog σ| / |W|`` at σ₀ (a sampled Gaussian derivative in the continuum: ~1), ``|α| /
   |W|`` (how much of the kernel is cancellation), and the relative residual of the best α refit of the original
   kernel at σ₀·e^(±δ) on the same support: 0 means α can undo *any* σ move exactly, so the loss along σ carries
   no information about scale;
5. **σ as a scale, without training**: test digits (MobileNetV2: held-out photos, agreement with the original at
   1×) at ``--scale``× as converted, with the first stage's σ and factor multiplied with α kept, and with the
   resolution search's move (``rescale_stage``: α of an over-complete jet refitted to the dilated kernel).

    python benchmarks/sigma_gradients.py                  # MNIST CNN, ~5 min on 2 busy cores
    python benchmarks/sigma_gradients.py --mobilenet      # also MobileNetV2: tables 1, 3, 4 and 5 (+ ~7 min)
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import njet_convert
from njet_convert.data.opencv_digits import digits_split
from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn
from njet_convert.training.resolution_search import rescale_stage, resolution_stages
from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["alpha_undoes", "exact_convert", "filter_sensitivity", "gradient_table", "loss_along_octaves",
           "loss_along_sigma", "main", "sigma_as_scale"]

OCTAVES = (-1.0, -0.5, 0.0, 0.5, 1.0)


def exact_convert(original: nn.Module, **options) -> nn.Module:
    """``convert(original, order="exact")``: per conv the tensor basis of its own kernel size, fitted exactly."""
    return njet_convert.convert(original, order="exact", **options)[0]


def _layers(model: nn.Module) -> list[tuple[str, NJetConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NJetConv2d)]


def _gradients(model: nn.Module, batches: list[tuple[Tensor, Tensor]], loss_fn) -> dict[str, list[float]]:
    """Accumulate the mean gradient over ``batches``; returns each layer's per-batch ``dL/dlog σ``."""
    model.zero_grad()
    per_batch: dict[str, list[float]] = {n: [] for n, _ in _layers(model)}
    for x, y in batches:
        before = {n: float(m.log_sigma.grad) if m.log_sigma.grad is not None else 0.0 for n, m in _layers(model)}
        (loss_fn(model(x), y) / len(batches)).backward()
        for n, m in _layers(model):
            per_batch[n].append((float(m.log_sigma.grad) - before[n]) * len(batches))
    return per_batch


def gradient_table(model: nn.Module, batches: list, loss_fn) -> list[dict]:
    """Per layer: σ₀, ``|dL/dlog σ|``, RMS of ``dL/dα`` and of ``α · dL/dα``, and their ratios to the σ gradient."""
    model.train()
    per_batch = _gradients(model, batches, loss_fn)
    rows = []
    for name, layer in _layers(model):
        g_sigma = abs(float(layer.log_sigma.grad))
        spread = torch.tensor(per_batch[name]).std().item()
        g_alpha = layer.alpha.grad
        rms = float(g_alpha.pow(2).mean().sqrt())
        rel = float((g_alpha * layer.alpha.detach()).pow(2).mean().sqrt())
        rows.append({"layer": name, "sigma": float(layer.sigma.detach()), "g_sigma": g_sigma, "g_alpha": rms,
                     "g_alpha_rel": rel,
                     "n_alpha": g_alpha.numel(), "share": g_sigma**2 / (g_sigma**2 + float(g_alpha.pow(2).sum())),
                     "snr": g_sigma / max(spread, 1e-30)})
    model.zero_grad()
    return rows


def _kernel(layer: NJetConv2d, size: int) -> Tensor:
    w = layer.kernel().detach()
    pad = (size - w.shape[-1]) // 2
    return F.pad(w, [pad] * 4)


def alpha_undoes(model: nn.Module, batches: list, loss_fn, delta: float, steps: list[int], lr: float) -> list[dict]:
    """Per layer: the fraction of one σ step's kernel change that α removes after each count of ``steps`` α steps
    (see the module doc)."""
    model.train()
    _gradients(model, batches[:1], loss_fn)
    signs = {n: -math.copysign(1.0, float(m.log_sigma.grad)) for n, m in _layers(model)}
    model.zero_grad()
    base = _alpha_steps(copy.deepcopy(model), batches, loss_fn, steps, lr)
    rows = []
    for name, _ in _layers(model):
        moved = copy.deepcopy(model)
        layer = moved.get_submodule(name)
        before = layer.kernel().detach()
        with torch.no_grad():
            layer.log_sigma += signs[name] * delta
        size = max(before.shape[-1], layer.kernel_size)
        change = _kernel(layer, size) - _pad(before, size)
        after = _alpha_steps(moved, batches, loss_fn, steps, lr)
        undone = []
        for count in steps:
            diff = _pad(after[count][name], size) - _pad(base[count][name], size)
            undone.append(1.0 - float((diff * change).sum() / change.pow(2).sum()))
        rows.append({"layer": name, "sign": signs[name], "undone": undone,
                     "dW": float(change.norm() / before.norm()), "size": f"{before.shape[-1]}→{layer.kernel_size}"})
    return rows


def _pad(w: Tensor, size: int) -> Tensor:
    return F.pad(w, [(size - w.shape[-1]) // 2] * 4)


def _alpha_steps(model: nn.Module, batches: list, loss_fn, steps: list[int], lr: float) -> dict[int, dict]:
    """SGD on everything but σ; the kernels of every layer after each count of ``steps``."""
    for _, layer in _layers(model):
        layer.log_sigma.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    snapshots = {}
    for i in range(max(steps) + 1):
        if i in steps:
            snapshots[i] = {n: m.kernel().detach() for n, m in _layers(model)}
        if i == max(steps):
            break
        opt.zero_grad()
        x, y = batches[i % len(batches)]
        loss_fn(model(x), y).backward()
        opt.step()
    return snapshots


@torch.no_grad()
def loss_along_sigma(model: nn.Module, name: str, weight: Tensor, batches: list, loss_fn, delta: float) -> dict:
    """The loss with one layer's σ at σ₀·e^(±δ): α fixed, and α refit to the layer's original kernel."""
    model.eval()
    layer = model.get_submodule(name)
    keep = (layer.log_sigma.clone(), layer.alpha.clone())

    def loss() -> float:
        return sum(float(loss_fn(model(x), y)) for x, y in batches) / len(batches)

    out = {"base": loss()}
    for sign in (-1, 1):
        layer.log_sigma.copy_(keep[0] + sign * delta)
        out[f"fixed{sign:+d}"] = loss()
        layer.alpha.copy_(_refit_alpha(layer, weight))
        out[f"refit{sign:+d}"] = loss()
        layer.log_sigma.copy_(keep[0])
        layer.alpha.copy_(keep[1])
    return out


def _refit_alpha(layer: NJetConv2d, weight: Tensor) -> Tensor:
    basis = layer.basis().double()
    size = basis.shape[-1]
    target = _pad(weight.double(), size).reshape(-1, size * size)
    mat = basis.reshape(basis.shape[0], -1)
    return (target @ torch.linalg.pinv(mat)).reshape(layer.alpha.shape).to(layer.alpha.dtype)


def filter_sensitivity(layer: NJetConv2d, weight: Tensor, delta: float) -> dict:
    """``|dW/dlog σ| / |W|`` and ``|α| / |W|`` at the layer's σ, and the best refit's residual at σ·e^(±δ)."""
    w = layer.kernel()
    probe = torch.zeros_like(w, requires_grad=True)
    (g,) = torch.autograd.grad(w, layer.log_sigma, probe, create_graph=True)
    (dw,) = torch.autograd.grad(g, probe)
    norm = w.detach().norm()
    out = {"dW": float(dw.norm() / norm), "alpha": float(layer.alpha.detach().norm() / norm)}
    for sign in (-1, 1):
        out[f"refit{sign:+d}"] = _refit_residual(layer, weight, float(layer.sigma) * math.exp(sign * delta))
    return out


@torch.no_grad()
def _refit_residual(layer: NJetConv2d, weight: Tensor, sigma: float) -> float:
    probe = copy.deepcopy(layer)
    probe.log_sigma.fill_(math.log(sigma))
    probe.alpha.copy_(_refit_alpha(probe, weight))
    target = _pad(weight, probe.kernel_size)
    return float((probe.kernel() - target).norm() / target.norm())


@torch.no_grad()
def sigma_as_scale(original: nn.Module, model: nn.Module, x1: Tensor, xs: Tensor, y: Tensor, scale: float) -> dict:
    """Does σ act as a scale? Accuracy and agreement with the original at 1× of ``model`` shown ``scale``× images:
    as converted, and with the first N-Jet layer's σ and the subsampling it drives both multiplied by ``scale``
    (the covariant law's answer to a zoom: the maps after that point get the original's sizes back), α kept; and
    the resolution search's move on the first stage (``rescale_stage``: every σ of the stage and its factor, α of
    an over-complete jet refitted to the dilated kernel, docs/design.md "The jet's scale move")."""
    reference = original(x1).argmax(1)
    moved = copy.deepcopy(model).eval()
    model = copy.deepcopy(model).eval()
    out = {"as converted": _scores(model(xs), reference, y)}
    layer = _layers(model)[0][1]
    points = [m for m in model.modules() if getattr(m, "source", None) is layer]
    layer.log_sigma += math.log(scale)
    for point in points:
        point.start_at(point.anchor * scale)
    out["σ and factor ×scale"] = _scores(model(xs), reference, y)
    rescale_stage(moved, resolution_stages(moved, xs[:2])[0], math.log2(scale))
    out["the search's move (α refitted where the jet is over-complete)"] = _scores(moved(xs), reference, y)
    return out


@torch.no_grad()
def loss_along_octaves(model: nn.Module, batches: list, loss_fn, octaves=OCTAVES) -> list[dict]:
    """Per stage: the mean loss over ``batches`` with the stage's σ moved by each octave, the closing point on its
    own law (``alone``) and on the covariant law (``with factor``); the other stages stay at their start."""
    rows = []
    for stage in resolution_stages(model, batches[0][0]):
        row: dict = {"point": stage.point or "tail", "alone": [], "with factor": []}
        for key, law in (("alone", None), ("with factor", "covariant")):
            for octave in octaves:
                moved = copy.deepcopy(model).eval()
                modules = dict(moved.named_modules())
                point = modules.get(stage.point) if stage.point is not None else None
                if law is not None and isinstance(point, SafeSubsample) and point.anchor is not None:
                    point.use_law_(law)
                for name in stage.layers:
                    layer = modules[name]
                    lo, hi = (math.log(b) for b in layer.sigma_bounds)
                    layer.log_sigma.clamp_(max=hi).add_(octave * math.log(2.0)).clamp_(lo, hi)
                try:
                    row[key].append(sum(float(loss_fn(moved(x), y)) for x, y in batches) / len(batches))
                except RuntimeError:  # maps too small for a layer of fixed size
                    row[key].append(math.inf)
        rows.append(row)
    return rows


def _print_octave_table(title: str, model: nn.Module, batches: list, loss_fn) -> None:
    print(f"\n### {title}: the loss along octaves of σ per stage, σ alone / σ with the factor (tensor basis)\n")
    print("| stage (closing point) | " + " | ".join(f"σ ×2^{o:g}" for o in OCTAVES) + " |")
    print("|---|" + "---|" * len(OCTAVES))
    for r in loss_along_octaves(model, batches, loss_fn):
        print(f"| {r['point']} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(r["alone"], r["with factor"],
                                                                                 strict=True)) + " |")


def _scores(logits: Tensor, reference: Tensor, labels: Tensor) -> tuple[float, float]:
    """Accuracy and agreement with ``reference`` (%)."""
    return _agreement(logits, labels), _agreement(logits, reference)


def _digit_batches(scale: float, count: int, batch: int) -> list[tuple[Tensor, Tensor]]:
    x, y, _, _ = digits_split(4000, 1000, seed=0)
    x = _resized((x - MNIST_MEAN) / MNIST_STD, scale)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(count)]


def _mnist_models() -> tuple[nn.Module, dict[str, nn.Module]]:
    original = load_mnist_cnn()
    options = {"input_size": (1, 28, 28)}
    return original, {"jet 3": njet_convert.convert(original, order=3, **options)[0],
                      "jet 4": njet_convert.convert(original, order=4, **options)[0],
                      "tensor (exact)": exact_convert(original, **options)}


def _mobilenet_models(scale: float, count: int, batch: int) -> tuple[nn.Module, dict, list, object]:
    """MobileNetV2 (ImageNet weights) and its three conversions at 56 px; calibration photos at ``scale``× as
    inputs, the original's logits on the same photos at 56 px as targets (loss: KL divergence to them)."""
    from njet_convert.data.photos import calibration_photos
    from njet_convert.models.real_weights import load_mobilenet_v2

    original = load_mobilenet_v2().eval()
    options = {"input_size": (3, 56, 56)}
    models = {"jet 3": njet_convert.convert(original, order=3, **options)[0],
              "jet 4": njet_convert.convert(original, order=4, **options)[0],
              "tensor (exact)": exact_convert(original, **options)}
    photos = calibration_photos(count * batch, size=56)
    with torch.no_grad():
        targets = original(photos)
    inputs = _resized(photos, scale)
    batches = [(inputs[i * batch:(i + 1) * batch], targets[i * batch:(i + 1) * batch]) for i in range(count)]

    def loss_fn(logits: Tensor, reference: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), reduction="batchmean", log_target=True)

    return original, models, batches, loss_fn


def _print_scale_table(original: nn.Module, models: dict, scale: float) -> None:
    _, _, x, y = digits_split(4000, 1000, seed=0)
    x = (x - MNIST_MEAN) / MNIST_STD
    xs = _resized(x, scale)
    acc = _scores(original(x), original(x).argmax(1), y)[0]
    print(f"\n### MNIST CNN: σ as a scale — test digits at {scale:g}×, the original at 1×: {acc:.1f} %\n")
    print("| basis | σ, factor of the first stage | accuracy % | agreement with the original at 1× % |")
    print("|---|---|---|---|")
    for basis, model in models.items():
        for what, (a, agree) in sigma_as_scale(original, model, x, xs, y, scale).items():
            print(f"| {basis} | {what} | {a:.1f} | {agree:.1f} |")


def _print_mobilenet_scale_table(scale: float, count: int, size: int) -> None:
    """σ as a scale on MobileNetV2: held-out photos at ``scale``× through each conversion (made at ``size`` px), top-1
    agreement with the original on the same photos at ``size`` px (no labels: its ImageNet classes are the
    reference)."""
    from njet_convert.data.photos import heldout_photos
    from njet_convert.models.real_weights import load_mobilenet_v2

    original = load_mobilenet_v2().eval()
    options = {"input_size": (3, size, size)}
    photos = heldout_photos(count, size=size)
    reference = original(photos).argmax(1)
    itself = _agreement(original(_resized(photos, scale)), reference)
    print(f"\n### MobileNetV2: σ as a scale — {count} held-out photos at {scale:g}×, agreement with the original "
          f"at 1× ({size} px); the original itself at {scale:g}×: {itself:.1f} %\n")
    print("| basis | σ, factor of the first stage | agreement with the original at 1× % |")
    print("|---|---|---|")
    for basis, order in (("jet 3", 3), ("jet 4", 4), ("tensor (exact)", "exact")):
        model = njet_convert.convert(original, order=order, **options)[0]
        scores = sigma_as_scale(original, model, photos, _resized(photos, scale), reference, scale)
        for what, (_, agree) in scores.items():
            print(f"| {basis} | {what} | {agree:.1f} |")


def _agreement(logits: Tensor, reference: Tensor) -> float:
    """How often (%) the top-1 class of ``logits`` is ``reference``."""
    return 100.0 * float((logits.argmax(1) == reference).float().mean())


def _resized(x: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return x
    size = round(x.shape[-1] * scale)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=scale < 1)


def _print_tables(title: str, original: nn.Module, models: dict, batches: list, loss_fn, args,
                  alpha_steps: bool = True) -> None:
    print(f"\n### {title}: gradients at the converted start\n")
    print("| basis | layer | σ₀ | \\|dL/dlog σ\\| | RMS dL/dα | RMS α·dL/dα | σ / α per parameter | σ / α relative | "
          "σ's share of the descent | σ mean / per-batch std |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for basis, model in models.items():
        for r in gradient_table(model, batches, loss_fn):
            print(f"| {basis} | {r['layer']} | {r['sigma']:.3f} | {r['g_sigma']:.2e} | {r['g_alpha']:.2e} | "
                  f"{r['g_alpha_rel']:.2e} | "
                  f"{r['g_sigma'] / r['g_alpha']:.3g} | {r['g_sigma'] / r['g_alpha_rel']:.3g} | "
                  f"{r['share']:.2f} | {r['snr']:.2f} |")
    if alpha_steps:
        _print_alpha_table(title, models, batches, loss_fn, args)
    _print_filter_table(title, original, models, batches, loss_fn, args)


def _print_alpha_table(title: str, models: dict, batches: list, loss_fn, args) -> None:
    steps = args.alpha_steps
    print(f"\n### {title}: one σ step of {args.delta:g} in log σ, then α steps (SGD lr {args.lr:g}, momentum 0.9)\n")
    print("| basis | layer | direction | support | \\|ΔW\\| / \\|W\\| | "
          + " | ".join(f"undone after {n} steps" for n in steps) + " |")
    print("|---|---|---|---|---|" + "---|" * len(steps))
    for basis, model in models.items():
        for r in alpha_undoes(model, batches, loss_fn, args.delta, args.alpha_steps, args.lr):
            print(f"| {basis} | {r['layer']} | {'up' if r['sign'] > 0 else 'down'} | {r['size']} | {r['dW']:.3f} | "
                  + " | ".join(f"{u:.2f}" for u in r["undone"]) + " |")


def _print_filter_table(title: str, original: nn.Module, models: dict, batches: list, loss_fn, args) -> None:
    weights = {n: m.weight for n, m in original.named_modules() if isinstance(m, nn.Conv2d)}
    print(f"\n### {title}: the filter and the loss along σ at σ₀ (down / up: σ₀·e^(∓{args.delta:g}))\n")
    print("| basis | layer | \\|dW/dlog σ\\| / \\|W\\| | \\|α\\| / \\|W\\| | refit residual down / up | "
          "loss at σ₀ | loss α fixed down / up | loss α refit down / up |")
    print("|---|---|---|---|---|---|---|---|")
    for basis, model in models.items():
        for name, layer in _layers(model):
            s = filter_sensitivity(layer, weights[name].detach(), args.delta)
            lo = loss_along_sigma(model, name, weights[name].detach(), batches, loss_fn, args.delta)
            print(f"| {basis} | {name} | {s['dW']:.3f} | {s['alpha']:.1f} | {s['refit-1']:.1e} / {s['refit+1']:.1e} | "
                  f"{lo['base']:.3f} | {lo['fixed-1']:.3f} / {lo['fixed+1']:.3f} | "
                  f"{lo['refit-1']:.3f} / {lo['refit+1']:.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delta", type=float, default=0.1, help="σ step in log σ")
    parser.add_argument("--alpha-steps", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--lr", type=float, default=0.01, help="lr of the α steps (SGD, momentum 0.9)")
    parser.add_argument("--batches", type=int, default=8, help="batches the gradients average over")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scale", type=float, default=2.0, help="digit size the MNIST CNN is fine-tuned on")
    parser.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 (real ImageNet weights)")
    parser.add_argument("--photos", type=int, default=300, help="held-out photos of MobileNetV2's scale table")
    parser.add_argument("--photo-size", type=int, default=112, help="their size at 1× (px)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    original, models = _mnist_models()
    batches = _digit_batches(args.scale, args.batches, args.batch_size)
    with torch.no_grad():
        _print_scale_table(original, models, args.scale)
    _print_tables(f"MNIST CNN, opencv digits at {args.scale:g}×", original, models, batches, F.cross_entropy, args)
    _print_octave_table(f"MNIST CNN, opencv digits at {args.scale:g}×", models["tensor (exact)"], batches,
                        F.cross_entropy)
    if args.mobilenet:
        with torch.no_grad():
            _print_mobilenet_scale_table(args.scale, args.photos, args.photo_size)
        original, models, batches, loss_fn = _mobilenet_models(args.scale, min(args.batches, 4), 32)
        _print_tables(f"MobileNetV2, photos at {args.scale:g}× distilled to 1×", original, models, batches, loss_fn,
                      args, alpha_steps=False)
        tensor = next(m for basis, m in models.items() if basis.startswith("tensor"))
        _print_octave_table(f"MobileNetV2, photos at {args.scale:g}× distilled to 1×", tensor, batches, loss_fn)


if __name__ == "__main__":
    main()
