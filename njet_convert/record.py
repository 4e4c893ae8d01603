"""The conversion record and architecture identity: what a converted model *is*, in one typed place.

:class:`ConversionRecord` is what :func:`njet_convert.convert` attaches to its result (``model.njet_record``), what
:func:`njet_convert.save` writes as ``config.json`` and what :func:`njet_convert.load` reads back: the source
architecture, the conversion options (every :class:`~njet_convert.config.ConvertConfig` field, serialised from the
dataclass's fields), the selected module names, per-layer σ and filter size, each SafeSubsample's source, stride,
r, rounding and mode, the MatchSize modules, the pinned flatten maps, the input size and dtype.
:meth:`ConversionRecord.from_json` validates everything it reads: a damaged ``config.json`` is one ``ValueError``
line naming the key.

:class:`Architecture` is the name ⇄ builder mapping (``timm:<name>`` — the paper's zoo is registered in timm —,
``torchvision:<name>``, or ``package.module:callable``). Building a registry name never runs code from the record;
a ``module:callable`` imports and calls Python code, so :meth:`Architecture.build` refuses it unless the caller
passes ``trust_code=True`` (docs/design.md, "Trust model").
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import UserError, first_line

if TYPE_CHECKING:
    from torch import nn

    from .config import ConvertConfig

__all__ = ["ATTR", "FORMAT", "TRUST_HINT", "Architecture", "ConversionRecord", "LayerEntry", "SubsampleEntry",
           "architecture_of", "find_architecture", "import_callable", "original_shapes", "record_of",
           "torchvision_builder", "torchvision_names"]

FORMAT = "njet-converted/1"
ATTR = "njet_record"  # the one attribute a converted model carries besides ``conversion_report``

_DTYPES = ("float32", "float64", "float16", "bfloat16")
_MODES = ("nearest", "bilinear", "bicubic", "area")
_ROUNDINGS = ("ceil", "floor", "round")
_LAWS = ("paper", "covariant")  # njet_layers.safe_subsample.LAWS (record.py does not import torch)
_REQUIRED_OPTIONS = ("order", "k", "subsample", "interpolation", "match_size", "learn_sigma")
# ConvertConfig fields that describe how a conversion was fitted or selected, not the structure load rebuilds.
_NOT_RESTORED = ("include", "exclude", "calibration_options", "progress", "fit")
_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_TV_VARIANTS: tuple[dict[str, Any], ...] = ({}, {"aux_logits": False}, {"aux_logits": False, "init_weights": False})

TRUST_HINT = "pass trust_code=True to njet_convert.load (--trust-code on the command line) if you trust its source"


# ----------------------------------------------------------------------------------------------------------------
# Architecture identity


@dataclass(frozen=True)
class Architecture:
    """How to build a network: ``timm:<name>``, ``torchvision:<name>`` or ``package.module:callable``, with
    keyword arguments (plain JSON values)."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``"timm"`` (timm's models and the zoo), ``"torchvision"`` or ``"code"`` (an importable callable)."""
        prefix = self.name.partition(":")[0]
        return prefix if prefix in ("timm", "torchvision") else "code"

    @property
    def builder(self) -> str:
        """The name without its ``timm:``/``torchvision:`` prefix."""
        return self.name.partition(":")[2] if self.kind != "code" else self.name

    def build(self, *, pretrained: bool = False, trust_code: bool = False) -> nn.Module:
        """The network (random init unless ``pretrained``: hub weights). A ``module:callable`` runs Python code:
        refused with a one-line ``ValueError`` unless ``trust_code``. Builder errors propagate as they are."""
        kwargs = dict(self.kwargs)
        if self.kind == "timm":
            import timm  # the import hook registers the zoo

            return timm.create_model(self.builder, pretrained=pretrained, **kwargs)
        if self.kind == "torchvision":
            import torchvision

            return torchvision.models.get_model(self.builder, weights="DEFAULT" if pretrained else None, **kwargs)
        if not trust_code:
            raise UserError(f"architecture {self.name!r} is Python code (module:callable) that loading would import "
                            f"and run; {TRUST_HINT}")
        if pretrained:
            raise UserError(f"pretrained weights exist for timm and torchvision names, not {self.name!r}")
        model = import_callable(self.name)(**kwargs)
        from torch import nn

        if not isinstance(model, nn.Module):
            raise UserError(f"{self.name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def to_json(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": {...}}``."""
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_json(cls, data: Any, where: str = "source") -> Architecture:
        """Validated inverse of :meth:`to_json` (``ValueError`` naming ``where`` and the key)."""
        data = _mapping(data, where)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
        return cls(name, _mapping(data.get("kwargs", {}), f"{where}.kwargs"))


def import_callable(spec: str) -> Callable[..., Any]:
    """The object ``package.module:attr.path`` names (imports the module); ``UserError`` in one line if absent."""
    module_name, _, attr = spec.partition(":")
    if not _CALLABLE.fullmatch(spec):
        raise UserError(f"{spec!r} is not of the form package.module:callable")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import {module_name!r} for {spec!r}: {first_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{spec!r} is not callable")
    return obj


def find_architecture(name: str) -> Architecture | None:
    """The architecture a user-typed name means — the one place that decides it, for the command line, the
    training entry point and (through :meth:`Architecture.from_json`) :func:`njet_convert.load`: ``tv:``/
    ``torchvision:``/``timm:`` prefixed names, a bare timm or zoo name, a bare torchvision name,
    ``package.module:callable`` (imported here, so that a missing one fails now, in one line); None when nothing
    fits. An unknown ``tv:`` name is a ``UserError`` with close matches."""
    prefix, _, rest = name.partition(":")
    if prefix in ("tv", "torchvision"):
        if rest in torchvision_names():
            return Architecture(f"torchvision:{rest}")
        import difflib

        close = difflib.get_close_matches(rest, torchvision_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown torchvision model {rest!r}{hint}")
    if prefix == "timm":
        name = rest
    elif _CALLABLE.fullmatch(name):  # registry names have no ':'
        import_callable(name)
        return Architecture(name)
    import timm

    if timm.is_model(name):
        return Architecture(f"timm:{name}")
    return Architecture(f"torchvision:{name}") if name in torchvision_names() else None


def torchvision_names() -> list[str]:
    """The names torchvision's model registry builds."""
    import torchvision

    return list(torchvision.models.list_models())


