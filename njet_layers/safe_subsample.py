"""Safe subsampling: feature maps shrink as a function of σ instead of by a hard-coded stride or pool.

The paper's law: a map of size ``s`` becomes ``s * (1/2) ** (sigma / r)``. A coarse layer (large σ) carries
no detail that a smaller map would lose, so it can be subsampled safely. We follow the paper; the authors'
public code uses a different law (``s * min(1, r * 2 ** -sigma)``).

A converted network replaces a stride-``t`` conv or pool whose σ₀ was fitted to a pretrained kernel; its point
uses the same law shifted to start at the original stride: ``s * (1/2) ** (sigma / r + shift)`` with
``shift = log2(t) - sigma0 / r``, i.e. the factor ``t * 2 ** ((sigma - sigma0) / r)``. The sensitivity to σ stays
the paper's (``d log2(factor) / d sigma = 1 / r``) whatever σ₀ is (see :meth:`SafeSubsample.start_at`).

Such an *anchored* point also keeps the original's sizes and sampling grid while σ stays near σ₀, in both
directions: its output size is ``ceil(s / factor - 1 / (2t))`` (``floor(s / factor + 1 / (2t))``), which equals
``ceil(s / t)`` (``floor(s / t)``) at the stride but changes only when the exact size has moved by half a sample,
and ``nearest`` keeps the pixels ``round(i * factor)``, ``i * t`` at the stride. Plain ``ceil`` and ``floor(i *
factor)`` would change a size or the last rows the moment σ drops below σ₀ by any amount (measured on a converted
MNIST CNN: a log σ move of −0.03 in one layer raised the loss from 0.16 to 1.1).

A converted point may instead follow σ *covariantly* (``law="covariant"``): ``factor = t * sigma / sigma0``, i.e.
``2 ** (log2(sigma) + shift)`` with ``shift = log2(t) - log2(sigma0)``. σ doubled (the filter dilated twice, the
scale-space meaning of σ) doubles the factor, so a network shown a zoomed input can give the layers after the point
the map sizes they were trained on. Its sensitivity is one octave of factor per octave of σ at every σ
(``d log2(factor) / d log2(sigma) = 1``), the anchored rounding and grid above keep sizes still near σ₀, and σ's
own bounds bound the factor. The paper's law stays the default, and the only law of networks built as N-Jet
(docs/design.md, "Resolution learning from a converted start").

An anchored point may also *hold* its factor (:meth:`SafeSubsample.hold_factor_`): within ``hold`` octaves of a
power-of-two multiple of its anchor (2, 4, 1 for a stride-2 point: the factors the resolution search moves
between) the factor is that multiple, so ``nearest`` keeps a regular grid while σ drifts a little; outside, the
law. The law's sensitivity holds everywhere but at a zone's edge, where the factor steps by ``hold`` octaves. Why:
a stride-2 stem whose σ drifted from 0.47 to 0.28 in fine-tuning subsampled by 1.93, a grid whose rows step by 1
every fourteenth row, and MobileNetV2 at 2× ended 2.3 held-out points below σ frozen on the same seed
(docs/design.md, "Resolution learning from a converted start").
"""

from __future__ import annotations

import math
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dispatch import is_tracing
from .scale import DEFAULT_SIGMA_BOUNDS, bounded_sigma, check_sigma_bounds, positive_scalar

__all__ = ["LAWS", "Law", "MatchSize", "SafeSubsample", "resize", "safe_output_size"]

Mode = Literal["nearest", "bilinear", "bicubic", "area"]
Law = Literal["paper", "covariant"]
LAWS = ("paper", "covariant")
Rounding = Literal["ceil", "floor", "round"]
_MODES = ("nearest", "bilinear", "bicubic", "area")
_ROUNDINGS = {"ceil": math.ceil, "floor": math.floor, "round": round}
_EPS = 1e-6  # so that 7 / 2**(1.0000001) still rounds like 7 / 2


