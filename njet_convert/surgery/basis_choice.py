"""Which basis index set the NJetConv2d replacing a conv gets: the paper's jet of the asked order, or for
``order="exact"`` the tensor-product basis that spans the conv's whole filter frame (docs/design.md, "Lossless
conversion").

The choice is structure, not fitting: it depends on the kernel's size and dilation only. A square, odd,
undilated k×k kernel gets the tensor basis ``(k - 1, k - 1)``: k² basis filters, the original parameter count.
Even, non-square and dilated kernels are placed in a larger square frame (see :func:`.convs.kernel_radius`); the
basis then spans that whole frame, so the fit stays exact at the cost of more α than the kernel has taps.
"""

from __future__ import annotations

from njet_layers.basis import MAX_ORDER, BasisOrder

from ..config import EXACT, LayerOrder
from .convs import ConvPlan

__all__ = ["exact_basis", "layer_basis"]


def exact_basis(plan: ConvPlan, name: str) -> tuple[int, int]:
    """The tensor-product orders whose basis spans every kernel of the conv's frame; ``ValueError`` naming the
    conv when the frame is wider than the largest supported per-axis order."""
    order = 2 * plan.frame_radius
    if order > MAX_ORDER:
        kh, kw = plan.kernel_size
        dilation = f" with dilation {plan.dilation}" if max(plan.dilation) > 1 else ""
        raise ValueError(f"order 'exact' cannot hold conv {name!r}: its {kh}x{kw} kernel{dilation} needs a "
                         f"{order + 1}x{order + 1} frame, the largest exact basis is {MAX_ORDER + 1}x{MAX_ORDER + 1}; "
                         f"give it a jet order with a rule (e.g. '{name}=3,*=exact') or exclude it")
    return order, order


def layer_basis(order: LayerOrder, plan: ConvPlan, name: str) -> BasisOrder:
    """The index set of the NJetConv2d that replaces conv ``name``: ``order`` itself (the jet), or for ``"exact"``
    the tensor basis of :func:`exact_basis`."""
    return exact_basis(plan, name) if order == EXACT else order
