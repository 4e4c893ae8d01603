"""``convert``: one entry point that turns a pretrained CNN into an N-Jet network (docs/design.md, "Public API"),
modelled on torchao's ``quantize_`` (options or a typed :class:`~njet_convert.config.ConvertConfig`) and on
Brevitas' module-to-module transforms (a chain of small ``apply(model) -> model`` steps, see
:mod:`njet_convert.surgery.transforms`).

The input is never modified: the surgery runs on a deep copy. When the model traces with torch.fx (timm's leaf
lists; convs, pools and N-Jet modules kept whole) the result is a ``torch.fx.GraphModule`` whose modules keep their
qualified names and state_dict keys (converted convs become ``NJetConv2d`` at the same name; new modules get sibling
names such as ``layer2.0.conv2_subsample``); otherwise the deep copy itself with modules swapped by name.
A GraphModule runs the forward as traced: Python control flow on ``self.training`` is fixed to the mode the model
had at conversion (modules such as dropout and batch norm still follow ``.train()`` / ``.eval()``).

The returned model carries what :func:`njet_convert.save` needs in one attribute, ``model.njet_record`` (a
:class:`~njet_convert.record.ConversionRecord`: source architecture, options, selected modules, per-layer σ and
filter size, subsampling links with r and shift), and the :class:`~njet_convert.report.ConversionReport` as
``model.conversion_report``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample
from njet_layers.basis import is_tensor_basis

from .config import ConvertConfig, OrderSpec
from .errors import first_line
from .order_advice import recommend_orders
from .record import ATTR, ConversionRecord, LayerEntry, SubsampleEntry, architecture_of, original_shapes
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
    pin_flattened_maps,
    restore_unused,
    trace,
)

__all__ = ["CALIBRATION_LIMIT", "CheckedCalibration", "checked_calibration", "convert", "rewrite"]

CALIBRATION_LIMIT = 1e6  # largest |value| accepted in calibration inputs
_CARRY_ATTRS = ("pretrained_cfg", "default_cfg", "num_classes", "num_features", "feature_info", "head_hidden_size")


class _Default:
    """Marks a keyword argument of :func:`convert` that the caller did not give."""

    def __repr__(self) -> str:
        return "<ConvertConfig's value>"


_DEFAULT: Any = _Default()


def convert(
    model: nn.Module,
    order: OrderSpec = _DEFAULT,
    k: float = _DEFAULT,
    calibration: Tensor | Iterable | None = None,
    subsample: str = _DEFAULT,
    include: Any = _DEFAULT,
    exclude: Any = _DEFAULT,
    *,
    config: ConvertConfig | None = None,
    source: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Convert ``model`` to an N-Jet network; returns ``(njet_model, report)``.

    Args:
        model: any ``nn.Module`` CNN (timm, torchvision, custom). Not modified.
        order, k, subsample, include, exclude: see :class:`~njet_convert.config.ConvertConfig` (its defaults:
            order 3, k 2, ``"safe"``, all, none).
        calibration: unlabeled inputs for the data-aware fit: a float tensor ``[N, C, H, W]`` or an iterable of
            batches (tensors or ``(tensor, label)`` tuples); ``"synthetic"``: inputs synthesised from the model's
            batch-norm statistics (:mod:`njet_convert.data.synthetic`), for users without data. ``None``: plain
            least-squares fits. With ``recover=`` (see :class:`ConvertConfig`) the network is then distilled towards
            the original on these images, a held-out slice of them deciding which state is kept.
        config: a :class:`ConvertConfig`. One rule: every argument given explicitly (these and ``**options``)
            wins over the config's field, even when it equals the default; the others come from ``config``.
        source: the architecture for :func:`njet_convert.load`: ``"timm:<name>"``, ``"torchvision:<name>"``,
            ``"package.module:callable"`` or ``{"name": ..., "kwargs": {...}}``; default: detected for timm models,
            else the model's class as ``module:Class`` (no arguments).
        **options: further :class:`ConvertConfig` fields (``sigma_grid``, ``interpolation``, ``match_size``, ...).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = _config(config, order, k, subsample, include, exclude, options)
    _check_calibration(calibration)
    if isinstance(calibration, str) and cfg.fit:  # "synthetic": inputs made from the model's batch-norm statistics
        calibration = _synthetic_calibration(model, cfg)
    data = checked_calibration(calibration, model) if calibration is not None and cfg.fit else None
    start = time.perf_counter()
    report = ConversionReport(options=cfg.to_dict())
    report.params_before = _count(model)
    out, state = rewrite(model, cfg, report, example=_example_input(model, cfg, calibration))
    if data is not None:
        _calibrate(out, model, state, data, cfg)
    finalize_subsampling(out, state.strides)
    _finish_report(out, state, report)
    report.recommendations = recommend_orders(report, cfg.order, {n: model.get_submodule(o)
                                                                  for n, o in state.pairs.items()})
    report.seconds = time.perf_counter() - start
    setattr(out, ATTR, _record(out, model, state, source))
    out.conversion_report = report  # type: ignore[assignment]
    return out, report


def _config(config, order, k, subsample, include, exclude, options) -> ConvertConfig:
    if config is not None and not isinstance(config, ConvertConfig):
        raise ValueError(f"config must be a ConvertConfig, got {type(config).__name__}")
    explicit = {"order": order, "k": k, "subsample": subsample, "include": include, "exclude": exclude}
    overrides = {n: v for n, v in explicit.items() if v is not _DEFAULT}
    overrides.update(options)
    return (config or ConvertConfig()).with_overrides(**overrides)


def _check_calibration(data: Any) -> None:
    if data is None or (isinstance(data, str) and data == "synthetic"):
        return
    if torch.is_tensor(data):
        if data.dim() != 4 or not data.is_floating_point() or data.shape[0] == 0:
            raise ValueError(f"calibration must be a float tensor [N, C, H, W] with N >= 1, got shape "
                             f"{tuple(data.shape)} dtype {data.dtype}")
        return
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise ValueError(f"calibration must be a tensor [N, C, H, W] or an iterable of batches, got "
                         f"{type(data).__name__}")


def checked_calibration(data: Tensor | Iterable, model: nn.Module) -> Tensor | CheckedCalibration:
    """``data`` checked against ``model`` (a tensor at once, an iterable batch by batch as the fit reads it)."""
    if torch.is_tensor(data):
        CheckedCalibration([data], model)._check(0, data)
        return data
    return CheckedCalibration(data, model)


class CheckedCalibration:
    """Re-iterable calibration batches, each checked before the fit sees it: a float tensor ``[B, C, H, W]`` (or
    ``(tensor, label)``) of the model's dtype, finite, with the channels of the first batch; the first batch must run
    through the original model (one sample, eval mode, modes restored). Any problem: ``ValueError`` in one line."""

    def __init__(self, data: Tensor | Iterable, model: nn.Module) -> None:
        self.model = model
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        self.source = data if iter(data) is not data else list(data)  # one-shot iterators are read once
        self.channels: int | None = None

    def __iter__(self):
        for i, item in enumerate(self.source):
            batch = item[0] if isinstance(item, tuple | list) and item else item
            self._check(i, batch)
            yield item

    def _check(self, i: int, batch: Any) -> None:
        where = f"calibration batch {i}"
        if not torch.is_tensor(batch) or batch.dim() != 4 or not batch.is_floating_point() or batch.shape[0] == 0:
            got = f"shape {tuple(batch.shape)} dtype {batch.dtype}" if torch.is_tensor(batch) else type(batch).__name__
            raise ValueError(f"{where} must be a non-empty float tensor [B, C, H, W] (or (tensor, label)), got {got}")
        if self.dtype is not None and batch.dtype != self.dtype:
            raise ValueError(f"{where} has dtype {batch.dtype}, the model's parameters are {self.dtype}")
        if not bool(torch.isfinite(batch).all()):
            raise ValueError(f"{where} holds NaN or infinite values")
        peak = float(batch.abs().max())
        if peak > CALIBRATION_LIMIT:  # squares in the fit's covariances would overflow float32
            raise ValueError(f"{where} holds values up to {peak:.3g} (limit {CALIBRATION_LIMIT:g}): give inputs "
                             "scaled like the model's (normalised images lie within about ±10)")
        if self.channels is None:
            self._probe(batch)
            self.channels = batch.shape[1]
        elif batch.shape[1] != self.channels:
            raise ValueError(f"{where} has {batch.shape[1]} channels, the first batch had {self.channels}")

    def _probe(self, batch: Tensor) -> None:
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(batch[:1])
        except RuntimeError as err:
            message = first_line(err)
            raise ValueError(f"calibration batch of shape {tuple(batch.shape)} does not fit the model: "
                             f"{message[:200]}") from None
        finally:
            for m, mode in modes.items():
                m.train(mode)


def rewrite(model: nn.Module, cfg: ConvertConfig, report: ConversionReport,
            sigma_for: Mapping[str, float] | None = None, check_rules: bool = True, *,
            example: Tensor | None = None, pinned: Mapping[str, Any] | None = None) -> tuple[nn.Module, SurgeryState]:
    """The surgery on a deep copy of ``model``, then the kernel fit (unless ``cfg.fit`` is False): surgery builds
    the structure, :func:`njet_convert.fitting.fit_converted` fills it.

    ``example`` (batch 1) measures the maps that flatten heads need pinned; ``pinned`` gives them (``load``).
    """
    work = copy.deepcopy(model)
    gm, reason = trace(work)
    if gm is None:
        report.traced = False
        report.untraced.append(f"<whole model: {reason}>")
    target = gm if gm is not None else work
    state = SurgeryState(model=target, gm=gm, cfg=cfg, report=report, selector=Selector(cfg.include, cfg.exclude),  # type: ignore[arg-type]
                         sigma_for=dict(sigma_for or {}))
    if gm is not None:
        state.in_graph = in_graph_modules(gm)
        state.tokens = fixed_tokens(gm)
    for step in (SwapConvs, SwapPools, FunctionalPools, PlaceSubsampling):
        target = step(state).apply(target)
    if cfg.fit:
        from .fitting import fit_converted

        fit_converted(target, state)
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
    state.pinned = pin_flattened_maps(state, example, pinned)
    report.pinned = {n: list(size) for n, size in state.pinned.items()}
    return target, state


def _example_input(model: nn.Module, cfg: ConvertConfig, calibration: Any) -> Tensor | None:
    """One input for measuring feature-map sizes: the calibration's first image, else zeros of the input size."""
    param = next(model.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))
    if torch.is_tensor(calibration):
        return calibration[:1].to(device=device, dtype=dtype)
    size = cfg.input_size
    pretrained = getattr(model, "pretrained_cfg", None)
    if size is None and isinstance(pretrained, Mapping) and pretrained.get("input_size"):
        size = tuple(int(v) for v in pretrained["input_size"])  # type: ignore[assignment]
    return torch.zeros(1, *size, dtype=dtype, device=device) if size else None


