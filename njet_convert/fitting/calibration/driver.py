"""The calibration pass: refit the converted layers one by one, in network order, on unlabeled images.

The calibration data is streamed through the already-refitted converted network up to each layer (:mod:`..pipeline`
runs the network once over all images, pausing every pass at each layer); the layer's real inputs are handed to
the refit strategy that applies to it (:mod:`.strategy`: :mod:`.exact`, :mod:`.blockwise`, :mod:`.pointwise`).
Statistics are accumulated one batch at a time at a subset of positions (at most ``max_positions`` per image,
:mod:`.sampling`). Finally batch-norm statistics are re-estimated if that helps (:mod:`.reestimate`).

The inputs of the current layer for all calibration images are held at once (about 1.2 GB for MobileNetV2's first
depthwise layer with 256 images at 224 px); the original network's passes, paused at the 1×1 convs, hold only
those convs' inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..kernel_fit import KernelFit
from ..pipeline import LayerPipeline
from .activation import ActivationAwareRefit
from .batches import CalibrationBatches, batches_for
from .blockwise import BlockwiseRefit
from .exact import ExactRefit
from .graph import check_pairs, device_of, linked_subsamplers, network_order, pointwise_layers
from .options import CalibrationOptions
from .pointwise import PointwiseRefit
from .progress import Progress
from .reestimate import maybe_reestimate
from .sampling import Sampler
from .strategy import LayerRefit, LayerResult, RefitJob

__all__ = ["STRATEGIES", "calibrate", "calibrate_layers"]

# the first that applies
STRATEGIES: tuple[LayerRefit, ...] = (PointwiseRefit(), ActivationAwareRefit(), ExactRefit(), BlockwiseRefit())


def calibrate(
    converted: nn.Module,
    original: nn.Module,
    pairs: Mapping[str, str],
    data: Tensor | Iterable,
    *,
    order: int | None = None,
    k: float | None = None,
    progress: bool = True,
    options: CalibrationOptions | None = None,
) -> dict[str, KernelFit]:
    """Refit every ``NJetConv2d`` named in ``pairs`` (converted name -> original conv name) in place; see module doc.

    ``data``: a tensor ``[N, C, H, W]`` or an iterable of batches (tensors or ``(tensor, label)``); a one-shot
    iterator is read once into memory. ``order`` and ``k`` are each layer's own (the arguments are accepted for
    compatibility and not used). Returns the new fits by converted name (:func:`calibrate_layers` gives every
    layer's :class:`~.strategy.LayerResult`, the 1×1 refits and skips included).
    """
    results = calibrate_layers(converted, original, pairs, data, progress=progress, options=options)
    return {r.name: r.fit for r in results if r.fit is not None}


def calibrate_layers(converted: nn.Module, original: nn.Module, pairs: Mapping[str, str], data: Tensor | Iterable,
                     *, progress: bool = True, options: CalibrationOptions | None = None) -> list[LayerResult]:
    """:func:`calibrate`, returning one :class:`~.strategy.LayerResult` per refitted (or skipped) layer."""
    opts = options or CalibrationOptions()
    modules, orig_modules = dict(converted.named_modules()), dict(original.named_modules())
    check_pairs(pairs, modules, orig_modules)
    batches = CalibrationBatches(data, opts.batch_size, device_of(converted))
    modes = {m: m.training for m in list(converted.modules()) + list(original.modules())}
    converted.eval()
    original.eval()
    try:
        with torch.no_grad():
            return _run(converted, original, pairs, batches, opts, Progress(progress))
    finally:
        for m, mode in modes.items():
            m.train(mode)


def _run(converted: nn.Module, original: nn.Module, pairs: Mapping[str, str], batches: CalibrationBatches,
         opts: CalibrationOptions, progress: Progress) -> list[LayerResult]:
    modules, orig_modules = dict(converted.named_modules()), dict(original.named_modules())
    first = batches.first()
    pointwise = pointwise_layers(converted, original, pairs) if opts.refit_pointwise else []
    names, norms = network_order(converted, list(pairs) + pointwise, first)
    to_orig = {n: pairs.get(n, n) for n in names}
    if pointwise and network_order(original, [to_orig[n] for n in names], first)[0] != [to_orig[n] for n in names]:
        pointwise = []  # the original runs its layers in another order: no lockstep, skip this stage
        names = [n for n in names if n in pairs]
    linked = linked_subsamplers(converted)
    sampler = Sampler(opts)
    conv_tf = sampler.converted_transform(modules, set(pointwise))
    orig_tf = sampler.original_transform(orig_modules, {to_orig[n]: n for n in names})
    batch_list = list(batches)
    keep = batches_for(batch_list, opts.check_images if opts.batchnorm != "never" else 0)
    results: list[LayerResult] = []
    orig_pipe = None
    images = sum(b.shape[0] for b in batch_list)
    with contextlib.ExitStack() as stack:
        conv_pipe = stack.enter_context(LayerPipeline(converted, names, batch_list, transform=conv_tf,
                                                      keep_outputs=keep))
        orig_iter = None
        if pointwise:  # the original pauses only at the 1×1 convs: less held at once
            orig_pipe = stack.enter_context(LayerPipeline(
                original, [to_orig[n] for n in names if n in pointwise], batch_list, transform=orig_tf,
                keep_outputs=keep))
            orig_iter = iter(orig_pipe)
        # the original network never changes: its next targets are fetched at once, so that its paused passes
        # release the inputs they hold while the converted network is refitted
        ahead = next(orig_iter, None) if orig_iter is not None else None
        bar = progress.bar(len(names), f"calibrating ({images} images)", "layer")
        for name, inputs in conv_pipe:
            targets = None
            if ahead is not None and name in pointwise:
                targets, ahead = ahead[1], next(orig_iter, None)
            job = RefitJob(name=name, layer=modules[name], original=orig_modules.get(to_orig[name]) if name in pairs
                           else None, norm=norms.get(name), inputs=inputs, options=opts, targets=targets,
                           subsamplers=linked.get(id(modules[name]), []))
            strategy = next((s for s in STRATEGIES if s.applies(job)), None)
            result = (strategy.refit(job) if strategy is not None else
                      LayerResult(name, "none", skipped="no refit strategy applies (kept the plain fit)"))
            results.append(result)
            progress.step(bar, name, result)
        progress.close(bar)
    if opts.batchnorm != "never":
        # the pipelines' passes ended in the refitted and the original network's outputs: reused here
        done = (conv_pipe.outputs(), orig_pipe.outputs() if orig_pipe is not None else None)
        progress.note(maybe_reestimate(converted, original, batches, opts, done))
    return results
