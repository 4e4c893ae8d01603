"""``convert``: one entry point that turns a pretrained CNN into an N-Jet network (DESIGN §4), modelled on torchao's
``quantize_`` (options or a typed :class:`~njet_convert.config.ConvertConfig`) and on Brevitas' module-to-module
transforms (a chain of small ``apply(model) -> model`` steps, see :mod:`njet_convert.surgery.transforms`).

The input is never modified: the surgery runs on a deep copy. When the model traces with torch.fx (timm's leaf
lists; convs, pools and N-Jet modules kept whole) the result is a ``torch.fx.GraphModule`` whose modules keep their
qualified names and state_dict keys (converted convs become ``NJetConv2d`` at the same name; new modules get sibling
names such as ``layer2.0.conv2_subsample``); otherwise the deep copy itself with modules swapped by name.
A GraphModule runs the forward as traced: Python control flow on ``self.training`` is fixed to the mode the model
had at conversion (modules such as dropout and batch norm still follow ``.train()`` / ``.eval()``).

The returned model carries what :func:`njet_convert.save` needs:

- ``model.njet_conversion``: a JSON-friendly dict (format, source architecture, options, the selected module names,
  per-layer σ and filter size, each SafeSubsample's source, stride, r and rounding, the MatchSize modules);
- ``model.conversion_report``: the :class:`~njet_convert.report.ConversionReport`;
- ``model.source_architecture``: ``"timm:<name>"``, ``"torchvision:<name>"`` or ``"module:callable"``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample

from .config import ConvertConfig
from .report import ConversionReport
from .surgery import (
    FunctionalPools,
    PlaceSubsampling,
    Selector,
    SurgeryState,
    SwapConvs,
    SwapPools,
    finalize_subsampling,
    fixed_tokens,
    in_graph_modules,
    restore_unused,
    trace,
)

__all__ = ["FORMAT", "convert", "rewrite", "source_of"]

FORMAT = "njet-converted/1"
_CARRY_ATTRS = ("pretrained_cfg", "default_cfg", "num_classes", "num_features", "feature_info", "head_hidden_size")


def convert(
    model: nn.Module,
    order: int = 3,
    k: float = 2.0,
    calibration: Tensor | Iterable | None = None,
    subsample: str = "safe",
    include: Any = None,
    exclude: Any = None,
    *,
    config: ConvertConfig | None = None,
    source: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Convert ``model`` to an N-Jet network; returns ``(njet_model, report)``.

    Args:
        model: any ``nn.Module`` CNN (timm, torchvision, custom). Not modified.
        order, k, subsample, include, exclude: see :class:`~njet_convert.config.ConvertConfig`.
        calibration: unlabeled inputs for the data-aware fit: a float tensor ``[N, C, H, W]`` or an iterable of
            batches (tensors or ``(tensor, label)`` tuples). ``None``: plain least-squares fits.
        config: a :class:`ConvertConfig`; keyword arguments given explicitly override its fields.
        source: the architecture for :func:`njet_convert.load`: ``"timm:<name>"``, ``"torchvision:<name>"``,
            ``"package.module:callable"`` or ``{"name": ..., "kwargs": {...}}``; default: detected for timm models,
            else the model's class as ``module:Class`` (no arguments).
        **options: further :class:`ConvertConfig` fields (``sigma_grid``, ``interpolation``, ``match_size``, ...).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = _config(config, order, k, subsample, include, exclude, options)
    _check_calibration(calibration)
    start = time.perf_counter()
    report = ConversionReport(options=cfg.to_dict())
    report.params_before = _count(model)
    out, state = rewrite(model, cfg, report)
    if calibration is not None and cfg.fit:
        _calibrate(out, model, state, calibration, cfg)
    finalize_subsampling(out, state.strides)
    _finish_report(out, state, report)
    report.seconds = time.perf_counter() - start
    out.njet_conversion = _record(out, state, source_of(model, source))
    out.conversion_report = report
    out.source_architecture = out.njet_conversion["source"]["name"]
    return out, report


def _config(config, order, k, subsample, include, exclude, options) -> ConvertConfig:
    if config is not None and not isinstance(config, ConvertConfig):
        raise ValueError(f"config must be a ConvertConfig, got {type(config).__name__}")
    explicit = {"order": order, "k": k, "subsample": subsample, "include": include, "exclude": exclude}
    defaults = {"order": 3, "k": 2.0, "subsample": "safe", "include": None, "exclude": None}
    overrides = {n: v for n, v in explicit.items() if config is None or (v is not defaults[n] and v != defaults[n])}
    overrides.update(options)
    return (config or ConvertConfig()).with_overrides(**overrides)


def _check_calibration(data: Any) -> None:
    if data is None:
        return
    if torch.is_tensor(data):
        if data.dim() != 4 or not data.is_floating_point() or data.shape[0] == 0:
            raise ValueError(f"calibration must be a float tensor [N, C, H, W] with N >= 1, got shape "
                             f"{tuple(data.shape)} dtype {data.dtype}")
        return
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise ValueError(f"calibration must be a tensor [N, C, H, W] or an iterable of batches, got "
                         f"{type(data).__name__}")


def rewrite(model: nn.Module, cfg: ConvertConfig, report: ConversionReport,
            sigma_for: Mapping[str, float] | None = None, check_rules: bool = True) -> tuple[nn.Module, SurgeryState]:
    """The surgery on a deep copy of ``model`` (fits the kernels unless ``cfg.fit`` is False)."""
    work = copy.deepcopy(model)
    gm, reason = trace(work)
    if gm is None:
        report.traced = False
        report.untraced.append(f"<whole model: {reason}>")
    target = gm if gm is not None else work
    state = SurgeryState(model=target, gm=gm, cfg=cfg, report=report, selector=Selector(cfg.include, cfg.exclude),
                         sigma_for=dict(sigma_for or {}))
    if gm is not None:
        state.in_graph = in_graph_modules(gm)
        state.tokens = fixed_tokens(gm)
    for step in (SwapConvs, SwapPools, FunctionalPools, PlaceSubsampling):
        target = step(state).apply(target)
    if check_rules:
        state.selector.check_all_used()
    if gm is not None:
        for name in restore_unused(gm, work):
            report.skip(name, type(work.get_submodule(name)).__name__, "not used by the traced forward; kept as is")
        for attr in _CARRY_ATTRS:
            if hasattr(work, attr) and not isinstance(getattr(work, attr), nn.Module):
                setattr(gm, attr, getattr(work, attr))
        gm.training = work.training  # the root's flag only: submodules keep their own modes
    finalize_subsampling(target, state.strides)
    return target, state


def _calibrate(out: nn.Module, original: nn.Module, state: SurgeryState, data, cfg: ConvertConfig) -> None:
    from .fitting import calibrate

    pairs = {n: o for n, o in state.pairs.items() if n not in state.no_calibration}
    if not pairs:
        return
    kwargs = {"options": cfg.calibration_options} if cfg.calibration_options is not None else {}
    fits = calibrate(out, original, pairs, data, order=cfg.order, k=cfg.k, progress=cfg.progress, **kwargs)
    state.report.calibrated = True
    for record in state.report.layers:
        if record.name in fits:
            record.fit_error = float(fits[record.name].error)
            record.note = (record.note + " calibrated").strip()


def _finish_report(out: nn.Module, state: SurgeryState, report: ConversionReport) -> None:
    modules = dict(out.named_modules())
    for record in report.layers:
        layer = modules[record.name]
        record.sigma, record.kernel_size = float(layer.sigma.detach()), layer.kernel_size
    for record in report.subsampling:
        ss = modules[record.name]
        record.factor, record.r = ss.factor, ss.r
    report.params_after = _count(out)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def source_of(model: nn.Module, source: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"name": ..., "kwargs": {...}}`` describing how to rebuild ``model``'s architecture (see ``convert``)."""
    if isinstance(source, Mapping):
        return {"name": str(source["name"]), "kwargs": dict(source.get("kwargs", {}))}
    if isinstance(source, str):
        return {"name": source, "kwargs": {}}
    if source is not None:
        raise ValueError(f"source must be a string or a mapping, got {type(source).__name__}")
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if arch and type(model).__module__.startswith("timm."):
        kwargs = {}
        if getattr(model, "num_classes", None) is not None:
            kwargs["num_classes"] = int(model.num_classes)
        return {"name": f"timm:{arch}", "kwargs": kwargs}
    cls = type(model)
    return {"name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": {}}


