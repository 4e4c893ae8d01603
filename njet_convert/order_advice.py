"""The report's advice on per-layer order rules: which convs fit poorly at their order, and the rule to try.

Order ``"exact"`` reproduces any kernel at its own parameter count (the tensor basis of its size, docs/design.md,
"Lossless conversion"), so the advice names it for the convs that the jet holds poorly: the convs whose fit error
(kernel error for a plain fit, output error after calibration) exceeds ``POOR_FIT`` are named, by kind when they
are all of one kind (e.g. ``depthwise=exact,*=3``). When every fit is below
that but the conversion's held-out agreement is under ``FIDELITY_GOAL`` (the errors compound through the layers,
as in a calibrated MobileNetV2), the worse half of the fits is named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from .config import EXACT, LayerOrder, OrderSpec, describe_order
from .report import ConversionReport
from .surgery.selection import conv_kind

__all__ = ["FIDELITY_GOAL", "POOR_FIT", "recommend_orders"]

POOR_FIT = 0.1  # relative error above which a layer's fit counts as poor
FIDELITY_GOAL = 0.9  # held-out top-1 agreement below which the worse half of the fits is named
_MAX_NAMES = 4  # poor layers named one by one in a rule; more of mixed kinds: the rule names their kinds
_EXACT_FIT = 1e-6  # a jet fit below this error holds its kernel already (e.g. order 4 on 3×3)


def recommend_orders(report: ConversionReport, order: OrderSpec, originals: Mapping[str, nn.Module]) -> list[str]:
    """Advice lines (empty when every fit is good and the held-out agreement reaches ``FIDELITY_GOAL``, or every
    jet fit is exact already). ``originals``: converted name -> original conv, for the conv kinds."""
    low = [r for r in report.layers if isinstance(r.order, int) and math.isfinite(r.fit_error)
           and r.fit_error > _EXACT_FIT]
    poor = [r for r in low if r.fit_error > POOR_FIT]
    why = f"fit with error > {POOR_FIT}"
    last = list(report.fidelity.values())[-1] if report.fidelity else {}
    agreement = last.get("agreement")
    if not poor and low and agreement is not None and agreement < FIDELITY_GOAL:
        # each fit is fair, yet their errors compound: the worse half of them
        cut = sorted(r.fit_error for r in low)[len(low) // 2]
        poor = [r for r in low if r.fit_error >= cut]
        why = f"are the worse half of the fits, and the held-out agreement is {100 * agreement:.1f} %"
    if not poor:
        return []
    kinds = {r.name: conv_kind(originals[r.name]) if r.name in originals else "dense" for r in poor}
    rest: LayerOrder = order.get("*", 3) if isinstance(order, dict) else order
    if len(set(kinds.values())) == 1 or len(poor) > _MAX_NAMES:
        rules: OrderSpec = {k: EXACT for k in sorted(set(kinds.values()))}
    else:
        rules = {r.name: EXACT for r in poor}
    rules = {**rules, "*": rest} if len(poor) < len(report.layers) else EXACT
    worst = max(poor, key=lambda r: r.fit_error)
    return [f"{len(poor)} of {len(report.layers)} converted conv(s) {why} (worst {worst.name}: "
            f"{worst.fit_error:.3f}); try order={describe_order(rules)!r} ('exact' reproduces each kernel with the "
            "tensor basis of its own size, as many basis weights as the kernel has taps)"]
