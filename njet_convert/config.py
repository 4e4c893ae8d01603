"""ConvertConfig: the typed options of :func:`njet_convert.convert` (one object instead of loose keyword arguments)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from torch import nn

from njet_layers.scale import DEFAULT_SIGMA_BOUNDS, positive_scalar

__all__ = ["CONV_KINDS", "EXACT", "SUBSAMPLE_MODES", "ConvertConfig", "LayerOrder", "OrderSpec", "Rule",
           "describe_order", "parse_order"]

SUBSAMPLE_MODES = ("safe", "keep")
_INTERPOLATION = ("nearest", "bilinear", "bicubic", "area")
_MATCH = ("auto", "always", "never")

# A selection rule: a module type, a qualified-name glob ("layer1.*") or regex ("re:layer[12]\\..*"), or a predicate
# called as ``rule(name, module) -> bool``.
Rule = type | str | re.Pattern | Callable[[str, nn.Module], bool]

# Kinds of conv an order rule can name instead of a name pattern (see parse_order).
CONV_KINDS = ("depthwise", "grouped", "dense", "pointwise")

# The order that asks for a lossless conversion: per conv, the tensor-product basis of its own kernel's frame
# (docs/design.md, "Lossless conversion").
EXACT = "exact"

LayerOrder = int | Literal["exact"]
"""The order of one conv: the paper's jet of that order, or ``"exact"``."""

OrderSpec = LayerOrder | dict[str, LayerOrder]
"""An order for every conv, or per-layer rules ``{rule: order}`` whose first match gives a conv's order."""


