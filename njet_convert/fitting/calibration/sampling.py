"""Where a layer's statistics are taken: a deterministic regular subset of output positions per (layer, batch), the
original conv's output there, and the input windows that produce those outputs in the converted layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_layers import NJetConv2d

from .options import CalibrationOptions

__all__ = ["Sampler", "sample_grid", "sampled_target", "target_full", "window_geometry"]


class Sampler:
    """Deterministic sample positions per (layer, batch), shared by the converted and the original pass."""

    def __init__(self, opts: CalibrationOptions) -> None:
        self.opts = opts

    def grid(self, name: str, index: int, size) -> tuple[tuple[int, int], int]:
        """Offset and step of the sampled positions of layer ``name`` on batch ``index`` (output ``size``)."""
        seed = (self.opts.seed * 1_000_003 + index * 7_919 + sum(map(ord, name)) * 104_729) % (2**31)
        return sample_grid(size, self.opts.max_positions, torch.Generator().manual_seed(seed))

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


def sampled_target(orig: nn.Module, x: Tensor, max_positions: int, gen: torch.Generator):
    """The original conv's output on ``x`` at a random regular subset of positions (only those are computed for a
    plain ``nn.Conv2d`` with numeric padding); returns ``(outputs, offsets, step)``."""
    if type(orig) is nn.Conv2d and isinstance(orig.padding, tuple) and orig.padding_mode == "zeros":
        size = [(x.shape[-2 + a] + 2 * orig.padding[a] - orig.dilation[a] * (orig.kernel_size[a] - 1) - 1)
                // orig.stride[a] + 1 for a in range(2)]
        offsets, sub = sample_grid(size, max_positions, gen)
        counts = [-(-(size[a] - offsets[a]) // sub) for a in range(2)]
        ph, pw = orig.padding
        xp = F.pad(x, (pw, pw, ph, ph))[..., offsets[0] * orig.stride[0]:, offsets[1] * orig.stride[1]:]
        y = F.conv2d(xp, orig.weight, orig.bias, (sub * orig.stride[0], sub * orig.stride[1]), 0, orig.dilation,
                     orig.groups)
        return y[..., : counts[0], : counts[1]], offsets, sub
    y = orig(x)
    offsets, sub = sample_grid(y.shape[-2:], max_positions, gen)
    return y[..., offsets[0]::sub, offsets[1]::sub], offsets, sub


def sample_grid(size, max_positions: int, gen: torch.Generator) -> tuple[tuple[int, int], int]:
    """A regular subsampling step (so at most ``max_positions`` per image) and a random offset for this batch."""
    sub = max(1, math.ceil(math.sqrt(size[0] * size[1] / max_positions)))
    offsets = tuple(int(torch.randint(0, min(sub, n), (1,), generator=gen)) for n in size)
    return offsets, sub


def window_geometry(layer: NJetConv2d, x_size, pad: int, out_size, offsets, sub: int):
    """First window corner and step per axis, at radius ``pad``, in the input zero-padded by ``pad``.

    Output index ``t`` of the target lies at ``ratio * t`` on the converted layer's own output grid (``ratio`` > 1
    when the original conv was strided and the converted one is not), which reads input rows
    ``(ratio * t) * stride + crop - radius + v`` of the input.
    """
    full = [(x_size[a] - 2 * layer.crop[a] - 1) // layer.stride[a] + 1 for a in range(2)]
    ratio = [max(1, round(full[a] / max(1, target_full(out_size[a], offsets[a], sub)))) for a in range(2)]
    starts = [ratio[a] * offsets[a] * layer.stride[a] + layer.crop[a] for a in range(2)]
    steps = [ratio[a] * sub * layer.stride[a] for a in range(2)]
    return starts, steps


def target_full(n_sampled: int, offset: int, sub: int) -> int:
    """Lower bound of the target's full size from its sampled size (only the ratio's rounding uses it)."""
    return offset + (n_sampled - 1) * sub + 1 if n_sampled > 0 else 1
