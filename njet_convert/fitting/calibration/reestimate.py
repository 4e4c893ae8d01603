"""The calibration's last stage: re-estimate batch-norm statistics on the calibration data, kept only if that
brings the converted network's outputs closer to the original's on the first ``check_images`` images."""

from __future__ import annotations

import torch
from torch import nn

from ..batchnorm import output_distance, outputs_distance, reestimate_batchnorm
from .batches import CalibrationBatches, first_outputs
from .options import CalibrationOptions

__all__ = ["maybe_reestimate"]


def maybe_reestimate(converted: nn.Module, original: nn.Module, batches: CalibrationBatches,
                     opts: CalibrationOptions, done: tuple = (None, None)) -> str:
    """Re-estimate batch-norm statistics if that brings the outputs closer to the original's on the check images;
    returns one line saying what happened.

    ``done``: the converted and the original network's outputs per calibration batch, when already computed (by the
    calibration's own passes); the check images are the first of them, so no pass is repeated for them.
    """
    check = batches.subset(opts.check_images)
    sizes = [b.shape[0] for b in check]
    reuse = [first_outputs(outs, sizes) for outs in done]
    refs = reuse[1] if reuse[1] is not None else [original(b) for b in check]
    if not all(torch.is_tensor(r) for r in refs):
        return "batch-norm re-estimation skipped: the model's outputs are not tensors"
    saved = {n: b.detach().clone() for n, b in converted.named_buffers()}
    before = (outputs_distance(reuse[0], refs) if reuse[0] is not None else output_distance(converted, check, refs))
    reestimate_batchnorm(converted, batches)
    after = output_distance(converted, check, refs)
    keep = opts.batchnorm == "always" or (before is not None and after is not None and after < before)
    if not keep:
        buffers = dict(converted.named_buffers())
        for n, value in saved.items():
            buffers[n].copy_(value)
    return (f"batch-norm re-estimation: output distance to the original {_num(before)} -> {_num(after)}, "
            f"{'kept' if keep else 'reverted'}")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
