"""Export-time inference forms of an :class:`~njet_layers.NJetConv2d`: a dense ``s×s`` conv or a separable chain.

Every basis filter is separable, ``g_j(y) · g_i(x)``, so an N-Jet layer can run basis-first with plain modules:

1. ``Conv2d(C, C·J, (s, 1), groups=C)``: each input channel filtered along y by the ``J = n_y + 1`` 1-D
   filters of the layer's basis (``NJetConv2d.axis_filters``: the Gaussian derivatives ``g_0..g_N`` of the jet, or
   the per-axis mixed rows of a tensor basis);
2. along x, basis map ``m = (i, j)`` reads the y-map of order ``j`` with the x filter ``i``. A tensor basis pairs
   every y-map with the same ``I = n_x + 1`` x filters, so this is ``Conv2d(C·J, C·M, (1, s), groups=C·J)``, one
   group per y-map; the jet pairs y-map ``j`` with ``N - j + 1`` of them, so it is ``Conv2d(C·J, C·M, (1, s),
   groups=C)`` with zero weights on the other ``J - 1`` inputs of each group;
3. ``Conv2d(C·M, C_out, 1, groups=g)``: the 1×1 combine with α (and the bias).

Cost per output pixel in multiply-adds (:func:`layer_costs`): dense ``s² · C/g · C_out``; separable
``stride_x · C·J·s + C·M·s·(1 or J) + C/g · M · C_out`` (tensor basis or jet) — flat in σ where the dense cost
grows with ``s²``. The grouped and
depthwise stages run well below a dense conv's arithmetic throughput, so ``"auto"`` picks the separable form only
when it saves a factor ``separable_gain`` (default 2) in multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from njet_layers import NJetConv2d, basis_orders
from njet_layers.basis import axis_orders, is_tensor_basis

__all__ = ["DEFAULT_SEPARABLE_GAIN", "ChainCosts", "LayerCosts", "auto_form", "chain_costs", "dense_form",
           "layer_costs", "separable_form"]

DEFAULT_SEPARABLE_GAIN = 2.0  # "auto" takes the separable chain only where it saves this factor in multiply-adds


@dataclass(frozen=True)
class LayerCosts:
    """Multiply-adds per output pixel of the two inference forms of one N-Jet layer."""

    dense: int
    separable: int


@dataclass(frozen=True)
class ChainCosts:
    """Multiply-adds of the separable chain's three stages, per pixel each one outputs (the ``s×1`` row pass
    outputs every input column: its stride is along rows only)."""

    rows: int
    cols: int
    combine: int


def chain_costs(layer: NJetConv2d) -> ChainCosts:
    """:class:`ChainCosts` of ``layer``'s separable form (module docstring)."""
    s, c_in, c_out, groups = layer.kernel_size, layer.in_channels, layer.out_channels, layer.groups
    j, m = axis_orders(layer.order)[1] + 1, len(basis_orders(layer.order))
    per_map = 1 if is_tensor_basis(layer.order) else j  # inputs each x filter reads (module docstring, stage 2)
    return ChainCosts(rows=c_in * j * s, cols=c_in * m * per_map * s, combine=(c_in // groups) * m * c_out)


def layer_costs(layer: NJetConv2d) -> LayerCosts:
    """Multiply-add counts per output pixel for the dense and the separable form of ``layer`` at its current σ."""
    s, c_in, c_out, groups = layer.kernel_size, layer.in_channels, layer.out_channels, layer.groups
    dense = s * s * (c_in // groups) * c_out
    if layer.dilation != (1, 1):  # the separable chain assumes adjacent taps
        return LayerCosts(dense=dense, separable=2**62)
    chain = chain_costs(layer)
    return LayerCosts(dense=dense, separable=layer.stride[1] * chain.rows + chain.cols + chain.combine)


def auto_form(costs: LayerCosts, gain: float = DEFAULT_SEPARABLE_GAIN) -> str:
    """The form ``freeze(form="auto")`` gives a layer of these costs: ``"separable"`` where it needs ``gain`` times
    fewer multiply-adds than ``"dense"``."""
    return "separable" if costs.separable * gain <= costs.dense else "dense"


@torch.no_grad()
def dense_form(layer: NJetConv2d) -> nn.Conv2d:
    """The composed ``s×s`` kernel as a plain ``nn.Conv2d`` (``NJetConv2d.to_conv2d``), in eval mode."""
    return layer.to_conv2d().eval()


@torch.no_grad()
def separable_form(layer: NJetConv2d) -> nn.Sequential:
    """The basis-first chain ``(s×1 grouped) → (1×s grouped) → (1×1 combine)`` of plain ``nn.Conv2d`` modules.

    Equals ``layer(x)`` up to float rounding (same padding ``R - crop``, same stride, same bias).
    """
    radius, order = layer.radius, layer.order
    if layer.dilation != (1, 1):
        raise ValueError(f"dilation {layer.dilation} has no separable form (use form='dense')")
    pad = [radius - c for c in layer.crop]
    if min(pad) < 0:
        raise ValueError(f"crop={layer.crop} exceeds the filter radius {radius}: not expressible as padding")
    alpha = layer.alpha.detach()
    g_x, g_y = (g.detach().to(alpha.dtype) for g in layer.axis_filters())  # [n_x + 1, s], [J, s]
    pairs = basis_orders(order)
    c_in, c_out, groups = layer.in_channels, layer.out_channels, layer.groups
    n_j, n_m, size = g_y.shape[0], len(pairs), 2 * radius + 1
    factory = {"device": alpha.device, "dtype": alpha.dtype}
    along_y = nn.Conv2d(c_in, c_in * n_j, (size, 1), stride=(layer.stride[0], 1), padding=(pad[0], 0),
                        groups=c_in, bias=False, **factory)
    along_y.weight.copy_(g_y.repeat(c_in, 1).view(c_in * n_j, 1, size, 1))
    along_x = _along_x(layer, g_x, c_in, n_j, pad[1], factory)
    combine = nn.Conv2d(c_in * n_m, c_out, 1, groups=groups, bias=layer.bias is not None, **factory)
    combine.weight.copy_(alpha.reshape(c_out, (c_in // groups) * n_m, 1, 1))
    if layer.bias is not None:
        combine.bias.copy_(layer.bias.detach())
    return nn.Sequential(along_y, along_x, combine).eval()


def _along_x(layer: NJetConv2d, g_x: torch.Tensor, c_in: int, n_j: int, pad: int, factory: dict) -> nn.Conv2d:
    """Stage 2 of the chain (module docstring): output channel ``c·M + m`` is basis map ``m = (i, j)`` of input
    channel ``c``, the y-map ``c·J + j`` filtered along x by ``g_x[i]``."""
    pairs, size = basis_orders(layer.order), g_x.shape[1]
    n_m, stride = len(pairs), (1, layer.stride[1])
    if is_tensor_basis(layer.order):  # m = j·I + i: each y-map feeds the I consecutive maps of its own group
        conv = nn.Conv2d(c_in * n_j, c_in * n_m, (1, size), stride=stride, padding=(0, pad), groups=c_in * n_j,
                         bias=False, **factory)
        conv.weight.copy_(g_x.repeat(c_in * n_j, 1).view(c_in * n_m, 1, 1, size))
        return conv
    conv = nn.Conv2d(c_in * n_j, c_in * n_m, (1, size), stride=stride, padding=(0, pad), groups=c_in, bias=False,
                     **factory)
    block = torch.zeros(n_m, n_j, size, **factory)
    for m, (i, j) in enumerate(pairs):
        block[m, j] = g_x[i]
    conv.weight.copy_(block.repeat(c_in, 1, 1).view(c_in * n_m, n_j, 1, size))
    return conv