def _synthetic_calibration(model: nn.Module, cfg: ConvertConfig) -> Tensor:
    """``SYNTHETIC_IMAGES`` inputs synthesised from ``model``'s batch-norm statistics (:mod:`.data.synthetic`), at
    ``cfg.input_size`` or timm's ``pretrained_cfg["input_size"]``."""
    from .data.synthetic import SYNTHETIC_IMAGES, synthesize

    size = cfg.input_size
    pretrained = getattr(model, "pretrained_cfg", None)
    if size is None and isinstance(pretrained, Mapping) and pretrained.get("input_size"):
        size = tuple(int(v) for v in pretrained["input_size"])  # type: ignore[assignment]
    if size is None:
        raise ValueError("calibration='synthetic' needs the input size: pass input_size=(C, H, W)")
    progress = (lambda line: print(line, flush=True)) if cfg.progress else None
    return synthesize(model, SYNTHETIC_IMAGES, tuple(size), progress=progress)  # type: ignore[arg-type]


def _images_of(data) -> Tensor:
    """The fit data (a tensor or a list of batches) as one tensor."""
    if torch.is_tensor(data):
        return data
    return torch.cat([item[0] if isinstance(item, tuple | list) else item for item in data])


def _recover(out: nn.Module, original: nn.Module, state: SurgeryState, train: Tensor, held: Tensor,
             reference: Tensor, cfg: ConvertConfig) -> None:
    """Distil ``out`` towards ``original`` (:mod:`.recovery`), keeping the best state on the held-out slice."""
    from .fidelity import stage_fidelity
    from .recovery import recover

    progress = (lambda line: print(line, flush=True)) if cfg.progress else None
    result = recover(out, original, train, held, cfg.recover, progress=progress)
    state.report.fidelity["recovered"] = stage_fidelity(out, reference, held)
    state.report.recovery = {"steps": result.steps, "best_step": result.best_step, "seconds": result.seconds,
                             "start": list(result.start), "end": list(result.end)}