def architecture_of(model: nn.Module, source: str | Mapping[str, Any] | None = None,
                    resolve: bool = True) -> Architecture:
    """How to rebuild ``model``'s architecture: ``source`` when given (a name or ``{"name", "kwargs"}``), else timm
    and zoo models by their timm name, torchvision models by the builder whose architecture has the same
    state_dict shapes (``resolve=False``: not looked up yet), others by their class (``module:Class``)."""
    if isinstance(source, Mapping):
        return Architecture.from_json(source)
    if isinstance(source, str):
        return Architecture.from_json({"name": source})
    if source is not None:
        raise ValueError(f"source must be a string or a mapping, got {type(source).__name__}")
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if arch and _is_timm_model(arch):
        kwargs = {"num_classes": int(model.num_classes)} if getattr(model, "num_classes", None) is not None else {}  # type: ignore[arg-type]
        return Architecture(f"timm:{arch}", kwargs)
    cls = type(model)
    found = torchvision_builder(original_shapes(model), cls.__module__) if resolve and _is_torchvision(cls) else None
    return found or Architecture(f"{cls.__module__}:{cls.__qualname__}")


def _is_torchvision(cls: type) -> bool:
    return cls.__module__.startswith("torchvision.models")


def _is_timm_model(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


def original_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape (what identifies a torchvision architecture)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def torchvision_builder(shapes: Mapping[str, tuple[int, ...]], where: str) -> Architecture | None:
    """The torchvision builder (and keyword arguments) defined in module ``where`` whose architecture has these
    state_dict shapes, built on the meta device (no memory, no download); None when none matches."""
    import torchvision

    models = torchvision.models
    names = [n for n in models.list_models() if models.get_model_builder(n).__module__ == where]
    last = [v for k, v in shapes.items() if k.endswith("weight") and len(v) in (2, 4)]
    num_classes = last[-1][0] if last else None
    for classes in ({}, {"num_classes": num_classes}):
        for extra in _TV_VARIANTS:
            for name in names:
                kwargs = {**extra, **classes}
                if ".segmentation." in where:
                    kwargs["weights_backbone"] = None
                if _meta_shapes(name, kwargs) == dict(shapes):
                    return Architecture(f"torchvision:{name}", kwargs)
    return None


def _meta_shapes(name: str, kwargs: dict) -> dict | None:
    import torch
    import torchvision

    try:
        with torch.device("meta"):
            built = torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception:  # a builder that rejects these arguments is simply not a match
        return None
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# The conversion record


@dataclass
class LayerEntry:
    """One NJetConv2d: σ, filter size, crop and stride."""

    sigma: float
    kernel_size: int
    crop: list[int] = field(default_factory=lambda: [0, 0])
    stride: list[int] = field(default_factory=lambda: [1, 1])

    @classmethod
    def from_json(cls, data: Any, where: str) -> LayerEntry:
        data = _mapping(data, where)
        return cls(sigma=_number(data, "sigma", where, positive=True), kernel_size=_int(data, "kernel_size", where),
                   crop=_ints(data, "crop", where, [0, 0]), stride=_ints(data, "stride", where, [1, 1]))


@dataclass
class SubsampleEntry:
    """One SafeSubsample: the NJetConv2d whose σ drives it (None: its own σ), r, original stride, rounding, mode,
    and the shift of a converted point's law (``None``: a folder written before the shifted law, which loads with
    the paper's unshifted law), the law itself (``"paper"`` or ``"covariant"``; folders without it: paper) and the
    octaves within which the factor is held on its grid (``SafeSubsample.hold_factor_``; folders without it: 0)."""

    source: str | None
    r: float
    stride: Any = None
    rounding: str = "ceil"
    mode: str = "nearest"
    shift: float | None = None
    law: str = "paper"
    hold: float = 0.0

    @classmethod
    def from_json(cls, data: Any, where: str) -> SubsampleEntry:
        data = _mapping(data, where)
        source = data.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"{where}.source must be a module name or null, got {source!r}")
        return cls(source=source, r=_number(data, "r", where, positive=True), stride=data.get("stride"),
                   rounding=_choice(data, "rounding", where, _ROUNDINGS, "ceil"),
                   mode=_choice(data, "mode", where, _MODES, "nearest"),
                   shift=_number(data, "shift", where) if "shift" in data else None,
                   law=_choice(data, "law", where, _LAWS, "paper"), hold=_hold(data, where))