@dataclass
class ConvertConfig:
    """Options of a conversion.

    Attributes:
        order: highest derivative order of the paper's jet basis (3 in the paper); ``"exact"``: per conv the
            tensor-product basis of its own kernel size, which reproduces the kernel exactly at the original
            parameter count (docs/design.md, "Lossless conversion"); or per-layer rules: a mapping
            ``{rule: order}`` whose first matching rule gives a conv's order, e.g. ``{"depthwise": "exact", "*": 3}``
            (rules: a conv kind from ``CONV_KINDS``, a qualified-name glob or a ``re:`` regex), or the same as text
            (``"depthwise=exact,*=3"`` or JSON); see :func:`parse_order`.
        k: filter extent in σ (filter size ``2 * ceil(k * sigma) + 1``; 2 in the paper).
        subsample: ``"safe"`` turns strides and strided pools into stride 1 + :class:`~njet_layers.SafeSubsample`
            (sizes follow σ in training); ``"keep"`` leaves strides and pools as they are.
        include: convs/pools to convert (types, name globs, ``re:`` regexes, compiled patterns or predicates);
            ``None`` means all. A rule that matches nothing raises ``ValueError``.
        exclude: convs/pools to leave as they are (same rule kinds); wins over ``include``.
        sigma_grid: σ values the plain fit searches (``None``: the fitting module's default grid per kernel size).
        interpolation: the :class:`~njet_layers.SafeSubsample` mode; ``"nearest"`` reproduces the strided grid.
        match_size: :class:`~njet_layers.MatchSize` at joins: ``"auto"`` only where grouping subsampling points
            cannot guarantee equal sizes, ``"always"`` at every join fed by a subsampling point, ``"never"``.
        learn_sigma: whether the new layers' σ are trainable.
        r: the safe-subsampling hyper-parameter (paper: 4). A converted point's factor is
            ``stride * 2 ** ((sigma - sigma0) / r)``: the original stride at the fitted σ₀, and the paper's
            sensitivity ``d log2(factor) / d sigma = 1 / r`` whatever σ₀ is.
        sigma: σ₀ of layers built new rather than fitted: every N-Jet layer of a structure-only conversion
            (``fit=False``; the paper initialises σ to 1) and subsampling points with no N-Jet layer to follow.
            ``None``: structure-only layers get the σ whose filter just covers the original kernel, own-σ points 1.
        calibration_options: extra options for the data-aware fit (``njet_convert.fitting.CalibrationOptions``).
        recover: after the calibration, distil the converted network towards the original on the calibration images
            (:mod:`njet_convert.recovery`): seconds of wall-clock budget, or a ``RecoverConfig``; ``None``/0: off.
        progress: print calibration progress.
        fit: fit the kernels (``False``: structure only, as :func:`njet_convert.load` does before loading weights).
        input_size: ``(C, H, W)`` of a typical input. Needed only by nets that flatten a feature map into a Linear
            layer (see :mod:`njet_convert.surgery.heads`); default: the calibration's, else timm's
            ``pretrained_cfg["input_size"]``.
    """

    order: OrderSpec = 3
    k: float = 2.0
    subsample: Literal["safe", "keep"] = "safe"
    include: Sequence[Rule] | Rule | None = None
    exclude: Sequence[Rule] | Rule | None = None
    sigma_grid: Sequence[float] | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = "nearest"
    match_size: Literal["auto", "always", "never"] = "auto"
    learn_sigma: bool = True
    r: float = 4.0
    sigma: float | None = None
    calibration_options: Any = None
    recover: Any = None
    progress: bool = False
    fit: bool = True
    input_size: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self.order = parse_order(self.order)
        self.k = positive_scalar("k", self.k)
        _check_k(self.k)
        self.r = positive_scalar("r", self.r)
        self.sigma = None if self.sigma is None else positive_scalar("sigma", self.sigma)
        lo, hi = DEFAULT_SIGMA_BOUNDS
        if self.sigma is not None and not lo <= self.sigma <= hi:
            raise ValueError(f"sigma must lie in [{lo:g}, {hi:g}] (the N-Jet layers' σ bounds), got {self.sigma!r}")
        if self.subsample not in SUBSAMPLE_MODES:
            raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got {self.subsample!r}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {_INTERPOLATION}, got {self.interpolation!r}")
        if self.match_size not in _MATCH:
            raise ValueError(f"match_size must be one of {_MATCH}, got {self.match_size!r}")
        if self.sigma_grid is not None:
            grid = list(self.sigma_grid)
            if not grid or any(not isinstance(s, int | float) or not s > 0 or not math.isfinite(s) for s in grid):
                raise ValueError(f"sigma_grid must be a non-empty list of positive numbers, got {self.sigma_grid!r}")
            self.sigma_grid = [float(s) for s in grid]
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
                raise ValueError(f"input_size must be three positive integers (C, H, W), got {self.input_size!r}")
            self.input_size = size
        self.recover = _recover(self.recover)
        self.include = _rules(self.include, "include")
        self.exclude = _rules(self.exclude, "exclude")

    def with_overrides(self, **overrides: Any) -> ConvertConfig:
        """A copy with ``overrides`` applied (unknown names raise ``ValueError``)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown conversion option {unknown[0]!r} (known: {', '.join(sorted(names))})")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(overrides)
        return ConvertConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly options (selection rules as strings; predicates by qualified name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("include", "exclude",
                                                                                      "calibration_options", "recover")}
        out["recover"] = asdict(self.recover) if self.recover is not None else None
        out["include"] = None if self.include is None else [describe_rule(r) for r in self.include]  # type: ignore[union-attr]
        out["exclude"] = None if self.exclude is None else [describe_rule(r) for r in self.exclude]  # type: ignore[union-attr]
        opts = self.calibration_options
        out["calibration_options"] = asdict(opts) if hasattr(opts, "__dataclass_fields__") else None
        return out


def _recover(value: Any) -> Any:
    """``None`` (off), or a ``RecoverConfig`` (a number is its budget in seconds)."""
    from .recovery import RecoverConfig

    if value is None or isinstance(value, RecoverConfig):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"recover must be seconds (a non-negative number) or a RecoverConfig, got {value!r}")
    return RecoverConfig(seconds=float(value)) if value > 0 else None


def _rules(value: Any, name: str) -> list[Rule] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    for rule in items:
        ok = isinstance(rule, type | str | re.Pattern) or callable(rule)
        if not ok or (isinstance(rule, type) and not issubclass(rule, nn.Module)):
            raise ValueError(f"{name}: rule {rule!r} must be a module type, a name glob/regex or a predicate")
        if isinstance(rule, str) and rule.startswith("re:"):
            try:
                re.compile(rule[3:])
            except re.error as err:
                raise ValueError(f"{name}: bad regex {rule!r}: {err}") from None
    return items


def describe_rule(rule: Rule) -> str:
    """A readable, stable name of a selection rule (used in errors and the saved config)."""
    if isinstance(rule, type):
        return f"type:{rule.__module__}.{rule.__qualname__}"
    if isinstance(rule, re.Pattern):
        return f"re:{rule.pattern}"
    if isinstance(rule, str):
        return rule
    return f"predicate:{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', repr(rule))}"


def parse_order(value: Any) -> OrderSpec:
    """An order, or order rules, checked: a non-negative int or ``"exact"``; a mapping ``{rule: order}`` (rules are
    conv kinds of ``CONV_KINDS``, name globs or ``re:`` regexes; the first that matches a conv gives its order, a
    conv that no rule matches is a ``ValueError`` at conversion); or text: ``"3"``, ``"exact"``,
    ``"depthwise=exact,*=3"`` or a JSON object. ``ValueError`` in one line otherwise."""
    if isinstance(value, str):
        value = _order_text(value)
    if isinstance(value, dict):
        if not value:
            raise ValueError("order rules must not be empty")
        rules = {}
        for rule, order in value.items():
            if not isinstance(rule, str) or not rule:
                raise ValueError(f"order rule {rule!r} must be a conv kind {CONV_KINDS}, a name glob or a 're:' regex")
            if rule.startswith("re:"):
                try:
                    re.compile(rule[3:])
                except re.error as err:
                    raise ValueError(f"order rule: bad regex {rule!r}: {err}") from None
            rules[rule] = _order_value(order, f"order of rule {rule!r}")
        return rules
    return _order_value(value, "order")


def _order_value(value: Any, what: str) -> LayerOrder:
    from njet_layers.basis import MAX_ORDER

    if isinstance(value, str) and value.strip().lower() == EXACT:
        return "exact"
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ORDER:
        raise ValueError(f"{what} must be an integer from 0 to {MAX_ORDER} (the paper uses 2..4) or 'exact', "
                         f"got {value!r}")
    return value


def _order_text(text: str) -> LayerOrder | dict[str, Any]:
    text = text.strip()
    if text.lower() == EXACT:
        return "exact"
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError as err:
            raise ValueError(f"order: bad JSON {text!r}: {err}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"order: JSON must be an object of rule -> order, got {text!r}")
        return loaded
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"order must be an integer, 'exact' or rules like 'depthwise=exact,*=3', got {text!r}"
                             ) from None
    rules: dict[str, Any] = {}
    for part in text.split(","):
        rule, sep, order = part.strip().rpartition("=")
        try:
            if not sep:
                raise ValueError
            rules[rule.strip()] = EXACT if order.strip().lower() == EXACT else int(order)
        except ValueError:
            raise ValueError(f"order rule {part.strip()!r} must be RULE=ORDER with an integer order or 'exact'"
                             ) from None
    return rules


def describe_order(order: OrderSpec) -> str:
    """``3``, ``exact`` or ``depthwise=exact,*=3``: the order as the CLI takes it."""
    return str(order) if not isinstance(order, dict) else ",".join(f"{r}={o}" for r, o in order.items())


def _check_k(k: float) -> None:
    """The layer library's limit, checked before the fit allocates filters (k=1e6 once asked for 18 TB)."""
    from njet_layers.njet_conv import MAX_K

    if k > MAX_K:
        raise ValueError(f"k must be at most {MAX_K:g} (larger filters than the layers allow; the paper uses 2), "
                         f"got {k:g}")
