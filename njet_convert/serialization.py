"""``save(model, dir)`` / ``load(dir)``: a converted N-Jet network as a folder (docs/design.md, "Saved folder").

The folder holds ``model.safetensors`` (the weights), ``config.json`` (the model's
:class:`~njet_convert.record.ConversionRecord`) and ``manifest.json`` (size and SHA-256 of every file, written
last). ``save`` writes them into a temporary sibling folder and swaps it in whole (:func:`~njet_convert.atomic.
replace_folder`): the target holds the complete old model or the complete new one, never a mix. ``load`` checks
the manifest before reading, so a torn or edited folder is refused in one line.

``load`` rebuilds the architecture (random init, no download), re-applies the same surgery without fitting
(structure only), loads the weights in the dtype they were saved in and restores the SafeSubsample links, r and shift.
Registry names (timm, the zoo, torchvision) build without running code from the folder; a
``package.module:callable`` source imports and runs Python code and needs ``load(dir, trust_code=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .atomic import replace_folder
from .errors import UserError, first_line
from .record import ATTR, TRUST_HINT, ConversionRecord, record_of, torchvision_builder

if TYPE_CHECKING:
    from .report import ConversionReport

__all__ = ["CONFIG_FILE", "MANIFEST_FILE", "WEIGHTS_FILE", "check_replaceable", "current_record", "load", "save",
           "write_manifest", "write_model", "write_reports"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "njet-manifest/1"


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` (returned by ``convert`` or ``load``, possibly fine-tuned) to ``directory``; returns it.

    An existing ``directory`` is replaced whole once the new folder is complete; a folder that holds files njet
    did not write is refused (``ValueError``) rather than replaced.
    """
    record = current_record(model)
    out = Path(directory)
    check_replaceable(out)
    with replace_folder(out) as staging:
        write_model(model, staging, record)
        write_manifest(staging)
    return out


def check_replaceable(folder: Path) -> None:
    """``ValueError`` unless ``folder`` is absent, empty, or a folder njet wrote (it has a config or manifest)."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {str(folder)!r} exists and is not a directory")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MANIFEST_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
            raise UserError(f"output folder {str(folder)!r} holds files njet did not write and would be replaced "
                            "whole; choose a new or empty folder")


def current_record(model: nn.Module) -> ConversionRecord:
    """``model``'s record with σ, r, links, mode and dtype as they are now (fine-tuning moves σ), and a deferred
    torchvision builder looked up."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    record = record_of(model)
    if record is None:
        raise ValueError(f"model carries no conversion record ({ATTR}): save models returned by convert() or load()")
    if record.deferred_shapes is not None:
        where = record.source.name.partition(":")[0]
        record.source = torchvision_builder(record.deferred_shapes, where) or record.source
        record.deferred_shapes = None
    from njet_layers import SafeSubsample

    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    for name, layer in record.layers.items():
        if name in modules:
            layer.sigma = float(modules[name].sigma.detach())
            layer.kernel_size = modules[name].kernel_size
    for name, sub in record.subsampling.items():
        mod = modules.get(name)
        if isinstance(mod, SafeSubsample):
            sub.r, sub.shift, sub.rounding, sub.mode, sub.law = mod.r, mod.shift, mod.rounding, mod.mode, mod.law
            sub.hold = mod.hold
            sub.source = names.get(id(mod.source)) if mod.source is not None else None
    record.training = bool(model.training)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None:
        record.dtype = str(param.dtype).removeprefix("torch.")
    return record


def write_reports(report: ConversionReport, folder: Path) -> None:
    """Write the conversion report as ``report.md`` and ``report.json`` into ``folder`` (a staging folder)."""
    (folder / "report.md").write_text(report.to_markdown() + "\n")
    (folder / "report.json").write_text(report.to_json() + "\n")


def write_model(model: nn.Module, folder: Path, record: ConversionRecord | None = None) -> None:
    """Write the weights and ``config.json`` into ``folder`` (a staging folder: no atomicity here)."""
    from safetensors.torch import save_file

    record = record or current_record(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(record.dumps() + "\n")


def write_manifest(folder: Path) -> None:
    """Write ``manifest.json``: size and SHA-256 of every file in ``folder`` (call it last)."""
    paths = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE and p.name[0] != "."]
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in paths}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=2) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(directory: str | os.PathLike, *, trust_code: bool = False) -> nn.Module:
    """Rebuild a model written by :func:`save` (no calibration data, no download), in the dtype it was saved in.

    ``trust_code``: allow a ``package.module:callable`` architecture, which imports and runs Python code named by
    the folder's ``config.json`` — only for folders from a source you trust. Any problem: one-line ``ValueError``.
    """
    folder = Path(directory)
    record = read_record(folder)
    state = _read_weights(folder)
    model = _build(record, trust_code)
    out = _restructure(model, record)
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit the rebuilt model: {first_line(err)}") from None
    setattr(out, ATTR, record)
    return out


def read_record(folder: Path) -> ConversionRecord:
    """The validated record of a saved folder (its manifest checked first)."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory written by njet_convert.save")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {CONFIG_FILE}")
    _check_manifest(folder)
    try:
        return ConversionRecord.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({first_line(err)})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {first_line(err)}") from None


def _check_manifest(folder: Path) -> None:
    """Refuse a folder whose weights or config differ from what its manifest lists (a torn or edited folder)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return  # written before manifests existed
    try:
        files = json.loads(path.read_text())["files"]
        listed = {name: files[name]["sha256"] for name in (CONFIG_FILE, WEIGHTS_FILE)}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: damaged manifest ({type(err).__name__}: {first_line(err)})") from None
    for name, digest in listed.items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise ValueError(f"{folder}: {name} does not match {MANIFEST_FILE} (a torn or edited folder: save the "
                             "model again)")


def _read_weights(folder: Path) -> dict[str, Any]:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{folder}: no {WEIGHTS_FILE}")
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except Exception as err:
        raise ValueError(f"{weights}: unreadable safetensors file ({type(err).__name__})") from None


def _build(record: ConversionRecord, trust_code: bool) -> nn.Module:
    import torch

    arch = record.source
    if arch.kind == "code" and not trust_code:
        raise ValueError(f"{CONFIG_FILE} names the architecture {arch.name!r}, Python code that loading would import "
                         f"and run; {TRUST_HINT}")
    try:
        model = arch.build(trust_code=trust_code)
    except Exception as err:
        raise ValueError(f"cannot rebuild architecture {arch.name!r} with {dict(arch.kwargs)}: "
                         f"{type(err).__name__}: {first_line(err)}") from None
    return model.to(getattr(torch, record.dtype))


def _restructure(model: nn.Module, record: ConversionRecord) -> nn.Module:
    """The surgery ``convert`` did, without fitting: the same modules, σ and subsampling links."""
    import torch

    from .converter import rewrite
    from .report import ConversionReport

    selected = set(record.selected)
    try:
        cfg = record.convert_config(fit=False, include=[lambda n, m: n in selected])
    except ValueError as err:
        raise ValueError(f"{CONFIG_FILE}: {first_line(err)}") from None
    sigma_for = {record.pairs.get(n, n): v.sigma for n, v in record.layers.items()}
    model.train(record.training)
    out, _ = rewrite(model, cfg, ConversionReport(options=cfg.to_dict()), sigma_for, check_rules=False,
                     pinned=record.pinned)
    _restore_subsampling(out, record)
    return out.to(getattr(torch, record.dtype))


def _restore_subsampling(model: nn.Module, record: ConversionRecord) -> None:
    from njet_layers import SafeSubsample

    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    for name, sub in record.subsampling.items():
        mod = modules.get(name)
        if not isinstance(mod, SafeSubsample):
            raise ValueError(f"rebuilt model has no SafeSubsample {name!r}: the architecture does not match")
        if sub.source is not None:
            if sub.source not in modules:
                raise ValueError(f"rebuilt model has no module {sub.source!r} (SafeSubsample source)")
            if names.get(id(mod.source)) != sub.source:
                mod.link(modules[sub.source])
        mod.r, mod.rounding, mod.mode, mod.law = sub.r, sub.rounding, sub.mode, sub.law  # type: ignore[assignment]
        mod.hold_factor_(sub.hold)
        if sub.shift is not None:
            mod.shift = sub.shift
        else:  # written before the shifted law: the unshifted law with its plain rounding and grid
            mod.shift, mod.anchor = 0.0, None