@dataclass
class ConversionRecord:
    """Everything :func:`njet_convert.load` needs to rebuild a converted model (see the module doc)."""

    source: Architecture
    options: dict[str, Any]
    selected: list[str] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)
    layers: dict[str, LayerEntry] = field(default_factory=dict)
    subsampling: dict[str, SubsampleEntry] = field(default_factory=dict)
    match_sizes: list[str] = field(default_factory=list)
    pinned: dict[str, list[int]] = field(default_factory=dict)
    training: bool = False
    traced: bool = True
    input_size: list[int] | None = None
    dtype: str = "float32"
    deferred_shapes: dict[str, tuple[int, ...]] | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def options_of(cfg: ConvertConfig) -> dict[str, Any]:
        """Every ConvertConfig field as JSON (from the dataclass fields, so new fields are recorded too)."""
        return _jsonable(cfg.to_dict())

    def convert_config(self, **overrides: Any) -> ConvertConfig:
        """The ConvertConfig the record's structural options describe, with ``overrides`` (ValueError naming the
        option when a stored value is invalid)."""
        from .config import ConvertConfig

        names = {f.name for f in fields(ConvertConfig)} - set(_NOT_RESTORED)
        values = {k: (tuple(v) if isinstance(v, list) and k == "input_size" else v)
                  for k, v in self.options.items() if k in names}
        try:
            return ConvertConfig(**{**values, **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"options: {first_line(err)}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written as ``config.json``."""
        return {
            "format": FORMAT,
            "source": self.source.to_json(),
            "options": _jsonable(self.options),
            "selected": list(self.selected),
            "pairs": dict(self.pairs),
            "training": self.training,
            "traced": self.traced,
            "layers": {n: _jsonable(vars(e)) for n, e in self.layers.items()},
            "subsampling": {n: _jsonable(vars(e)) for n, e in self.subsampling.items()},
            "match_sizes": list(self.match_sizes),
            "pinned": {n: list(v) for n, v in self.pinned.items()},
            "input_size": None if self.input_size is None else list(self.input_size),
            "dtype": self.dtype,
        }

    def dumps(self) -> str:
        """:meth:`to_json` as indented text."""
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, data: Any) -> ConversionRecord:
        """Validated inverse of :meth:`to_json`: anything missing or mistyped is a one-line ``ValueError`` naming
        the key. Keys it does not know are ignored (written by a newer version)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"not an njet conversion config (a JSON object expected, got {type(data).__name__})")
        if data.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}, got {data.get('format')!r}: not an njet conversion config")
        for key in ("source", "options", "layers", "subsampling"):
            if key not in data:
                raise ValueError(f"missing {key!r}")
        record = cls(
            source=Architecture.from_json(data["source"]),
            options=_options(data["options"]),
            selected=_strings(data, "selected"),
            pairs={k: _str(v, f"pairs[{k!r}]") for k, v in _mapping(data.get("pairs", {}), "pairs").items()},
            layers={n: LayerEntry.from_json(v, f"layers[{n!r}]")
                    for n, v in _mapping(data["layers"], "layers").items()},
            subsampling={n: SubsampleEntry.from_json(v, f"subsampling[{n!r}]")
                         for n, v in _mapping(data["subsampling"], "subsampling").items()},
            match_sizes=_strings(data, "match_sizes"),
            pinned={n: _ints({"v": v}, "v", f"pinned[{n!r}]", []) for n, v in
                    _mapping(data.get("pinned", {}), "pinned").items()},
            training=_bool(data, "training", False),
            traced=_bool(data, "traced", True),
            input_size=_ints(data, "input_size", "config", None),
            dtype=_choice(data, "dtype", "config", _DTYPES, "float32"),
        )
        record.convert_config()  # the options must make a valid ConvertConfig
        return record

    @classmethod
    def loads(cls, text: str) -> ConversionRecord:
        """:meth:`from_json` of JSON text (``ValueError`` for text that is not JSON)."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"corrupt JSON ({first_line(err)})") from None
        return cls.from_json(data)


def record_of(model: nn.Module) -> ConversionRecord | None:
    """The record :func:`njet_convert.convert` (or ``load``) attached to ``model``; None for other models."""
    record = getattr(model, ATTR, None)
    return record if isinstance(record, ConversionRecord) else None


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers (each raises one ValueError line naming the key)


def _options(data: Any) -> dict[str, Any]:
    options = dict(_mapping(data, "options"))
    for key in _REQUIRED_OPTIONS:
        if key not in options:
            raise ValueError(f"options: missing {key!r}")
    if not isinstance(options["learn_sigma"], bool):
        raise ValueError(f"options.learn_sigma must be true or false, got {options['learn_sigma']!r}")
    return options


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list of names, got {type(value).__name__}")
    return [_str(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, positive: bool = False) -> float:
    if key not in data:
        raise ValueError(f"{where}: missing {key!r}")
    value = data[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and not value > 0):
        raise ValueError(f"{where}.{key} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return float(value)


def _hold(data: Mapping[str, Any], where: str) -> float:
    """A subsampling entry's ``hold`` (0 when absent): octaves in [0, 0.5)."""
    value = _number(data, "hold", where) if "hold" in data else 0.0
    if not 0.0 <= value < 0.5:
        raise ValueError(f"{where}.hold must lie in [0, 0.5) octaves, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    return value


def _ints(data: Mapping[str, Any], key: str, where: str, default: Any) -> Any:
    value = data.get(key, default)
    if value is None or value is default:
        return default
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ValueError(f"{where}.{key} must be a list of non-negative integers, got {value!r}")
    return list(value)


def _choice(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ValueError(f"{where}.{key} must be one of {choices}, got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples become lists, anything JSON cannot hold becomes its string."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
