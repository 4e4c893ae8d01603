"""Which basis index set the NJetConv2d replacing a conv gets: the paper's jet of the asked order, or for
``order="exact"`` the tensor-product basis that spans the conv's whole filter frame (docs/design.md, "Lossless
conversion").

The choice is structure, not fitting: it depends on the kernel's size and dilation only. A square, odd k×k kernel
gets the tensor basis ``(k - 1, k - 1)``: k² basis filters, the original parameter count; a dilated one keeps its
dilation as the layer's tap spacing. Even and non-square kernels are placed in a larger square frame (see
:func:`.convs.kernel_radius`); the basis then spans that whole frame, so the fit stays exact at the cost of more α
than the kernel has taps.
"""

from __future__ import annotations

from njet_layers.basis import MAX_ORDER, BasisOrder

from ..config import EXACT, LayerOrder
from .convs import ConvPlan, kernel_radius

__all__ = ["exact_basis", "layer_basis"]


def exact_basis(plan: ConvPlan, name: str) -> tuple[int, int]:
    """The tensor-product orders whose basis spans every kernel of the conv's frame; ``ValueError`` naming the
    conv when the frame is wider than the largest supported per-axis order."""
    order = 2 * kernel_radius(plan.kernel_size)  # in taps: a dilated kernel keeps its spacing (layer_basis)
    if order > MAX_ORDER:
        kh, kw = plan.kernel_size
        raise ValueError(f"order 'exact' cannot hold conv {name!r}: its {kh}x{kw} kernel needs a "
                         f"{order + 1}x{order + 1} frame, the largest exact basis is {MAX_ORDER + 1}x{MAX_ORDER + 1}; "
                         f"give it a jet order with a rule (e.g. '{name}=3,*=exact') or exclude it")
    return order, order


def layer_basis(order: LayerOrder, plan: ConvPlan, name: str) -> tuple[BasisOrder, tuple[int, int]]:
    """The index set and tap spacing of the NJetConv2d that replaces conv ``name``: ``order`` itself (the jet,
    whose σ covers a dilated kernel's footprint with adjacent taps), or for ``"exact"`` the tensor basis of
    :func:`exact_basis` with the conv's own dilation."""
    if order != EXACT:
        return order, (1, 1)
    return exact_basis(plan, name), plan.dilation