def _record(out: nn.Module, state: SurgeryState, source: dict[str, Any]) -> dict[str, Any]:
    modules = dict(out.named_modules())
    names = {id(m): n for n, m in modules.items()}
    layers = {n: {"sigma": float(m.sigma.detach()), "kernel_size": m.kernel_size, "crop": list(m.crop),
                  "stride": list(m.stride)} for n, m in modules.items() if isinstance(m, NJetConv2d)}
    subs = {}
    for n, m in modules.items():
        if isinstance(m, SafeSubsample):
            subs[n] = {"source": names.get(id(m.source)) if m.source is not None else None, "r": m.r,
                       "stride": state.strides.get(n), "rounding": m.rounding, "mode": m.mode}
    opts = state.cfg.to_dict()
    return {
        "format": FORMAT,
        "source": source,
        "options": {k: opts[k] for k in ("order", "k", "subsample", "interpolation", "match_size", "learn_sigma")},
        "selected": sorted(state.selector.accepted),
        "pairs": dict(state.pairs),
        "training": bool(out.training),
        "traced": state.gm is not None,
        "layers": layers,
        "subsampling": subs,
        "match_sizes": [n for n, m in modules.items() if isinstance(m, MatchSize)],
        "sigma_finite": all(math.isfinite(v["sigma"]) for v in layers.values()),
    }
