"""The report's advice on per-layer order rules: which convs fit poorly at their order, and the rule to try.

At order 4 the N-Jet basis represents a 3×3 kernel exactly (15 basis weights per kernel instead of 10 at order
3); the convs whose fit error (kernel error for a plain fit, output error after calibration) exceeds
``POOR_FIT`` are named, by kind when they are all of one kind (e.g. ``depthwise=4,*=3``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from .config import describe_order
from .report import ConversionReport
from .surgery.selection import conv_kind

__all__ = ["POOR_FIT", "recommend_orders"]

POOR_FIT = 0.1  # relative error above which a layer's fit counts as poor
_MAX_NAMES = 4  # poor layers named one by one in a rule; more of mixed kinds: the rule names their kinds


def recommend_orders(report: ConversionReport, order: int | dict[str, int],
                     originals: Mapping[str, nn.Module]) -> list[str]:
    """Advice lines (empty when every fit is good or already at order 4 or more). ``originals``: converted name ->
    original conv, for the conv kinds."""
    poor = [r for r in report.layers if r.order < 4 and math.isfinite(r.fit_error) and r.fit_error > POOR_FIT]
    if not poor:
        return []
    kinds = {r.name: conv_kind(originals[r.name]) if r.name in originals else "dense" for r in poor}
    rest = order if isinstance(order, int) else order.get("*", max(r.order for r in report.layers))
    if len(set(kinds.values())) == 1 or len(poor) > _MAX_NAMES:
        rules = {k: 4 for k in sorted(set(kinds.values()))}
    else:
        rules = {r.name: 4 for r in poor}
    rules = {**rules, "*": rest} if len(poor) < len(report.layers) else 4
    worst = max(poor, key=lambda r: r.fit_error)
    return [f"{len(poor)} of {len(report.layers)} converted conv(s) fit with error > {POOR_FIT} (worst {worst.name}: "
            f"{worst.fit_error:.3f}); try order={describe_order(rules)!r} (order 4 represents a 3x3 kernel exactly, "
            "15 instead of 10 basis weights per kernel)"]