def _calibrate(out: nn.Module, original: nn.Module, state: SurgeryState, data, cfg: ConvertConfig) -> None:
    """Calibrate on ``data`` less its held-out slice, and measure the fidelity per stage on that slice."""
    from .fidelity import logits, stage_fidelity
    from .fitting import CalibrationOptions
    from .fitting.calibration import calibrate_layers
    from .fitting.calibration.holdout import split_holdout
    from .fitting.kernel_fit import layer_conditioning

    modules = dict(out.named_modules())
    exact = {n for n in state.pairs if is_tensor_basis(modules[n].order)}
    if exact:
        state.report.notes.append(f"calibration skipped for {len(exact)} conv(s) converted with order 'exact': "
                                  "their fit is already exact")
    pairs = {n: o for n, o in state.pairs.items() if n not in state.no_calibration and n not in exact}
    if not pairs:
        return
    opts = cfg.calibration_options if cfg.calibration_options is not None else CalibrationOptions()
    fit_data, held = split_holdout(data, opts.holdout, opts.holdout_min)
    measured = held is not None and _tensor_output(original, held)
    held_out = (held, logits(original, held)) if held is not None and measured else None
    if held_out is not None:
        state.report.fidelity["plain"] = stage_fidelity(out, held_out[1], held_out[0])
    results = {r.name: r for r in calibrate_layers(out, original, pairs, fit_data, progress=cfg.progress,
                                                   options=opts)}
    state.report.calibrated = True
    if held_out is not None:
        state.report.fidelity["calibrated"] = stage_fidelity(out, held_out[1], held_out[0])
    if cfg.recover is not None:
        if held_out is None or held_out[1].dim() != 2:
            raise ValueError("recover needs a classifier (logits [N, classes]) and a held-out slice of the "
                             "calibration images (calibration_options.holdout > 0, at least 2 images)")
        _recover(out, original, state, _images_of(fit_data), *held_out, cfg)
    for record in state.report.layers:
        result = results.get(record.name)
        if result is not None and result.fit is not None:
            record.fit_error = float(result.fit.error)
            record.condition, record.rank, record.fragile = layer_conditioning(modules[record.name])
            how = ", ".join(x for x in (result.strategy, result.detail, result.skipped) if x)
            record.note = f"{record.note} calibrated ({how})".strip()


