"""Data-aware refit of converted N-Jet layers on unlabeled calibration images, layer by layer in network order.

For each converted layer (in the order the network runs them) the calibration data is streamed through the
already-refitted converted network up to that layer; its real inputs ``x'`` are projected on the N-Jet basis at
candidate σ (``sigmas_per_size`` at the kernel's own filter size and as many one pixel larger) and regressed onto
the original conv applied to the same inputs, ``y = conv(x')`` (see :mod:`.covariance`): the covariance-weighted
kernel fit ``alpha = (Bᵀ C B)⁻¹ Bᵀ C w`` with C the covariance of the layer's real input patches, solved without
forming C. Plain 1×1 convs present in both networks are refitted too (``refit_pointwise``): their inputs in the
converted network onto their outputs in the original one, which absorbs the error the layers before them left.

The σ (and so the filter size) with the lowest data-weighted output error wins; the layer keeps its previous fit
when that one is better on the data. A ``SafeSubsample`` linked to the layer keeps its factor (its ``r`` follows the
new σ), so feature-map sizes stay the original's while the layers after it are calibrated. The mean output shift
is absorbed into the layer's bias or into the running mean of the batch norm that directly follows it (through a
SafeSubsample). Statistics are accumulated one batch at a time, at a subset of positions (at most
``max_positions`` per image); the input patches there are extracted once for all σ candidates (:mod:`.patches`).
Finally batch-norm statistics are re-estimated on the calibration data only if that brings the converted network's
outputs closer to the original's (judged on the first ``check_images`` calibration images, whose outputs before the
re-estimation come from the calibration's own passes).

The network runs once over the calibration data (:mod:`.pipeline`), so the inputs of the current layer for all
calibration images are held at once (about 1.2 GB for MobileNetV2's first depthwise layer with 256 images at
224 px); the original network's passes, paused at the 1×1 convs, hold only those convs' inputs.
Layers with more than 2048 basis features per conv group (dense 3×3 convs with > 204 input channels at
order 3) keep their plain least-squares fit (reported with ``error = nan``): the exact moment matrix would be too
large and no structured approximation is implemented yet.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample, filter_radius, gaussian_basis

from .batchnorm import output_distance, outputs_distance, reestimate_batchnorm
from .covariance import MomentStats, solve_moments
from .kernel_fit import KernelFit
from .patches import PatchMoments, basis_responses, embed_basis, group_targets, sampled_patches
from .pipeline import LayerPipeline
from .placement import kernel_radius

__all__ = ["CalibrationOptions", "calibrate"]

_MAX_FEATURES = 2048  # per conv group; beyond that the exact moment matrix gets too large (not supported yet)
_MAX_PATCH_ELEMENTS = 2**24  # patches extracted at once (64 MB in float32): larger batches go in image chunks
_MAX_PATCH_MOMENTS = 2**25  # entries of the shared patch moment matrices (256 MB in float64)
_MIN_GAIN = 1e-3  # a new fit replaces a layer's previous one only if its data-weighted error is lower by this share


@dataclass
class CalibrationOptions:
    """Knobs of :func:`calibrate` (defaults are the measured best on MobileNetV2, see benchmarks/fidelity.py).

    ``sigmas_per_size``: σ candidates per filter size (6 vs 1: 65 % -> 79 % top-1 agreement, order 3, 64 images
    at 160 px), for layers with at most ``wide_search_features`` basis features per group (1 per size above).
    ``min_samples_per_feature``: fewer samples per basis feature keep the layer's previous fit.
    ``pointwise_prior``: the 1×1 refit's ridge shrinks towards the pretrained weights instead of zero (with
    ``pointwise_min_samples=0`` it lowered agreement, 70 % -> 67 %: off by default).
    """

    ridge: float = 1e-6
    batch_size: int = 32
    max_positions: int = 512
    bias_correction: bool = True
    batchnorm: str = "auto"  # "auto": re-estimate only if it helps; "always"; "never"
    check_images: int = 64
    seed: int = 0
    refit_pointwise: bool = True
    pointwise_ridge: float = 1e-3
    pointwise_min_samples: int = 64
    pointwise_prior: bool = False
    sigmas_per_size: int = 6
    min_samples_per_feature: int = 16
    wide_search_features: int = 256

    def __post_init__(self) -> None:
        if self.batchnorm not in ("auto", "always", "never"):
            raise ValueError(f"batchnorm must be 'auto', 'always' or 'never', got {self.batchnorm!r}")



def calibrate(
    converted: nn.Module,
    original: nn.Module,
    pairs: Mapping[str, str],
    data: Tensor | Iterable,
    *,
    order: int,
    k: float,
    progress: bool = True,
    options: CalibrationOptions | None = None,
) -> dict[str, KernelFit]:
    """Refit every ``NJetConv2d`` named in ``pairs`` (converted name -> original conv name) in place; see module doc.

    ``data``: a tensor ``[N, C, H, W]`` or an iterable of batches (tensors or ``(tensor, label)``); a one-shot
    iterator is read once into memory. Returns the new fits by converted name.
    """
    opts = options or CalibrationOptions()
    modules, orig_modules = dict(converted.named_modules()), dict(original.named_modules())
    _check_pairs(pairs, modules, orig_modules)
    device = _device_of(converted)
    batches = _Batches(data, opts.batch_size, device)
    modes = {m: m.training for m in list(converted.modules()) + list(original.modules())}
    converted.eval()
    original.eval()
    fits: dict[str, KernelFit] = {}
    try:
        with torch.no_grad():
            first = batches.first()
            pointwise = _pointwise_layers(converted, original, pairs) if opts.refit_pointwise else []
            names, norms = _network_order(converted, list(pairs) + pointwise, first)
            to_orig = {n: pairs.get(n, n) for n in names}
            if pointwise and _network_order(original, [to_orig[n] for n in names], first)[0] != [to_orig[n]
                                                                                                  for n in names]:
                pointwise = []  # the original runs its layers in another order: no lockstep, skip this stage
                names = [n for n in names if n in pairs]
            linked: dict[int, list[SafeSubsample]] = {}
            for m in converted.modules():
                if isinstance(m, SafeSubsample) and m.source is not None:
                    linked.setdefault(id(m.source), []).append(m)
            sampler = _Sampler(opts)
            conv_tf = sampler.converted_transform(modules, set(pointwise))
            orig_tf = sampler.original_transform(orig_modules, {to_orig[n]: n for n in names})
            batch_list = list(batches)
            orig_pipe, keep = None, _batches_for(batch_list, opts.check_images if opts.batchnorm != "never" else 0)
            with contextlib.ExitStack() as stack:
                conv_pipe = stack.enter_context(LayerPipeline(converted, names, batch_list, transform=conv_tf,
                                                              keep_outputs=keep))
                orig_iter = None
                if pointwise:
                    # the original pauses only at the 1×1 convs: less held at once
                    orig_pipe = stack.enter_context(LayerPipeline(
                        original, [to_orig[n] for n in names if n in pointwise], batch_list, transform=orig_tf,
                        keep_outputs=keep))
                    orig_iter = iter(orig_pipe)
                # the original network never changes: its next targets are fetched at once, so that its paused
                # passes release the inputs they hold while the converted network is refitted
                ahead = next(orig_iter, None) if orig_iter is not None else None
                for step, (name, inputs) in enumerate(conv_pipe, 1):
                    targets = None
                    if ahead is not None and name in pointwise:
                        targets, ahead = ahead[1], next(orig_iter, None)
                    if name in pairs:
                        fits[name] = _refit_layer(modules[name], orig_modules[pairs[name]], norms.get(name), inputs,
                                                  order, k, opts, linked.get(id(modules[name]), []))
                        message = f"sigma={fits[name].sigma:.3g} output error={fits[name].error:.4f}"
                    else:
                        error = _refit_pointwise(modules[name], norms.get(name), inputs, targets, opts)
                        message = f"pointwise output error={error:.4f}"
                    if progress:
                        print(f"[calibrate {step}/{len(names)}] {name}: {message}", flush=True)
            if opts.batchnorm != "never":
                # the pipelines' passes ended in the refitted and the original network's outputs: reused here
                done = (conv_pipe.outputs(), orig_pipe.outputs() if orig_pipe is not None else None)
                _maybe_reestimate(converted, original, batches, opts, progress, done)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return fits


def _refit_layer(layer: NJetConv2d, orig: nn.Module, norm, inputs: list[Tensor], order, k, opts,
                 subsamplers: list[SafeSubsample]) -> KernelFit:
    """Data-aware refit of one layer; the SafeSubsample modules linked to its σ keep their factor."""
    if not inputs or layer.alpha.shape[1] * layer.alpha.shape[2] > _MAX_FEATURES:
        return KernelFit(alpha=layer.alpha.detach().clone(), sigma=float(layer.sigma), error=float("nan"))
    cap = None if layer.max_kernel_size is None else (layer.max_kernel_size - 1) // 2
    features = layer.alpha.shape[1] * layer.alpha.shape[2]
    # the moment matrices grow as features² per candidate: the wide σ search only where they are small (depthwise)
    per_size = opts.sigmas_per_size if features <= opts.wide_search_features else 1
    candidates = _candidate_sigmas(layer, orig, k, per_size)
    can_shift = opts.bias_correction and (layer.bias is not None or norm is not None)
    gen = torch.Generator().manual_seed(opts.seed)
    bases = {s: gaussian_basis(order, torch.tensor(s, dtype=torch.float64), k,
                               radius=filter_radius(s, k, cap)).to(torch.float32).to(layer.alpha.device)
             for s in candidates}
    pad = max((b.shape[-1] - 1) // 2 for b in bases.values())
    bases = {s: embed_basis(b, pad) for s, b in bases.items()}  # all [M, S, S] at the largest candidate size
    stats = _candidate_stats(layer, orig, inputs, bases, pad, opts, gen)
    current_sigma = round(float(layer.sigma.detach()), 6)
    # the incumbent is the layer's previous fit, judged on the same data; a new fit must beat it clearly, and with
    # too few samples per basis feature a new fit would fit noise (order 4's exact fit fell from 100 % to 50 %
    # agreement on 4 images), so the previous fit stays
    prev = _current_alpha(layer)
    res_prev, delta_prev = _residual_of(stats[current_sigma], prev, centred=can_shift)
    yy = stats[current_sigma].yy
    best = (float(res_prev.sum() / yy.sum().clamp_min(1e-30)), current_sigma, prev, delta_prev)
    if stats[current_sigma].count >= opts.min_samples_per_feature * features:
        for s in candidates:
            alpha, delta, residual, yy = solve_moments(stats[s], centred=can_shift, ridge=opts.ridge)
            err = float(residual.sum() / yy.sum().clamp_min(1e-30))
            if err < best[0] * (1 - _MIN_GAIN):
                best = (err, s, alpha, delta)
    err, sigma, alpha, delta = best
    factors = [(ss, ss.factor) for ss in subsamplers]
    _apply(layer, norm, alpha, delta if can_shift else None, sigma)
    for ss, factor in factors:  # keep the feature-map sizes: the factor must not follow the new σ here
        if factor > 1:
            ss.start_at(factor)
    return KernelFit(alpha=layer.alpha.detach().clone(), sigma=float(sigma), error=math.sqrt(err))


def _refit_pointwise(conv: nn.Conv2d, norm, inputs: list[Tensor], targets: list[Tensor], opts) -> float:
    """Least-squares refit of a 1×1 conv: its inputs in the converted net onto its outputs in the original net."""
    g = conv.groups
    if not inputs or len(inputs) != len(targets) or any(x.shape[-2:] != y.shape[-2:] or x.shape[0] != y.shape[0]
                                                         for x, y in zip(inputs, targets, strict=True)):
        return float("nan")  # not reached, or its grid differs from the original's (e.g. a stride moved away)
    stats = MomentStats()
    for x, y in zip(inputs, targets, strict=True):
        stats.update(*_group(x, y, g))
    if stats.count < opts.pointwise_min_samples * conv.weight.shape[1]:
        return float("nan")  # too few samples per input channel: a refit would fit noise
    can_shift = opts.bias_correction and (conv.bias is not None or norm is not None)
    o, i = conv.weight.shape[:2]
    current = conv.weight.detach().double().reshape(g, o // g, i).transpose(1, 2)
    alpha, delta, residual, yy = solve_moments(stats, centred=can_shift, ridge=opts.pointwise_ridge,
                                               prior=current if opts.pointwise_prior else None)
    res_now, delta_now = _residual_of(stats, current, centred=can_shift)
    if float(res_now.sum()) <= float(residual.sum()):
        alpha, delta, residual = current, delta_now, res_now
    conv.weight.copy_(alpha.transpose(1, 2).reshape(o, i, 1, 1).to(conv.weight.dtype))
    if can_shift:
        shift = delta.reshape(o).to(conv.weight.dtype)
        if conv.bias is not None:
            conv.bias.copy_(shift)
        else:
            norm.running_mean.sub_(shift.to(norm.running_mean.dtype))
    return math.sqrt(float(residual.sum() / yy.sum().clamp_min(1e-30)))


def _pointwise_layers(converted: nn.Module, original: nn.Module, pairs: Mapping[str, str]) -> list[str]:
    """Plain 1×1 convs (no padding, no dilation) present under the same name in both networks, not converted."""
    orig_modules = dict(original.named_modules())
    out = []
    for name, m in converted.named_modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding == (0, 0) and name not in pairs
                and type(orig_modules.get(name)) is nn.Conv2d):
            out.append(name)
    return out


class _Sampler:
    """Deterministic sample positions per (layer, batch), shared by the converted and the original pass."""

    def __init__(self, opts: CalibrationOptions) -> None:
        self.opts = opts

    def grid(self, name: str, index: int, size) -> tuple[tuple[int, int], int]:
        seed = (self.opts.seed * 1_000_003 + index * 7_919 + sum(map(ord, name)) * 104_729) % (2**31)
        return _sample_grid(size, self.opts.max_positions, torch.Generator().manual_seed(seed))

    def converted_transform(self, modules: dict, pointwise: set[str]):
        """The sampled input positions of each 1×1 conv (other layers' inputs pass unchanged)."""
        def transform(name: str, index: int, x: Tensor) -> Tensor:
            return self._sample_input(modules[name], name, index, x) if name in pointwise else x
        return transform

    def original_transform(self, modules: dict, to_converted: dict[str, str]):
        """The original 1×1 conv applied to its input at the sampled positions only (a 1×1 conv commutes with
        taking positions): the paused pass holds the conv's input, never its (often 6× larger) output."""
        def transform(name: str, index: int, x: Tensor) -> Tensor:
            conv = modules[name]
            xs = self._sample_input(conv, to_converted[name], index, x)
            return F.conv2d(xs, conv.weight, conv.bias, 1, 0, 1, conv.groups)
        return transform

    def _sample_input(self, conv: nn.Conv2d, name: str, index: int, x: Tensor) -> Tensor:
        st = conv.stride
        size = [(x.shape[-2 + a] - 1) // st[a] + 1 for a in range(2)]
        (oh, ow), sub = self.grid(name, index, size)
        return x[..., oh * st[0] :: sub * st[0], ow * st[1] :: sub * st[1]][..., : -(-(size[0] - oh) // sub),
                                                                               : -(-(size[1] - ow) // sub)]


def _sampled_target(orig: nn.Module, x: Tensor, max_positions: int, gen: torch.Generator):
    """The original conv's output on ``x`` at a random regular subset of positions (only those are computed for a
    plain ``nn.Conv2d`` with numeric padding)."""
    if type(orig) is nn.Conv2d and isinstance(orig.padding, tuple) and orig.padding_mode == "zeros":
        size = [(x.shape[-2 + a] + 2 * orig.padding[a] - orig.dilation[a] * (orig.kernel_size[a] - 1) - 1)
                // orig.stride[a] + 1 for a in range(2)]
        offsets, sub = _sample_grid(size, max_positions, gen)
        counts = [-(-(size[a] - offsets[a]) // sub) for a in range(2)]
        ph, pw = orig.padding
        xp = F.pad(x, (pw, pw, ph, ph))[..., offsets[0] * orig.stride[0]:, offsets[1] * orig.stride[1]:]
        y = F.conv2d(xp, orig.weight, orig.bias, (sub * orig.stride[0], sub * orig.stride[1]), 0, orig.dilation,
                     orig.groups)
        return y[..., : counts[0], : counts[1]], offsets, sub
    y = orig(x)
    offsets, sub = _sample_grid(y.shape[-2:], max_positions, gen)
    return y[..., offsets[0]::sub, offsets[1]::sub], offsets, sub


def _candidate_sigmas(layer: NJetConv2d, orig: nn.Module, k: float, per_size: int) -> list[float]:
    """The layer's current σ plus ``per_size`` σ evenly spread over the scales whose filter is the kernel's own size,
    and as many one pixel larger, inside the layer's bounds.

    Which kernel directions an order-3 basis misses on a small support changes with σ (on 3×3 it always lacks one
    of the four even-even directions, but which one depends on σ), so the data decides among several σ per size.
    """
    size = tuple(getattr(orig, "kernel_size", (3, 3)))
    dilation = tuple(getattr(orig, "dilation", (1, 1)))
    need = max(1, kernel_radius(size, dilation))
    lo, hi = layer.sigma_bounds
    out = {round(float(layer.sigma.detach()), 6)}
    for radius in (need, need + 1):
        low, high = max((radius - 1) / k, lo), min(radius / k, hi)
        for j in range(1, per_size + 1):
            sigma = round(low + (high - low) * j / per_size, 6)
            if lo <= sigma <= hi and filter_radius(sigma, k) == radius:
                out.add(sigma)
    return sorted(out)


def _sample_grid(size, max_positions: int, gen: torch.Generator) -> tuple[tuple[int, int], int]:
    """A regular subsampling step (so at most ``max_positions`` per image) and a random offset for this batch."""
    sub = max(1, math.ceil(math.sqrt(size[0] * size[1] / max_positions)))
    offsets = tuple(int(torch.randint(0, min(sub, n), (1,), generator=gen)) for n in size)
    return offsets, sub


def _candidate_stats(layer: NJetConv2d, orig: nn.Module, inputs: list[Tensor], bases: dict[float, Tensor], pad: int,
                     opts: CalibrationOptions, gen: torch.Generator) -> dict[float, MomentStats]:
    """Moment statistics of every σ candidate's basis responses (``bases``: all zero-padded to ``2 * pad + 1``).

    The sampled input patches are extracted once per batch at the largest radius (:mod:`.patches`); each candidate's
    statistics are then projections of the patches' own moments when those are cheaper to accumulate (depthwise
    layers: one ``s² × s²`` matrix per channel for all candidates), else each candidate's responses are one matrix
    product.
    """
    size = 2 * pad + 1
    m, q, c = next(iter(bases.values())).shape[0], size * size, layer.alpha.shape[1]
    # multiply-adds per sample: the patch moments once vs every candidate's responses and their moments
    shared = ((c * q) ** 2 <= len(bases) * (c * q * m + (c * m) ** 2)
              and layer.groups * (c * q) ** 2 <= _MAX_PATCH_MOMENTS)
    moments, stats = PatchMoments(), {s: MomentStats() for s in bases}
    for x in inputs:
        ys, offsets, sub = _sampled_target(orig, x, opts.max_positions, gen)
        starts, steps = _window_geometry(layer, x.shape[-2:], pad, ys.shape[-2:], offsets, sub)
        xp = F.pad(x, (pad, pad, pad, pad))
        yg = group_targets(ys, layer.groups)
        per_image = ys.shape[-2] * ys.shape[-1]
        chunk = max(1, _MAX_PATCH_ELEMENTS // max(1, per_image * x.shape[1] * q))  # images per patch extraction
        for i in range(0, x.shape[0], chunk):
            patches = sampled_patches(xp[i : i + chunk], size, starts, steps, ys.shape[-2:], layer.groups)
            y = yg[..., i * per_image : (i + chunk) * per_image]
            if shared:
                moments.update(patches, y)
                continue
            for s, basis in bases.items():
                stats[s].update(basis_responses(patches, basis), y)
    return {s: moments.project(b) for s, b in bases.items()} if shared else stats


def _window_geometry(layer: NJetConv2d, x_size, pad: int, out_size, offsets, sub: int):
    """First window corner and step per axis, at radius ``pad``, in the input zero-padded by ``pad``.

    Output index ``t`` of the target lies at ``ratio * t`` on the converted layer's own output grid (``ratio`` > 1
    when the original conv was strided and the converted one is not), which reads input rows
    ``(ratio * t) * stride + crop - radius + v`` of the input.
    """
    full = [(x_size[a] - 2 * layer.crop[a] - 1) // layer.stride[a] + 1 for a in range(2)]
    ratio = [max(1, round(full[a] / max(1, _target_full(out_size[a], offsets[a], sub)))) for a in range(2)]
    starts = [ratio[a] * offsets[a] * layer.stride[a] + layer.crop[a] for a in range(2)]
    steps = [ratio[a] * sub * layer.stride[a] for a in range(2)]
    return starts, steps


def _target_full(n_sampled: int, offset: int, sub: int) -> int:
    # lower bound of the target's full size from its sampled size; only the ratio's rounding uses it
    return offset + (n_sampled - 1) * sub + 1 if n_sampled > 0 else 1


def _group(z: Tensor, y: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """``z [B, C*M, h, w]``, ``y [B, O, h, w]`` -> ``[g, F, L]``, ``[g, O/g, L]`` with samples on the last axis."""
    cm = z.shape[1]
    if cm // groups > _MAX_FEATURES:
        raise ValueError(f"a conv group with {cm // groups} basis features is too large for the exact data-aware fit")
    return group_targets(z, groups), group_targets(y, groups)


def _current_alpha(layer: NJetConv2d) -> Tensor:
    """The layer's α as ``[g, (I/g) * M, O/g]`` (the regression layout)."""
    o, i, m = layer.alpha.shape
    g = layer.groups
    return layer.alpha.detach().double().reshape(g, o // g, i * m).transpose(1, 2)


def _residual_of(stats: MomentStats, alpha: Tensor, *, centred: bool) -> tuple[Tensor, Tensor]:
    n = stats.count
    zz, zy, yy = stats.zz, stats.zy, stats.yy
    delta = torch.zeros_like(yy)
    if centred:
        mz, my = stats.z / n, stats.y / n
        zz = zz - n * mz[:, :, None] * mz[:, None, :]
        zy = zy - n * mz[:, :, None] * my[:, None, :]
        yy = yy - n * my * my
        delta = my - (alpha * mz[:, :, None]).sum(1)
    residual = yy - 2 * (alpha * zy).sum(1) + (alpha * (zz @ alpha)).sum(1)
    return residual.clamp_min(0.0), delta


def _apply(layer: NJetConv2d, norm: nn.Module | None, alpha: Tensor, delta: Tensor | None, sigma: float) -> None:
    o, i, m = layer.alpha.shape
    new = alpha.transpose(1, 2).reshape(o, i, m)
    layer.alpha.copy_(new.to(layer.alpha.dtype))
    layer.log_sigma.copy_(torch.tensor(math.log(sigma), dtype=layer.log_sigma.dtype))
    if delta is None:
        return
    shift = delta.reshape(o).to(layer.alpha.dtype)
    if layer.bias is not None:
        layer.bias.copy_(shift)
    elif norm is not None:
        norm.running_mean.sub_(shift.to(norm.running_mean.dtype))


def _maybe_reestimate(converted, original, batches, opts, progress, done=(None, None)) -> None:
    """Re-estimate batch-norm statistics if that brings the outputs closer to the original's on the check images.

    ``done``: the converted and the original network's outputs per calibration batch, when already computed (by the
    calibration's own passes); the check images are the first of them, so no pass is repeated for them.
    """
    check = batches.subset(opts.check_images)
    sizes = [b.shape[0] for b in check]
    reuse = [_first_outputs(outs, sizes) for outs in done]
    refs = reuse[1] if reuse[1] is not None else [original(b) for b in check]
    if not all(torch.is_tensor(r) for r in refs):
        return
    saved = {n: b.detach().clone() for n, b in converted.named_buffers()}
    before = (outputs_distance(reuse[0], refs) if reuse[0] is not None else output_distance(converted, check, refs))
    reestimate_batchnorm(converted, batches)
    after = output_distance(converted, check, refs)
    keep = opts.batchnorm == "always" or (before is not None and after is not None and after < before)
    if not keep:
        buffers = dict(converted.named_buffers())
        for n, value in saved.items():
            buffers[n].copy_(value)
    if progress:
        print(f"[calibrate] batch-norm re-estimation: distance {before} -> {after}, "
              f"{'kept' if keep else 'reverted'}", flush=True)


def _batches_for(batches: list[Tensor], images: int) -> int:
    """How many leading batches hold the first ``images`` images."""
    count = 0
    for i, b in enumerate(batches):
        if count >= images:
            return i
        count += b.shape[0]
    return len(batches)


def _first_outputs(outputs: list | None, sizes: list[int]) -> list | None:
    """The outputs of the first ``sizes`` images batch by batch (as :meth:`_Batches.subset` cuts them), or None."""
    if outputs is None or len(outputs) < len(sizes):
        return None
    out = []
    for o, n in zip(outputs, sizes, strict=False):
        if not torch.is_tensor(o) or o.shape[0] < n:
            return None
        out.append(o[:n])
    return out


def _network_order(model: nn.Module, pairs, batch: Tensor):
    """Names (of ``pairs``) in execution order, and the BatchNorm that directly consumes each one's output (possibly
    through a SafeSubsample)."""
    modules = dict(model.named_modules())
    order: list[str] = []
    outputs: dict[int, tuple[str, Tensor]] = {}
    norms: dict[str, nn.Module] = {}
    hooks = []
    for name in pairs:
        def post(mod, args, out, name=name):
            if name not in order:
                order.append(name)
            outputs[id(out)] = (name, out)  # the tensor is kept alive so that its id cannot be reused
        hooks.append(modules[name].register_forward_hook(post))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            def pre(mod, args):
                source, _ = outputs.get(id(args[0]), (None, None))
                if source is not None and source not in norms:
                    norms[source] = mod
            hooks.append(m.register_forward_pre_hook(pre))
        elif isinstance(m, SafeSubsample):
            def passes(mod, args, out):  # subsampling commutes with a per-channel shift: look through it
                if id(args[0]) in outputs:
                    outputs[id(out)] = (outputs[id(args[0])][0], out)
            hooks.append(m.register_forward_hook(passes))
    try:
        model(batch[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in pairs if n not in order]
    return order + missing, norms



class _Batches:
    """Re-iterable calibration batches on ``device`` from a tensor or an iterable of batches."""

    def __init__(self, data, batch_size: int, device: torch.device) -> None:
        self.device = device
        if torch.is_tensor(data):
            if data.dim() != 4 or not data.is_floating_point():
                raise ValueError(f"calibration data must be a float tensor [N, C, H, W], got {tuple(data.shape)} "
                                 f"{data.dtype}")
            self.source = [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
        elif isinstance(data, Iterable):
            self.source = data if iter(data) is not data else list(data)
        else:
            raise ValueError(f"calibration data must be a tensor or an iterable of batches, got {type(data).__name__}")

    def __iter__(self):
        for item in self.source:
            batch = item[0] if isinstance(item, (tuple, list)) else item
            if not torch.is_tensor(batch) or batch.dim() != 4 or not batch.is_floating_point():
                raise ValueError("each calibration batch must be a float tensor [B, C, H, W] or (tensor, label)")
            yield batch.to(self.device)

    def first(self) -> Tensor:
        for batch in self:
            return batch
        raise ValueError("calibration data is empty")

    def subset(self, n: int) -> list[Tensor]:
        out, count = [], 0
        for batch in self:
            if count >= n:
                break
            out.append(batch[: n - count])
            count += out[-1].shape[0]
        return out


def _check_pairs(pairs: Mapping[str, str], modules: dict, orig_modules: dict) -> None:
    for name, orig_name in pairs.items():
        if not isinstance(modules.get(name), NJetConv2d):
            raise ValueError(f"pairs: {name!r} is not an NJetConv2d of the converted model")
        if orig_name not in orig_modules:
            raise ValueError(f"pairs: {orig_name!r} is not a module of the original model")


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