def safe_output_size(size: int, factor: float, rounding: Rounding = "ceil", margin: float = 0.0) -> int:
    """``rounding(size / factor)``, never below 1 px. ``ceil`` reproduces a stride-``factor`` conv with 'same'
    padding (``ceil(7 / 2) = 4``), ``floor`` a 'valid' pool (``floor(7 / 2) = 3``), ``round`` the nearest size.
    ``margin`` (< 1 / factor) moves the ``ceil`` / ``floor`` thresholds by that many output pixels: ``ceil(x -
    margin)``, ``floor(x + margin)`` (an anchored SafeSubsample uses ``1 / (2 * stride)``)."""
    value = size / factor
    margin = max(margin, _EPS)
    if rounding == "ceil":
        out = math.ceil(value - margin)
    elif rounding == "floor":
        out = math.floor(value + margin)
    else:
        out = round(value)
    return max(1, int(out))


def resize(x: Tensor, size: tuple[int, int], mode: Mode, factor: tuple[float, float], antialias: bool,
           offset: float = _EPS) -> Tensor:
    """Resize ``x`` to ``size``. ``nearest`` keeps the pixels at ``floor(i * factor + offset)``: exactly a strided
    conv's or pool's sampling grid when the factor is an integer (``offset=0.5``: the pixel nearest ``i * factor``,
    which stays on that grid when the factor moves a little either way)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        rows = _sample_index(size[0], factor[0], x.shape[-2], x.device, offset)
        cols = _sample_index(size[1], factor[1], x.shape[-1], x.device, offset)
        return x.index_select(-2, rows).index_select(-1, cols)
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def _sample_index(count: int, factor: float, limit: int, device: torch.device, offset: float = _EPS) -> Tensor:
    idx = torch.floor(torch.arange(count, dtype=torch.float64) * factor + offset).long().clamp_(max=limit - 1)
    return idx.to(device)


class SafeSubsample(nn.Module):
    """Subsample a feature map by ``2 ** (sigma / r + shift)`` per spatial axis (``shift = 0``: the paper's law).

    σ comes from one of three places: a linked :class:`NJetConv2d` (``source=``; the layer whose resolution
    decides the map size — not registered as a submodule, so it is neither duplicated in ``state_dict`` nor in
    ``parameters()``), this module's own learned parameter (``learn_sigma=True``), or a fixed value.

    Args:
        r: the safe-subsampling hyper-parameter (paper: 4): σ must grow by ``r`` to halve the map once more.
        shift: a constant added to ``sigma / r`` in the exponent (0 in the paper). A converter sets it with
            :meth:`start_at` so the factor equals the original stride at the fitted σ.
        law: ``"paper"`` (factor ``2 ** (sigma / r + shift)``) or ``"covariant"`` (``2 ** (log2(sigma) + shift)``:
            the factor proportional to σ; for converted points, see the module docstring).
        sigma: fixed or initial σ when there is no ``source``.
        source: module with a ``sigma`` attribute (an ``NJetConv2d``) whose σ drives this subsampling.
        mode: ``nearest`` (strided sampling grid), ``bilinear``, ``bicubic`` or ``area``.
        rounding: how the output size is rounded (see :func:`safe_output_size`).
        antialias: low-pass before ``bilinear``/``bicubic`` downsampling.
    """

    _source: nn.Module | None  # set with object.__setattr__: a linked module, not a submodule

    def __init__(
        self,
        r: float = 4.0,
        sigma: float | None = None,
        source: nn.Module | None = None,
        *,
        learn_sigma: bool = False,
        mode: Mode = "nearest",
        rounding: Rounding = "ceil",
        antialias: bool = False,
        sigma_bounds: tuple[float, float] = DEFAULT_SIGMA_BOUNDS,
        shift: float = 0.0,
        law: Law = "paper",
    ) -> None:
        super().__init__()
        r = positive_scalar("r", r)
        sigma = None if sigma is None else positive_scalar("sigma", sigma)
        if source is not None and not hasattr(source, "sigma"):
            raise ValueError(f"source must have a 'sigma' attribute (an NJetConv2d), got {type(source).__name__}")
        top = max([check_sigma_bounds(sigma_bounds)[1], *getattr(source, "sigma_bounds", ())])
        if top / r >= 1000:  # 2 ** (sigma / r) leaves float range near 2 ** 1024
            raise ValueError(f"r={r:g} is too small: the factor 2 ** (sigma / r) overflows at sigma={top:g}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {tuple(_ROUNDINGS)}, got {rounding!r}")
        if (source is None) == (sigma is None):
            raise ValueError("give exactly one of sigma= (own or fixed σ) and source= (a linked NJetConv2d)")
        if learn_sigma and source is not None:
            raise ValueError("learn_sigma=True needs its own sigma=, not a linked source=")
        if not math.isfinite(shift):
            raise ValueError(f"shift must be a finite number, got {shift!r}")
        if law not in LAWS:
            raise ValueError(f"law must be one of {LAWS}, got {law!r}")
        self.law: Law = law
        self.r, self.mode, self.rounding, self.antialias = float(r), mode, rounding, antialias
        self.shift = float(shift)
        self.anchor: float | None = None  # the original stride of a converted point (set by start_at)
        self.hold = 0.0  # octaves around anchor · 2**m within which the factor is held there (hold_factor_)
        self.sigma_bounds = check_sigma_bounds(sigma_bounds)
        object.__setattr__(self, "_source", source)
        if sigma is not None:
            if not sigma > 0 or not math.isfinite(sigma):
                raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
            if not self.sigma_bounds[0] <= sigma <= self.sigma_bounds[1]:
                raise ValueError(f"sigma={sigma!r} lies outside sigma_bounds={self.sigma_bounds!r}")
            log_sigma = torch.tensor(math.log(sigma))
            if learn_sigma:
                self.log_sigma = nn.Parameter(log_sigma)
            else:
                self.register_buffer("log_sigma", log_sigma)

    @property
    def source(self) -> nn.Module | None:
        """The linked module whose σ drives this subsampling, if any."""
        return self._source

    def link(self, source: nn.Module) -> None:
        """Drive this subsampling by ``source.sigma`` from now on."""
        if not hasattr(source, "sigma"):
            raise ValueError(f"source must have a 'sigma' attribute, got {type(source).__name__}")
        object.__setattr__(self, "_source", source)

    @property
    def sigma(self) -> Tensor:
        if self._source is not None:
            return self._source.sigma  # type: ignore[return-value]
        return bounded_sigma(self.log_sigma, self.sigma_bounds)

    def start_at(self, factor: float, law: Law | None = None) -> None:
        """Shift the law (``law``: the module's own unless given) so that the factor is ``factor`` (the original
        stride) at the current σ (σ₀): the paper's ``shift = log2(factor) - sigma0 / r`` makes the factor ``factor *
        2 ** ((sigma - sigma0) / r)``, the covariant ``shift = log2(factor) - log2(sigma0)`` makes it ``factor *
        sigma / sigma0``; and anchor sizes and sampling grid at that stride (see the module docstring)."""
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"factor must be a positive finite number, got {factor!r}")
        if law is not None and law not in LAWS:
            raise ValueError(f"law must be one of {LAWS}, got {law!r}")
        self.law = law or self.law
        self.shift = math.log2(factor) - self._exponent(float(self.sigma.detach()))
        self.anchor = float(factor)

    def use_law_(self, law: Law) -> SafeSubsample:
        """Switch to ``law`` keeping the current factor, sizes and anchor (a converted point starts covariant by
        ``use_law_("covariant")`` right after conversion: the network is unchanged, only how the factor will follow
        σ from now on)."""
        if law not in LAWS:
            raise ValueError(f"law must be one of {LAWS}, got {law!r}")
        factor = 2.0 ** (self._exponent(float(self.sigma.detach())) + self.shift)
        self.law = law
        self.shift = math.log2(factor) - self._exponent(float(self.sigma.detach()))
        return self

    def hold_factor_(self, octaves: float) -> SafeSubsample:
        """Hold the factor at ``anchor * 2**m`` (the nearest integer ``m``) while the law's factor lies within
        ``octaves`` of it (``0 <= octaves < 0.5``; 0: the law alone). Only an anchored (converted) point holds;
        sizes and grid are unchanged at the anchor, so the network computes what it did (see the module doc)."""
        if isinstance(octaves, bool) or not isinstance(octaves, int | float) or not 0.0 <= octaves < 0.5:
            raise ValueError(f"hold must be a number of octaves in [0, 0.5), got {octaves!r}")
        self.hold = float(octaves)
        return self

    def _exponent(self, sigma: float) -> float:
        """``log2(factor) - shift``: ``sigma / r`` (the paper's law) or ``log2(sigma)`` (covariant)."""
        return math.log2(sigma) if self.law == "covariant" else sigma / self.r

    @property
    def margin(self) -> float:
        """Rounding margin of the output size: ``1 / (2 * anchor)`` for an anchored point, else 0."""
        return 0.5 / self.anchor if self.anchor else 0.0

    @property
    def offset(self) -> float:
        """Offset of the ``nearest`` sampling grid ``floor(i * factor + offset)``: 0.5 when anchored."""
        return 0.5 if self.anchor else _EPS

    @property
    def factor(self) -> float:
        """The current subsampling factor ``2 ** (sigma / r + shift)`` (covariant law: ``2 ** (log2(sigma) +
        shift)``; ≥ 1 means shrinking).

        Within 1e-5 (relative) of an integer it is that integer: float32 σ drifts in the last bits, and an exact
        integer factor keeps output sizes and the strided-pixel grid of the original network. An anchored point
        with a :attr:`hold` returns ``anchor * 2**m`` within ``hold`` octaves of it (:meth:`hold_factor_`).
        """
        factor = 2.0 ** (self._exponent(float(self.sigma.detach())) + self.shift)
        if self.hold > 0.0 and self.anchor:
            octave = math.log2(factor / self.anchor)
            if abs(octave - round(octave)) < self.hold:
                return self.anchor * 2.0 ** round(octave)
        nearest = round(factor)
        return float(nearest) if nearest >= 1 and abs(factor - nearest) < 1e-5 * factor else factor

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the output for an input of spatial ``size``."""
        factor = self.factor
        margin = self.margin
        return tuple(safe_output_size(int(s), factor, self.rounding, margin) for s in size)  # type: ignore[return-value]

    def sample_grid(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The rows and columns that ``nearest`` mode keeps of an input of spatial ``size``."""
        factor, out = self.factor, self.output_size(size)
        return tuple(_sample_index(n, factor, limit, torch.device("cpu"), self.offset)  # type: ignore[return-value]
                     for n, limit in zip(out, size, strict=True))

    def fuse_into(self, producer: nn.Module) -> None:
        """Let ``producer`` (the NJetConv2d whose output this module alone reads) compute only the pixels that
        ``nearest`` mode keeps, in training (:mod:`njet_layers.sampled_conv`); this module then passes that output
        on (and subsamples any other input: the producer replaced by another module). Eval mode, other modes and
        exporters keep the plain conv → subsample pair."""
        object.__setattr__(self, "_producer", producer)
        object.__setattr__(producer, "_sampler", self)

    def mark_sampled(self, output: Tensor) -> None:
        """Called by the fused producer with the output it already subsampled (see :meth:`fuse_into`)."""
        object.__setattr__(self, "_sampled_output", weakref.ref(output))

    def _is_sampled(self, x: Tensor) -> bool:
        ref = self.__dict__.get("_sampled_output")
        return ref is not None and ref() is x

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.pop("_sampled_output", None)  # a weak reference to the last output: neither picklable nor needed
        return state

    def samples_in_producer(self) -> bool:
        """Whether the fused producer computes this subsampling now (the one decision both modules follow)."""
        if getattr(self, "_producer", None) is None or not self.training or self.mode != "nearest":
            return False
        return not is_tracing()

    def forward(self, x: Tensor) -> Tensor:
        if self.samples_in_producer() and self._is_sampled(x):
            return x
        factor = self.factor
        size = self.output_size((x.shape[-2], x.shape[-1]))
        return resize(x, size, self.mode, (factor, factor), self.antialias, self.offset)

    def extra_repr(self) -> str:
        where = f"source={type(self._source).__name__}" if self._source is not None else "own sigma"
        return (
            f"r={self.r:.4g}, shift={self.shift:.4g}, sigma={float(self.sigma.detach()):.4g}, "
            f"factor={self.factor:.4g}, anchor={self.anchor}, {where}, "
            + (f"law={self.law!r}, " if self.law != "paper" else "")
            + (f"hold={self.hold:g}, " if self.hold else "") +
            f"mode={self.mode!r}, rounding={self.rounding!r}"
        )


class MatchSize(nn.Module):
    """Resize ``x`` to the spatial size of ``reference``: keeps tensors that meet at a join (add, cat) in step
    whatever σ their branches learn. A no-op when the sizes already agree."""

    def __init__(self, mode: Mode = "nearest", antialias: bool = False) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode, self.antialias = mode, antialias

    def forward(self, x: Tensor, reference: Tensor) -> Tensor:
        size = tuple(reference.shape[-2:])
        factor = tuple(a / b for a, b in zip(x.shape[-2:], size, strict=True))
        return resize(x, size, self.mode, factor, self.antialias)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
