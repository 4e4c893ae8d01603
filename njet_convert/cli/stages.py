"""What a run writes after the conversion, in order, into the staging folder (docs/design.md, "Command line"):
the fine-tune, the weights and config, ``report.md``/``report.json``, ``model.onnx``, and last ``manifest.json``,
which lists every file before it."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, first_line
from .exits import Stopped, api
from .output import staged, writing
from .parser import training_cli

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..report import ConversionReport
    from .run import Run

__all__ = ["write_run"]


def write_run(run: Run, njet_model: nn.Module, original: nn.Module, report: ConversionReport,
              example: Tensor) -> None:
    """Every output of the run goes into a temporary sibling of ``--out`` that replaces it whole at the end: on any
    failure ``--out`` keeps its previous result."""
    from ..serialization import write_manifest

    assert run.out is not None
    with staged(run.out, run.log) as stage:
        _finetune(run, njet_model, original, stage)
        _write_outputs(njet_model, report, stage)
        _report_resolution(run.result.get("finetune"), stage)
        if run.args.export_onnx:
            _export(run, njet_model.eval(), example, stage)
        writing(stage, lambda: write_manifest(stage))
    run.result["files"] = sorted(p.name for p in run.out.iterdir() if not p.name.startswith("."))


def _finetune(run: Run, njet_model: nn.Module, original: nn.Module, stage: Path) -> None:
    args = run.args
    if not getattr(args, "finetune", None):
        return
    module = training_cli()
    if module is None:
        raise UserError("--finetune: the fine-tuning module is not installed in this build")
    if args.data_dir:
        os.environ.setdefault("NJET_DATA", str(args.data_dir))
    from ..training.finetune import NonFiniteLossError

    try:
        result = api(lambda: module.run_training(args, njet_model, original, stage), "fine-tuning")
    except NonFiniteLossError as err:  # diverged: the user's learning rate, not a bug
        raise UserError(f"fine-tuning diverged: {first_line(err)}") from None
    if result is not None and result.interrupted:  # --out keeps what it had; the checkpoint is for --resume
        signum = result.signal or signal.SIGINT
        raise Stopped(f"stopped by {signal.Signals(signum).name}: the model in {str(run.out)!r} was not replaced; "
                      f"continue with --resume {result.checkpoint}", 128 + signum)
    if result is not None:
        run.result["finetune"] = _jsonable(result)


def _report_resolution(finetuned: Any, stage: Path) -> None:
    """Append what fine-tuning did to resolution (σ and factor per stage, multiply-adds) to ``report.md``."""
    if not isinstance(finetuned, dict):
        return
    from ..training.resolution import resolution_markdown

    section = resolution_markdown(finetuned.get("stages_before") or [], finetuned.get("stages_after") or [],
                                  (finetuned.get("multiply_adds_before"), finetuned.get("multiply_adds_after")))
    if section:
        path = stage / "report.md"
        writing(stage, lambda: path.write_text(path.read_text() + "\n" + section + "\n"))


def _jsonable(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in dataclasses.asdict(value).items() if isinstance(v, int | float | str | list | dict)}
    return str(value)


def _write_outputs(njet_model: nn.Module, report: ConversionReport, stage: Path) -> None:
    from ..serialization import write_model, write_reports

    def write() -> None:
        write_model(njet_model, stage)
        write_reports(report, stage)

    writing(stage, write)


def _export(run: Run, njet_model: nn.Module, example: Tensor, stage: Path) -> None:
    import njet_convert

    run.log("exporting ONNX and checking it against onnxruntime ...")
    result = api(lambda: njet_convert.export_onnx(njet_model, stage / "model.onnx", example, verify=True),
                 "--export-onnx")
    checks = getattr(result, "checks", {})
    assert run.out is not None
    run.result["onnx"] = {"path": str(run.out / "model.onnx"), "max_relative_error": max(checks.values(), default=None)}
