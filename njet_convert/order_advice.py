"""The report's advice on per-layer order rules: which convs fit poorly at their order, and the rule to try.

At order 4 the N-Jet basis represents a 3×3 kernel exactly (15 basis weights per kernel instead of 10 at order
3); the convs whose fit error (kernel error for a plain fit, output error after calibration) exceeds
``POOR_FIT`` are named, by kind when they are all of one kind (e.g. ``depthwise=4,*=3``). When every fit is below
that but the conversion's held-out agreement is under ``FIDELITY_GOAL`` (the errors compound through the layers,
as in a calibrated MobileNetV2), the worse half of the fits is named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from .config import describe_order
from .report import ConversionReport
from .surgery.selection import conv_kind

__all__ = ["FIDELITY_GOAL", "POOR_FIT", "recommend_orders"]

POOR_FIT = 0.1  # relative error above which a layer's fit counts as poor
FIDELITY_GOAL = 0.9  # held-out top-1 agreement below which the worse half of the fits is named
_MAX_NAMES = 4  # poor layers named one by one in a rule; more of mixed kinds: the rule names their kinds


def recommend_orders(report: ConversionReport, order: int | dict[str, int],
                     originals: Mapping[str, nn.Module]) -> list[str]:
    """Advice lines (empty when every fit is good and the held-out agreement reaches ``FIDELITY_GOAL``, or every
    conv is at order 4 or more). ``originals``: converted name -> original conv, for the conv kinds."""
    low = [r for r in report.layers if r.order < 4 and math.isfinite(r.fit_error)]
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
    rest = order if isinstance(order, int) else order.get("*", max(r.order for r in report.layers))
    if len(set(kinds.values())) == 1 or len(poor) > _MAX_NAMES:
        rules: dict[str, int] | int = {k: 4 for k in sorted(set(kinds.values()))}
    else:
        rules = {r.name: 4 for r in poor}
    rules = {**rules, "*": rest} if len(poor) < len(report.layers) else 4
    worst = max(poor, key=lambda r: r.fit_error)
    return [f"{len(poor)} of {len(report.layers)} converted conv(s) {why} (worst {worst.name}: "
            f"{worst.fit_error:.3f}); try order={describe_order(rules)!r} (order 4 represents a 3x3 kernel exactly, "
            "15 instead of 10 basis weights per kernel)"]
