"""ConversionReport: what :func:`njet_convert.convert` did, per layer and per subsampling point (docs/design.md,
"Public API").

Renders as a Markdown table (``str(report)``, :meth:`ConversionReport.to_markdown`) and as JSON
(:meth:`ConversionReport.to_json`, :meth:`ConversionReport.to_dict`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FRAGILE_SHARE", "ConversionReport", "LayerRecord", "SkipRecord", "SubsampleRecord"]

_NAMED = 8  # layers named one by one in the report's conditioning line
FRAGILE_SHARE = 0.01  # a fit with more of α's energy than this along near-null directions is named in the report


@dataclass
class LayerRecord:
    """One converted conv: original type and weight shape, what it became, σ, filter size and fit error."""

    name: str
    original_type: str
    original_shape: tuple[int, ...]
    new_type: str
    sigma: float
    kernel_size: int
    fit_error: float
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    crop: tuple[int, int] = (0, 0)
    how: str = "graph"  # "graph" (placed by the fx pass) or "module" (swapped by name)
    note: str = ""
    order: int | tuple[int, int] = 3  # the basis index set: the jet's order, or (n_x, n_y) of a tensor product
    condition: float = math.nan  # of the basis the fit solved in (see fitting.KernelFit)
    rank: int = -1
    fragile: float = math.nan  # share of ||α||² along directions the basis barely holds at σ₀

    @property
    def basis(self) -> str:
        """``"jet 3"`` or ``"tensor 3x3"``."""
        from njet_layers.basis import describe_basis

        return describe_basis(self.order)

    @property
    def alphas_per_kernel(self) -> int:
        from njet_layers.basis import basis_size

        return basis_size(self.order)


@dataclass
class SubsampleRecord:
    """One subsampling point: a strided conv or pool turned into stride 1 + SafeSubsample."""

    name: str
    origin: str  # the conv/pool (module name or functional call) it replaces
    kind: str  # "conv", "pool", "functional pool"
    original_stride: int
    factor: float
    r: float
    group: int
    source: str | None  # the NJetConv2d whose σ drives it (None: own fixed σ)
    rounding: str = "ceil"
    how: str = "graph"
    exact: bool = True  # the rounding reproduces the original output size for every input size 1..96
    shift: float = 0.0  # factor = 2 ** (sigma / r + shift) = stride * 2 ** ((sigma - sigma0) / r)


@dataclass
class SkipRecord:
    """Something left as it was, and why."""

    name: str
    type: str
    reason: str


@dataclass
class ConversionReport:
    """Per-layer records, subsampling points, joins guarded by MatchSize, skips, and parameter totals."""

    layers: list[LayerRecord] = field(default_factory=list)
    subsampling: list[SubsampleRecord] = field(default_factory=list)
    match_sizes: list[str] = field(default_factory=list)
    pinned: dict[str, list[int]] = field(default_factory=dict)  # flatten node -> [H, W] its input is pinned to
    skipped: list[SkipRecord] = field(default_factory=list)
    untraced: list[str] = field(default_factory=list)
    recovery: dict[str, Any] = field(default_factory=dict)  # steps, best_step, seconds, start/end (agreement, KL)
    params_before: int = 0
    params_after: int = 0
    traced: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    calibrated: bool = False
    # stage ("plain", "calibrated", "recovered") -> {"images", "agreement", "kl"} (or "output_error" for outputs that
    # are not logits) on the calibration images held out of every fit
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know about how options were applied

    def skip(self, name: str, type_name: str, reason: str) -> None:
        self.skipped.append(SkipRecord(name, type_name, reason))

    @property
    def mean_fit_error(self) -> float:
        errs = [r.fit_error for r in self.layers if math.isfinite(r.fit_error)]
        return sum(errs) / len(errs) if errs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for layer, record in zip(out["layers"], self.layers, strict=True):
            layer["basis"], layer["alphas_per_kernel"] = record.basis, record.alphas_per_kernel
        out["mean_fit_error"] = self.mean_fit_error
        return _finite(out)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        lines = [
            f"N-Jet conversion: {len(self.layers)} conv(s) converted, {len(self.subsampling)} subsampling point(s), "
            f"{len(self.skipped)} skipped; parameters {self.params_before:,} -> {self.params_after:,}"
            f" ({'fx graph' if self.traced else 'module swap only: model not traceable'})",
            "",
        ]
        lines += self._fidelity_lines()
        lines += ["| layer | original | shape | became | basis | α/kernel | sigma | size | fit error | cond | how |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            extra = f" {r.note}" if r.note else ""
            lines.append(f"| {r.name} | {r.original_type} | {'x'.join(map(str, r.original_shape))} | {r.new_type}"
                         f" | {r.basis} | {r.alphas_per_kernel} | {r.sigma:.3g} | {r.kernel_size} | "
                         f"{_error(r.fit_error)} | {r.condition:.3g} | {r.how}{extra} |")
        lines += self._conditioning_lines()
        if self.subsampling:
            lines += ["", "| subsampling | replaces | kind | stride | factor | r | shift | group | sigma from "
                          "| rounding |", "|---|---|---|---|---|---|---|---|---|---|"]
            for s in self.subsampling:
                lines.append(f"| {s.name} | {s.origin} | {s.kind} | {s.original_stride} | {s.factor:.4g} | {s.r:.4g}"
                             f" | {s.shift:.4g} | {s.group} | {s.source or 'own'} | {s.rounding}"
                             f"{'' if s.exact else ' (inexact)'} |")
        if self.match_sizes:
            lines += ["", "MatchSize at joins: " + ", ".join(self.match_sizes)]
        if self.pinned:
            pins = ", ".join(f"{n} ({h}x{w})" for n, (h, w) in self.pinned.items())
            lines += ["", f"Flattened maps pinned to their conversion size (AdaptiveAvgPool2d): {pins}"]
        if self.untraced:
            lines += ["", "Not in the fx graph (swapped by module name): " + ", ".join(self.untraced)]
        if self.skipped:
            lines += ["", "| skipped | type | reason |", "|---|---|---|"]
            lines += [f"| {s.name} | {s.type} | {s.reason} |" for s in self.skipped]
        lines += [f"\nNote: {text}" for text in self.notes]
        lines += [f"\nRecommendation: {text}" for text in self.recommendations]
        return "\n".join(lines)

    def fragile_layers(self) -> list[str]:
        """Layers whose fit is not determined by the kernel: a basis with fewer independent filters on the frame
        than α has entries (rank < M), or more than ``FRAGILE_SHARE`` of α's energy along near-null directions."""
        return [r.name for r in self.layers if 0 < r.rank < r.alphas_per_kernel
                or (math.isfinite(r.fragile) and r.fragile > FRAGILE_SHARE)]

    def _conditioning_lines(self) -> list[str]:
        fragile = self.fragile_layers()
        if not fragile:
            return []
        names = ", ".join(fragile[:_NAMED]) + (f" and {len(fragile) - _NAMED} more" if len(fragile) > _NAMED else "")
        return ["", f"{len(fragile)} of {len(self.layers)} fit(s) rely on directions below the numerical rank: the "
                    "basis is over-complete or ill-conditioned on the kernel's frame, so α is one choice among many "
                    "at this σ and the directions the frame cannot see take over once σ moves (order 'exact' has "
                    f"none; the table's cond is over the directions used): {names}"]

    def fidelity_summary(self) -> str:
        """One line: agreement and KL per stage on the held-out images (empty without a held-out slice)."""
        parts = [f"{stage} {_measure(m)}" for stage, m in self.fidelity.items()]
        if not parts:
            return ""
        images = next(iter(self.fidelity.values())).get("images", 0)
        return f"held-out fidelity ({images} images): " + ", ".join(parts)

    def _fidelity_lines(self) -> list[str]:
        if not self.fidelity:
            return []
        lines = [f"Fidelity on {next(iter(self.fidelity.values())).get('images', 0)} calibration images held out "
                 "of every fit:", "", "| stage | top-1 agreement | KL(original ‖ converted) |", "|---|---|---|"]
        for stage, m in self.fidelity.items():
            if "agreement" in m:
                lines.append(f"| {stage} | {100 * m['agreement']:.1f} % | {m['kl']:.4f} |")
            else:
                lines.append(f"| {stage} | relative output error {m.get('output_error', float('nan')):.4f} | |")
        return [*lines, ""]

    def __str__(self) -> str:
        return self.to_markdown()


def _error(value: float) -> str:
    """A fit error: 4 decimals, or the exponent when it is below what 4 decimals show (exact fits)."""
    return f"{value:.4f}" if not 0 < value < 1e-4 else f"{value:.1e}"


def _measure(m: dict[str, float]) -> str:
    if "agreement" in m:
        return f"{100 * m['agreement']:.1f} % agreement (KL {m['kl']:.3f})"
    return f"output error {m.get('output_error', float('nan')):.4f}"


def _finite(value: Any) -> Any:
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
