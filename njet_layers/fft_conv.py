"""FFT N-Jet convolution: the composed kernel applied in the frequency domain, with a cost that hardly grows with σ.

Why: the dense path costs ``s² · C_in · C_out`` per pixel (``s = 2⌈kσ⌉ + 1``, 19×19 at σ = 4), and the basis-first
path pays for ``M`` intermediate maps per input channel. In the frequency domain a correlation with any ``s×s``
filter is one complex multiply-add per frequency bin and channel pair, so the cost per pixel is ``~4 · C_in ·
C_out · P_h · (P_w/2 + 1) / (H · W)`` plus the FFTs, where ``P ≥ H + 2R`` is the padded transform size (σ only
enters through the padding).

How: the input is padded on the top/left by ``R`` and transformed at size ``P`` (:func:`torch.fft.rfft2` zero-pads
the rest), so the circular correlation never wraps and its first ``H×W`` values are the 'same' output; the
per-bin products over channels are one batched complex matrix product. Forward and backward are written out
(:class:`_FFTCorrelate`): PyTorch's own ``rfft2`` backward builds the full spectrum with many small copies, which
made autograd through it several times slower than the transforms themselves. Gradients:

* input: ``irfft2(G · W)`` (a convolution with the filter), cropped to the input's place;
* filter: ``irfft2(Σ_n X · conj(G))`` (the correlation of input and output gradient), first ``s×s`` taps.

Stride and crop select output centres after the 'same' correlation (:func:`~njet_layers.basis_first.output_centers`);
groups become a batch axis of the complex product.

Limits (measured on the project's 2-core CPU): the per-bin products are ~10³ small complex matrix products, an
order of magnitude less efficient per multiply-add than oneDNN's direct convolution, so FFT wins only where the
dense filter is large (9×9 and up) and the channel count moderate; memory holds the filters' spectra (``C_out ·
C_in/g`` complex maps of ``P_h × (P_w/2 + 1)``, 4.4 GB at 256→256 channels and 112 px), which is why the auto
choice (:mod:`njet_layers.dispatch`) caps it.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

__all__ = ["fft_conv2d", "fft_size"]


def fft_size(n: int) -> int:
    """Smallest integer ``≥ n`` whose only prime factors are 2, 3 and 5 (fast transform sizes)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n!r}")
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _bin_major(spec: Tensor, groups: int) -> Tensor:
    """``[A, G·B, P, Q]`` spectrum → ``[P·Q·G, A, B]`` contiguous (one small matrix per frequency bin and group)."""
    a, gb, p, q = spec.shape
    return spec.view(a, groups, gb // groups, p, q).permute(3, 4, 1, 0, 2).reshape(p * q * groups, a, gb // groups)


def _channel_major(prod: Tensor, p: int, q: int, groups: int) -> Tensor:
    """Inverse of :func:`_bin_major`: ``[P·Q·G, A, B]`` → ``[A, G·B, P, Q]``."""
    _, a, b = prod.shape
    return prod.view(p, q, groups, a, b).permute(3, 2, 4, 0, 1).reshape(a, groups * b, p, q)


def _cmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched complex matrix product ``a @ b`` on contiguous, conjugation-resolved operands.

    PyTorch's complex ``bmm`` copies every matrix of a non-contiguous or lazily conjugated operand one by one (10³
    frequency bins here); resolving them once first is several times faster. (Real block-matrix forms of the
    product measured slower still on the project's CPU: building the blocks costs more than the product.)
    """
    return torch.bmm(a.resolve_conj().contiguous(), b.resolve_conj().contiguous())


class _FFTCorrelate(torch.autograd.Function):
    """'Same'-size correlation of ``x [N, C, H, W]`` with ``w [O, C/g, s, s]`` (zero padding), via FFTs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, groups: int) -> Tensor:
        h, wd = x.shape[-2:]
        radius = (w.shape[-1] - 1) // 2
        size = (fft_size(h + 2 * radius), fft_size(wd + 2 * radius))
        xs = torch.fft.rfft2(torch.nn.functional.pad(x, (radius, 0, radius, 0)), s=size)  # [N, C, P, Q]
        ws = torch.fft.rfft2(w, s=size)  # [O, C/g, P, Q]
        p, q = xs.shape[-2:]
        xb = _bin_major(xs, groups)  # [PQG, N, C/g]
        wb = _bin_major(ws.transpose(0, 1), groups).conj()  # [PQG, C/g, O/g]
        y = torch.fft.irfft2(_channel_major(_cmm(xb, wb), p, q, groups), s=size)
        ctx.save_for_backward(xb, wb)
        ctx.meta = (groups, size, (h, wd), radius)
        return y[..., :h, :wd]  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        xb, wb = ctx.saved_tensors
        groups, size, (h, wd), radius = ctx.meta
        gs = torch.fft.rfft2(grad, s=size)  # [N, O, P, Q]
        p, q = gs.shape[-2:]
        gb = _bin_major(gs, groups)  # [PQG, N, O/g]
        g_x = g_w = None
        if ctx.needs_input_grad[0]:
            gx = torch.fft.irfft2(_channel_major(_cmm(gb, wb.transpose(1, 2).conj()), p, q, groups), s=size)
            g_x = gx[..., radius : radius + h, radius : radius + wd]
        if ctx.needs_input_grad[1]:
            gw = _channel_major(_cmm(xb.transpose(1, 2), gb.conj()), p, q, groups)  # [C/g, O, P, Q]
            s = 2 * radius + 1
            g_w = torch.fft.irfft2(gw, s=size)[..., :s, :s].transpose(0, 1)
        return g_x, g_w, None


def fft_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    centers: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` with an odd ``s×s`` filter and 'same' zero padding (``R = (s-1)/2``), computed with FFTs.

    Args:
        x: ``[N, C, H, W]``.
        weight: ``[O, C/groups, s, s]`` in ``F.conv2d`` (correlation) layout, ``s`` odd.
        bias: optional ``[O]``.
        centers: output centres per axis (from :func:`~njet_layers.basis_first.output_centers`, for stride and
            crop); each must be an arithmetic progression. ``None``: every pixel ('same' output).
        groups: as in ``F.conv2d``.
    """
    if weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ValueError(f"weight must be square with an odd size, got {tuple(weight.shape)}")
    out: Tensor = _FFTCorrelate.apply(x, weight.to(x.dtype), groups)  # type: ignore[no-untyped-call]
    if centers is not None:
        out = out[..., _as_slice(centers[0]), :][..., _as_slice(centers[1])]
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out


def _as_slice(idx: tuple[int, ...]) -> slice:
    if not idx:
        return slice(0, 0)
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if any(b - a != step for a, b in itertools.pairwise(idx)):
        raise ValueError(f"output centres must be evenly spaced, got {idx}")
    return slice(idx[0], idx[-1] + 1, step)