@torch.no_grad()
def _tensor_output(model: nn.Module, images: Tensor) -> bool:
    """Whether ``model`` gives a tensor (not a dict or tuple), so that its fidelity can be measured."""
    mode = model.training
    try:
        return torch.is_tensor(model.eval()(images[:1]))
    finally:
        model.train(mode)


def _finish_report(out: nn.Module, state: SurgeryState, report: ConversionReport) -> None:
    modules = dict(out.named_modules())
    for record in report.layers:
        layer = modules[record.name]
        record.sigma, record.kernel_size, record.order = float(layer.sigma.detach()), layer.kernel_size, layer.order
    for record in report.subsampling:  # type: ignore[assignment]
        ss = modules[record.name]
        record.factor, record.r, record.shift = ss.factor, ss.r, ss.shift  # type: ignore[attr-defined]
    report.params_after = _count(out)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _record(out: nn.Module, model: nn.Module, state: SurgeryState,
            source: str | Mapping[str, Any] | None) -> ConversionRecord:
    modules = dict(out.named_modules())
    names = {id(m): n for n, m in modules.items()}
    layers = {n: LayerEntry(float(m.sigma.detach()), m.kernel_size, list(m.crop), list(m.stride))
              for n, m in modules.items() if isinstance(m, NJetConv2d)}
    subs = {n: SubsampleEntry(names.get(id(m.source)) if m.source is not None else None, m.r, state.strides.get(n),
                              m.rounding, m.mode, m.shift)
            for n, m in modules.items() if isinstance(m, SafeSubsample)}
    deferred = source is None and type(model).__module__.startswith("torchvision.models")
    param = next((p for p in out.parameters() if p.is_floating_point()), None)
    return ConversionRecord(
        source=architecture_of(model, source, resolve=False),
        options=ConversionRecord.options_of(state.cfg),
        selected=sorted(state.selector.accepted),
        pairs=dict(state.pairs),
        layers=layers,
        subsampling=subs,
        match_sizes=[n for n, m in modules.items() if isinstance(m, MatchSize)],
        pinned={n: list(size) for n, size in state.pinned.items()},
        training=bool(out.training),
        traced=state.gm is not None,
        input_size=list(state.cfg.input_size) if state.cfg.input_size else None,
        dtype=str(param.dtype).removeprefix("torch.") if param is not None else "float32",
        # the torchvision builder is looked up by save() (building candidates costs ~0.1-1 s)
        deferred_shapes=original_shapes(model) if deferred else None,
    )
