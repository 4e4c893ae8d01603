"""What a run prints on stdout (docs/design.md, "Command line"): the report table and a one-line summary, or one
JSON object with ``--json``, or nothing with ``--quiet`` (errors still go to stderr); and ``--list-recipes``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..report import ConversionReport
    from .run import Run

__all__ = ["list_recipes", "print_result", "summary"]


def print_result(result: dict[str, Any], table: str, *, json_mode: bool, quiet: bool) -> None:
    """``--json``: the result as one JSON object; ``--quiet``: nothing; otherwise the table and the summary."""
    if json_mode:
        print(json.dumps(result, indent=2, default=str))
    elif not quiet:
        print(table)
        print(result["summary"])


def summary(run: Run, report: ConversionReport) -> str:
    """One line: what was converted, the parameter counts, fit error and fidelity, and where it went."""
    from ..config import describe_order

    err = report.mean_fit_error
    fit = f", mean fit error {err:.4f}" if err == err else ""
    where = "dry run, nothing written" if run.args.dry_run else f"saved to {run.out}/"
    onnx = " + model.onnx" if "onnx" in run.result else ""
    fidelity = report.fidelity_summary()
    fidelity = f"; {fidelity}" if fidelity else ""
    return (f"{run.spec.name}: {len(report.layers)} conv(s) -> N-Jet (order {describe_order(run.args.order)}), "
            f"{len(report.subsampling)} subsampling point(s), params {report.params_before:,} -> "
            f"{report.params_after:,}{fit}{fidelity}{_macs(run.result.get('finetune'))} "
            f"[{run.result['weights'].split(':')[0]}]; {where}{onnx} ({run.result['seconds']:.1f} s)")


def _macs(finetuned: Any) -> str:
    """``, multiply-adds/image A -> B (fine-tuning)`` when fine-tuning measured them (σ moves the map sizes)."""
    values = [finetuned.get(k) if isinstance(finetuned, dict) else None
              for k in ("multiply_adds_before", "multiply_adds_after")]
    return "" if None in values else f", multiply-adds/image {values[0]:,} -> {values[1]:,} (fine-tuning)"


def list_recipes(json_mode: bool) -> int:
    """``--list-recipes``: name, model and description of each named recipe (``--json``: their full settings)."""
    from ..recipes import list_recipes as recipes_list

    recipes = recipes_list()
    if json_mode:
        print(json.dumps([r.to_dict() for r in recipes], indent=2))
        return 0
    width = max(len(r.name) for r in recipes) if recipes else 4
    for r in recipes:
        alias = f" (alias {', '.join(r.aliases)})" if r.aliases else ""
        print(f"{r.name:<{width}}  {r.model.name:<22} {r.description}{alias}")
    return 0
