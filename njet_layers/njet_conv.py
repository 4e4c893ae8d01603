"""NJetConv2d: a convolution whose filters are learned combinations of Gaussian-derivative basis filters.

Each filter is ``F = sum_m alpha[o, c, m] * basis[m](sigma)`` (see :mod:`njet_layers.basis`); σ is one learned
scale per layer that sets both the filter's detail and its size ``s = 2 * ceil(k * sigma) + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .autotune import CANDIDATE_SPREAD, cached_choice, is_autotuning, measured_choice
from .axis_filters import anchor_sigma, anchored_mix, axis_filters, remix_alpha
from .basis import BasisOrder, axis_orders, basis_size, compose_basis, describe_basis, filter_radius, is_tensor_basis
from .basis_first import basis_first_conv2d, output_centers
from .conv_layout import in_preferred_layout
from .dispatch import IMPLS, Impl, KernelCache, impl_costs, is_tracing, uses_grad
from .fft_conv import fft_conv2d
from .kernel_compose import compose_kernel, compose_kernel_autograd
from .sampled_conv import conv2d_at
from .scale import DEFAULT_SIGMA_BOUNDS, bounded_sigma, check_sigma_bounds, positive_scalar
from .separable import Workspace, separable_conv2d, supports_separable

__all__ = ["MAX_K", "MAX_KERNEL_SIZE", "NJetConv2d"]

_Pair = int | tuple[int, int]

# Largest filter size s = 2 * ceil(k * sigma_max) + 1 a layer may reach without an explicit max_kernel_size:
# checked before anything is allocated (k=1e9 once asked for a 23 GB basis and was OOM-killed).
MAX_KERNEL_SIZE = 1025
# Largest k whose filters fit MAX_KERNEL_SIZE at the default largest σ (64): where callers bound k before they
# build layers or fit kernels.
MAX_K = (MAX_KERNEL_SIZE - 1) / (2 * DEFAULT_SIGMA_BOUNDS[1])


def _pair(value: _Pair, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return pair


class NJetConv2d(nn.Module):
    """N-Jet convolution (Pintea et al., TIP 2021) with a learned scale σ and learned basis weights α.

    Args:
        in_channels, out_channels, groups, bias: as in :class:`torch.nn.Conv2d`.
        order: the basis index set (docs/design.md, "Basis index sets"): an int ``N`` is the paper's jet, every
            derivative with ``i + j <= N`` (``M = (N + 1)(N + 2) / 2`` filters); a pair ``(n_x, n_y)`` is the tensor
            product ``i <= n_x, j <= n_y`` (``M = (n_x + 1)(n_y + 1)``), which holds every ``(n_x + 1)×(n_y + 1)``
            kernel exactly. A tensor basis carries a fixed per-axis mix, anchored by the integer buffer
            ``basis_anchor`` (unset: no mix, until :meth:`orthonormalize_basis_`), that keeps α well conditioned
            for large kernels (:mod:`njet_layers.axis_filters`).
        sigma: initial scale (ignored when ``dilation_init`` is given).
        k: filter extent in σ: the filter is clipped to radius ``ceil(k * sigma)``.
        dilation_init: initialise σ as ``dilation_init / k`` so the filter spans a dilated 3×3 conv's footprint.
        stride: kept for conversions that leave strides in place (``subsample="keep"``); N-Jet nets use 1.
        dilation: spacing of the filter's taps, kept from a converted dilated conv (the lossless conversion, docs/
            design.md, "Lossless conversion"): σ is then in units of that spacing. Dilated layers run the dense
            path. N-Jet nets built new use 1 and let σ set the footprint (``dilation_init``).
        crop: pixels removed from each border of the 'same'-size output, to reproduce a convolution with less
            padding (such as 'valid') at an output size that does not depend on σ.
        sigma_bounds: ``(min, max)`` of σ; default ``(0.25, max(8, 2 * sigma))``.
        max_kernel_size: cap on the filter size ``s`` (odd); default implied by ``sigma_bounds``.
        learn_sigma: whether σ is a trainable parameter.
        impl: how ``forward`` computes the convolution — ``"dense"`` (compose the ``s×s`` kernel, one ``conv2d``;
            cost grows with σ²), ``"basis_first"`` (separable Gaussian-derivative maps shared by all output
            channels, then one matrix product with α; cost flat in σ, see :mod:`njet_layers.basis_first`) or
            ``"fft"`` (the composed kernel applied in the frequency domain, :mod:`njet_layers.fft_conv`; cost nearly
            flat in σ, memory ``~C_out · C_in/g`` spectra of the padded image size), ``"separable"`` (1-D passes
            and one combine GEMM with no ``M × C_in`` intermediate, :mod:`njet_layers.separable`; flat in σ;
            ``groups=1`` only, other groupings run basis-first) or ``"auto"`` (per call, the cheapest for this
            input size from the measured cost model of the device, :mod:`njet_layers.cost_model`). All give the
            same output and gradients (to float rounding).

    Memory: basis-first keeps ``M`` derivative maps per input channel (``M×`` the input, 10× at order 3) for the
    backward pass. When those maps would exceed ``checkpoint_bytes`` (default 256 MiB) in training, the layer
    runs under :func:`torch.utils.checkpoint.checkpoint`: only the input is kept and the maps are recomputed in
    backward (about 1/3 more time for that layer, memory back to ~1× the input).

    The separable path keeps ``J · C_in + I · C_out`` maps per pixel (``J``, ``I``: vertical and horizontal
    orders) and, in training, reuses those buffers from one step to the next (a fresh large CPU allocation costs
    page faults comparable to the GEMMs); ``eval()`` drops them.

    Eval mode caches the composed kernel until a parameter changes (in-place updates, ``load_state_dict``,
    ``.to()``), so repeated inference does not rebuild it.
    """

    basis_anchor: Tensor  # buffer of tensor-basis layers: (σ₀ in units of ANCHOR_UNIT, radius at σ₀)

    checkpoint_bytes: int = 256 * 2**20

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        order: BasisOrder = 3,
        sigma: float = 1.0,
        k: float = 2.0,
        groups: int = 1,
        bias: bool = False,
        dilation_init: float | None = None,
        *,
        stride: _Pair = 1,
        dilation: _Pair = 1,
        crop: _Pair = 0,
        sigma_bounds: tuple[float, float] | None = None,
        max_kernel_size: int | None = None,
        learn_sigma: bool = True,
        impl: Impl = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        k = positive_scalar("k", k)
        if dilation_init is not None:
            sigma = positive_scalar("dilation_init", dilation_init) / k
        sigma = positive_scalar("sigma", sigma)
        bounds = check_sigma_bounds(sigma_bounds or (DEFAULT_SIGMA_BOUNDS[0], max(DEFAULT_SIGMA_BOUNDS[1], 2 * sigma)))
        if not bounds[0] <= sigma <= bounds[1]:
            raise ValueError(f"sigma={sigma!r} lies outside sigma_bounds={bounds!r}")
        if max_kernel_size is not None and (max_kernel_size < 1 or max_kernel_size % 2 == 0):
            raise ValueError(f"max_kernel_size must be a positive odd integer, got {max_kernel_size!r}")
        _check_kernel_size(k, bounds[1], max_kernel_size)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.order: BasisOrder = order if isinstance(order, int) else (int(order[0]), int(order[1]))
        self.k = float(k)
        self.stride, self.crop = _pair(stride, "stride"), _pair(crop, "crop")
        self.dilation = _pair(dilation, "dilation")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation!r}")
        if self.dilation != (1, 1) and impl not in ("auto", "dense"):
            raise ValueError(f"impl={impl!r} does not support dilation {self.dilation}: use 'auto' or 'dense'")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl: Impl = impl
        self._kernel_cache = KernelCache()
        self._workspace = Workspace()
        self.sigma_bounds = bounds
        self.max_kernel_size = max_kernel_size
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        num_basis = basis_size(order)  # validates order
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, num_basis, **factory))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma), **factory), requires_grad=learn_sigma)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        if is_tensor_basis(self.order):  # (σ₀ in units of ANCHOR_UNIT, radius at σ₀); (0, 0): no mix
            self.register_buffer("basis_anchor", torch.zeros(2, dtype=torch.int64, device=device))
        self.reset_parameters()

    @property
    def sigma(self) -> Tensor:
        """The current scale σ, a 0-d tensor inside ``sigma_bounds``."""
        return bounded_sigma(self.log_sigma, self.sigma_bounds)

    @property
    def radius(self) -> int:
        """Filter half-width ``ceil(k * sigma)``, capped by ``max_kernel_size``."""
        lo, hi = self.sigma_bounds
        with torch.no_grad():  # the value of `sigma`, without recording the clamp for autograd
            sigma = self.log_sigma.clamp(math.log(lo), math.log(hi)).exp()
        return self.radius_at(sigma)

    def radius_at(self, sigma: float | Tensor) -> int:
        """The half-width this layer's filter has at ``sigma``: ``ceil(k * sigma)``, capped by ``max_kernel_size``."""
        cap = None if self.max_kernel_size is None else (self.max_kernel_size - 1) // 2
        return filter_radius(sigma, self.k, cap)

    @property
    def kernel_size(self) -> int:
        """Current filter size ``s = 2R + 1``; changes when ``ceil(k * sigma)`` changes."""
        return 2 * self.radius + 1

    @property
    def basis_name(self) -> str:
        """The index set in words: ``"jet 3"`` or ``"tensor 3x3"``."""
        return describe_basis(self.order)

    @property
    def mixes(self) -> tuple[Tensor, Tensor] | None:
        """``(mix_x, mix_y)`` of an anchored tensor basis (float64), else None (:mod:`njet_layers.axis_filters`)."""
        if not is_tensor_basis(self.order):
            return None
        anchor = self.basis_anchor
        # cached: reading the anchor is a device sync on CUDA; the key changes with every in-place write
        # (orthonormalize_basis_, load_state_dict) and with .to() (new storage)
        key = (anchor._version, anchor.data_ptr(), anchor.device, self.alpha.device)
        cached = getattr(self, "_mixes_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        units, radius = (int(v) for v in anchor.tolist())
        mixes = None
        if radius != 0:
            n_x, n_y = axis_orders(self.order)
            device = self.alpha.device
            mixes = anchored_mix(n_x + 1, units, radius, device), anchored_mix(n_y + 1, units, radius, device)
        self._mixes_cache = (key, mixes)
        return mixes

    def axis_filters(self) -> tuple[Tensor, Tensor]:
        """The 1-D filters ``(g_x, g_y)`` the basis is built from, at the current σ and radius, mixes applied."""
        return axis_filters(self.order, self.sigma, self.radius, self.mixes)

    def basis(self) -> Tensor:
        """The ``[M, s, s]`` basis at the current σ (differentiable in σ), per-axis mixes applied."""
        return compose_basis(self.order, *self.axis_filters())

    @torch.no_grad()
    def orthonormalize_basis_(self) -> NJetConv2d:
        """Set the per-axis mixes so the basis is orthonormal at the current σ, α re-expressed (kernel unchanged).

        Only for tensor bases: it makes α as well conditioned as the kernel itself, so float32 composition and
        the basis-first combine stay accurate for 7×7 and larger kernels (docs/design.md, "Basis index sets").
        """
        if not is_tensor_basis(self.order):
            raise ValueError("orthonormalize_basis_ needs a tensor-product basis (order=(n_x, n_y)); the jet is "
                             "over-complete on small kernels and is not re-mixed")
        n_x, n_y = axis_orders(self.order)
        device = self.alpha.device
        eye: dict[str, Any] = {"dtype": torch.float64, "device": device}
        old = self.mixes or (torch.eye(n_x + 1, **eye), torch.eye(n_y + 1, **eye))
        units, radius = anchor_sigma(float(self.sigma)), self.radius
        new = (anchored_mix(n_x + 1, units, radius, device), anchored_mix(n_y + 1, units, radius, device))
        self.alpha.copy_(remix_alpha(self.alpha, (n_x, n_y), old, new))
        self.basis_anchor.copy_(torch.tensor([units, radius]))
        return self

    def kernel(self) -> Tensor:
        """The composed filters ``[out_channels, in_channels // groups, s, s]``, laid out for ``F.conv2d``.

        Composed in the parameters' own precision even under autocast (a bf16 sum of M basis filters loses the
        small high-order terms); the convolution itself may still run in reduced precision.
        """
        with torch.autocast(self.alpha.device.type, enabled=False):
            compose = compose_kernel if self.alpha.device.type == "cpu" else compose_kernel_autograd
            return compose(self.alpha, self.log_sigma, self.sigma_bounds, self.order, self.radius, self.mixes)

    def forward(self, x: Tensor) -> Tensor:
        sampler = getattr(self, "_sampler", None)
        if sampler is not None and self.stride == (1, 1) and sampler.samples_in_producer():
            return self._forward_sampled(x, sampler)
        impl = self.chosen_impl(x)
        if impl == "separable":
            return self._forward_separable(x)
        if impl == "basis_first":
            return self._forward_basis_first(x)
        if impl == "fft":
            return self._forward_fft(x)
        return self._convolve(x, self._dense_kernel())

    def resolve_impl(self, size: tuple[int, int], batch: int | None = None) -> str:
        """The path ``forward`` takes for inputs of spatial ``size`` (H, W) (and ``batch`` images, when known) by
        the cost model: ``"dense"``, ``"basis_first"``, ``"fft"`` or ``"separable"`` (under
        :func:`njet_layers.autotune.set_autotune` an ``auto`` layer times the candidates instead)."""
        if self.dilation != (1, 1):
            return "dense"  # the fast paths assume adjacent taps
        if self.impl == "separable" and not supports_separable(self.in_channels, self.out_channels, self.groups):
            return "basis_first"  # the separable path needs groups=1; basis-first computes the same
        if self.impl != "auto":
            return self.impl
        if is_tracing():
            return "dense"  # exporters and compilers see one plain conv2d
        radius = self.radius
        key = (size, batch, radius, self.stride, self.crop, self.alpha.device)
        memo = getattr(self, "_impl_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]  # type: ignore[no-any-return]
        costs = self._path_costs(size, batch)
        choice = min(costs, key=costs.__getitem__)
        self._impl_memo = (key, choice)
        return choice

    def chosen_impl(self, x: Tensor) -> str:
        """The path ``forward`` takes on ``x``: :meth:`resolve_impl`, or under
        :func:`njet_layers.autotune.set_autotune` the fastest path measured on ``x``'s shape for an ``auto`` layer."""
        if is_autotuning() and self.impl == "auto" and self.dilation == (1, 1) and not is_tracing():
            return self._measured_impl(x)
        return self.resolve_impl((x.shape[-2], x.shape[-1]), batch=x.shape[0])

    def _path_costs(self, size: tuple[int, int], batch: int | None) -> dict[str, float]:
        radius = self.radius
        out_size = tuple(
            len(output_centers(n, radius, s, c)) for n, s, c in zip(size, self.stride, self.crop, strict=True)
        )
        return impl_costs(
            self.in_channels, self.out_channels, self.groups, self.order, radius, size, out_size,  # type: ignore[arg-type]
            batch=batch, device=self.alpha.device,
        )

    def _measured_impl(self, x: Tensor) -> str:
        """The fastest path on ``x``'s shape, timed once per shape among those the cost model keeps in range."""
        key = ("njet", x.device.type, x.dtype, tuple(x.shape), self.in_channels, self.out_channels, self.groups,
               self.order, self.radius, self.stride, self.crop, self.training, torch.is_grad_enabled(),
               torch.get_num_threads())
        known = cached_choice(key)
        if known is not None:
            return known
        costs = self._path_costs((x.shape[-2], x.shape[-1]), x.shape[0])
        best = min(costs.values())
        paths = {name: self._path(name) for name, cost in costs.items() if cost <= CANDIDATE_SPREAD * best}
        params = [self.alpha, self.log_sigma] + ([self.bias] if self.bias is not None else [])
        return measured_choice(key, paths, x, params)

    def _path(self, name: str) -> Callable[[Tensor], Tensor]:
        if name == "dense":
            return lambda inp: self._convolve(inp, self._dense_kernel())
        return {"separable": self._forward_separable, "basis_first": self._forward_basis_first,
                "fft": self._forward_fft}[name]

    def _dense_kernel(self) -> Tensor:
        """``kernel()``, served from the eval-mode cache when no gradient is being recorded."""
        if self.training or uses_grad(self):
            return self.kernel()
        anchor = getattr(self, "basis_anchor", None)
        key = KernelCache.key((self.alpha, self.log_sigma, anchor), self.radius)
        weight = self._kernel_cache.get(key)
        if weight is None:
            weight = self.kernel()
            self._kernel_cache.put(key, weight)
        return weight

    def _forward_basis_first(self, x: Tensor) -> Tensor:
        radius = self.radius

        def run(inp: Tensor) -> Tensor:
            return basis_first_conv2d(
                inp, self.alpha, self.sigma, self.order, radius, bias=self.bias, stride=self.stride,
                crop=self.crop, groups=self.groups, mixes=self.mixes,
            )

        maps_bytes = x.numel() * x.element_size() * (basis_size(self.order) + axis_orders(self.order)[1] + 1)
        if self.training and uses_grad(self) and maps_bytes > self.checkpoint_bytes:
            return checkpoint(run, x, use_reentrant=False)  # type: ignore[no-any-return]
        return run(x)

    def _forward_sampled(self, x: Tensor, sampler: nn.Module) -> Tensor:
        """Only the pixels the fused ``nearest`` SafeSubsample keeps (see ``SafeSubsample.fuse_into``)."""
        weight = self._dense_kernel()
        radius = (weight.shape[-1] - 1) // 2
        pad = tuple(d * radius - c for d, c in zip(self.dilation, self.crop, strict=True))
        full = tuple(n - 2 * c for n, c in zip(x.shape[-2:], self.crop, strict=True))
        rows, cols = sampler.sample_grid(full)  # type: ignore[operator]

        def run(inp: Tensor) -> Tensor:
            return conv2d_at(inp, weight, self.bias, rows, cols, pad, self.dilation, self.groups)  # type: ignore[arg-type]

        out = in_preferred_layout(run, x, weight, self.groups)
        sampler.mark_sampled(out)  # type: ignore[operator]
        return out

    def _forward_separable(self, x: Tensor) -> Tensor:
        workspace = self._workspace if self.training and uses_grad(self) else None
        return separable_conv2d(
            x, self.alpha, self.sigma, self.order, self.radius, bias=self.bias, stride=self.stride, crop=self.crop,
            mixes=self.mixes, workspace=workspace,
        )

    def train(self, mode: bool = True) -> NJetConv2d:
        """As :meth:`torch.nn.Module.train`; leaving training drops the separable path's reusable buffers."""
        if not mode:
            self._workspace.clear()
        return super().train(mode)

    def _forward_fft(self, x: Tensor) -> Tensor:
        radius = self.radius
        centers = tuple(
            tuple(output_centers(n, radius, s, c)) for n, s, c in zip(x.shape[-2:], self.stride, self.crop, strict=True)
        )
        if x.dtype in (torch.float32, torch.float64):
            return fft_conv2d(x, self._dense_kernel(), self.bias, centers=centers, groups=self.groups)  # type: ignore[arg-type]
        with torch.autocast(x.device.type, enabled=False):  # reduced-precision FFTs: CUDA powers of 2 only, lossy
            out = fft_conv2d(x.float(), self._dense_kernel().float(), self.bias, centers=centers, groups=self.groups)  # type: ignore[arg-type]
        return out.to(x.dtype)

    def _convolve(self, x: Tensor, weight: Tensor) -> Tensor:
        radius = (weight.shape[-1] - 1) // 2
        pad = [d * radius - c for d, c in zip(self.dilation, self.crop, strict=True)]

        def run(inp: Tensor) -> Tensor:
            return F.conv2d(inp, weight, self.bias, self.stride, [max(p, 0) for p in pad], self.dilation, self.groups)

        out = in_preferred_layout(run, x, weight, self.groups)
        if min(pad) < 0:  # crop wider than the filter's own padding: trim the rest
            ch, cw = (max(-p, 0) for p in pad)
            out = out[..., ch : out.shape[-2] - ch, cw : out.shape[-1] - cw]
        return out

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-normal initialisation in the composed-kernel domain: keeps activations' variance through ReLU.

        For white input of unit variance the output variance is ``fan_in * sum_m alpha_var * ||basis_m||^2``;
        α is drawn so that this equals 2 at the initial σ (the authors' N(0, 1) α explode with depth).
        """
        basis = self.basis().to(self.alpha.dtype)
        fan_in = self.alpha.shape[1] * basis.pow(2).sum()
        self.alpha.normal_(0.0, float(torch.sqrt(2.0 / fan_in)))
        if self.bias is not None:
            self.bias.zero_()

    @torch.no_grad()
    def to_conv2d(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` carrying the frozen kernel and bias (same output, no njet code)."""
        weight = self.kernel()
        radius = (weight.shape[-1] - 1) // 2
        pad = tuple(d * radius - c for d, c in zip(self.dilation, self.crop, strict=True))
        if min(pad) < 0:
            raise ValueError(f"crop={self.crop} exceeds the filter radius {radius}: not expressible as padding")
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, weight.shape[-1], stride=self.stride, padding=pad,  # type: ignore[arg-type]
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None, device=weight.device,
            dtype=weight.dtype,
        )
        conv.weight.copy_(weight)
        if self.bias is not None:
            conv.bias.copy_(self.bias)  # type: ignore[union-attr]
        return conv.train(self.training)

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_channels}, {self.out_channels}, order={self.order!r}, sigma={float(self.sigma.detach()):.4g}",
            f"k={self.k:g}", f"kernel_size={self.kernel_size}",
        ]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.crop != (0, 0):
            parts.append(f"crop={self.crop}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        if not self.log_sigma.requires_grad:
            parts.append("learn_sigma=False")
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        return ", ".join(parts)


def _check_kernel_size(k: float, sigma_max: float, max_kernel_size: int | None) -> None:
    """Refuse a ``k`` whose filter at the largest allowed σ exceeds :data:`MAX_KERNEL_SIZE` (unless capped)."""
    if max_kernel_size is not None:
        return
    size = 2 * math.ceil(k * sigma_max) + 1
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"k={k:g} makes filters up to {size}x{size} px at sigma={sigma_max:g} (limit "
                         f"{MAX_KERNEL_SIZE}): use a smaller k (the paper uses 2) or set max_kernel_size")


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )
