"""``save(model, dir)`` / ``load(dir)``: a converted N-Jet network as safetensors weights + a JSON config.

``config.json`` holds what :func:`njet_convert.convert` recorded on the model (``model.njet_conversion``): the
source architecture (``timm:<name>``, ``torchvision:<name>``, a name of the zoo, or ``package.module:callable``)
and its keyword arguments, the conversion options, the converted module names, per-layer σ and filter size, and
each SafeSubsample's source (by qualified name), stride, r, shift and rounding. ``load`` rebuilds the architecture
(random init, no download), re-applies the same surgery without fitting (structure only), loads the weights and
restores the SafeSubsample links, r and shift. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from njet_layers import SafeSubsample

from .atomic import atomic_write, atomic_write_text
from .config import ConvertConfig
from .converter import FORMAT, resolve_source, rewrite
from .errors import first_line
from .report import ConversionReport

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "build_architecture", "load", "save"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` (returned by ``convert`` or ``load``, possibly fine-tuned) to ``directory``; returns it."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    record = getattr(model, "njet_conversion", None)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("model carries no conversion record (njet_conversion): save models returned by convert()")
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    resolve_source(model)
    record = _current_record(model, model.njet_conversion)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(out / CONFIG_FILE, json.dumps(record, indent=2))
    return out


def _current_record(model: nn.Module, record: dict) -> dict:
    """The record with σ, r and links as they are now (after fine-tuning σ moved)."""
    record = json.loads(json.dumps(record))
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    for name, layer in record["layers"].items():
        if name in modules:
            layer["sigma"] = float(modules[name].sigma.detach())
            layer["kernel_size"] = modules[name].kernel_size
    for name, sub in record["subsampling"].items():
        mod = modules.get(name)
        if isinstance(mod, SafeSubsample):
            sub["r"], sub["shift"], sub["rounding"], sub["mode"] = mod.r, mod.shift, mod.rounding, mod.mode
            sub["source"] = names.get(id(mod.source)) if mod.source is not None else None
    record["training"] = bool(model.training)
    return record


def load(directory: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save` (no calibration data, no download)."""
    folder = Path(directory)
    record = _read_record(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{folder}: no {WEIGHTS_FILE}")
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:
        raise ValueError(f"{weights}: unreadable safetensors file ({type(err).__name__})") from None
    source = record["source"]
    model = build_architecture(source["name"], source.get("kwargs", {}))
    opts = record["options"]
    selected = set(record.get("selected", []))
    cfg = ConvertConfig(order=opts["order"], k=opts["k"], subsample=opts["subsample"],
                        interpolation=opts["interpolation"], match_size=opts["match_size"],
                        learn_sigma=opts["learn_sigma"], fit=False, include=[lambda n, m: n in selected])
    pairs = record.get("pairs", {})
    sigma_for = {pairs.get(n, n): v["sigma"] for n, v in record["layers"].items()}
    model.train(bool(record.get("training", False)))
    out, _ = rewrite(model, cfg, ConversionReport(options=cfg.to_dict()), sigma_for, check_rules=False,
                     pinned=record.get("pinned", {}))
    _restore_subsampling(out, record)
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not fit the rebuilt model: {first_line(err)}") from None
    out.njet_conversion = record
    out.source_architecture = source["name"]
    return out


def _read_record(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory written by njet_convert.save")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {CONFIG_FILE}")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: not an njet conversion config (format {FORMAT!r} expected)")
    for key in ("source", "options", "layers", "subsampling"):
        if key not in record:
            raise ValueError(f"{path}: missing {key!r}")
    return record


def _restore_subsampling(model: nn.Module, record: dict) -> None:
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    for name, sub in record["subsampling"].items():
        mod = modules.get(name)
        if not isinstance(mod, SafeSubsample):
            raise ValueError(f"rebuilt model has no SafeSubsample {name!r}: the architecture does not match")
        source = sub.get("source")
        if source is not None:
            if source not in modules:
                raise ValueError(f"rebuilt model has no module {source!r} (SafeSubsample source)")
            if names.get(id(mod.source)) != source:
                mod.link(modules[source])
        mod.r, mod.rounding, mod.mode = float(sub["r"]), sub["rounding"], sub["mode"]
        if "shift" in sub:
            mod.shift = float(sub["shift"])
        else:  # written before the shifted law: the unshifted law with its plain rounding and grid
            mod.shift, mod.anchor = 0.0, None


def build_architecture(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised model from ``timm:<name>``, ``torchvision:<name>``, ``package.module:callable`` or a
    bare timm / zoo / torchvision name."""
    kwargs = dict(kwargs or {})
    import njet_convert  # noqa: F401  (torchvision guard, zoo registration)

    kind, _, rest = name.partition(":")
    try:
        if kind == "timm":
            import timm

            return timm.create_model(rest, pretrained=False, **kwargs)
        if kind == "torchvision":
            import torchvision

            return torchvision.models.get_model(rest, weights=None, **kwargs)
        if rest:
            obj: Any = importlib.import_module(kind)
            for part in rest.split("."):
                obj = getattr(obj, part)
            return obj(**kwargs)
        import timm

        if timm.is_model(name):
            return timm.create_model(name, pretrained=False, **kwargs)
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as err:
        raise ValueError(f"cannot rebuild architecture {name!r} with {kwargs}: {type(err).__name__}: {err}") from None
