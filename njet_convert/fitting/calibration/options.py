"""The knobs of the data-aware calibration (:func:`~njet_convert.fitting.calibration.calibrate`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CalibrationOptions"]


@dataclass
class CalibrationOptions:
    """Knobs of the calibration (defaults are the measured best on MobileNetV2, see benchmarks/fidelity.py).

    ``sigmas_per_size``: σ candidates per filter size (6 vs 1: 65 % -> 79 % top-1 agreement, order 3, 64 images
    at 160 px), for layers with at most ``wide_search_features`` basis features per group (1 per size above).
    ``min_samples_per_feature``: fewer samples per basis feature keep the layer's previous fit.
    ``pointwise_prior``: the 1×1 refit's ridge shrinks towards the pretrained weights instead of zero (with
    ``pointwise_min_samples=0`` it lowered agreement, 70 % -> 67 %: off by default).
    ``max_features``: basis features per conv group up to which a layer gets the exact fit (one moment matrix of
    ``features²`` per group); wider layers are fitted in blocks of input channels of at most ``block_features``
    features each (fewer when the samples support fewer), every block against the original kernel's slice on the
    same inputs (see :mod:`.blockwise`).
    ``holdout`` / ``holdout_min``: the share of the calibration images (at least ``holdout_min``, at most half)
    kept out of every fit to measure the conversion's fidelity on (``holdout=0``: none).
    ``activation_floor`` / ``activation_margin``: depthwise layers followed by a batch norm weigh each sampled
    position by how far the original's batch-norm output is above ``-activation_margin`` (floor ``activation_floor``;
    1 turns the weighting off), see :mod:`.activation`. Order 3, 128 calibration / 150 held-out photos at 160 px:
    MobileNetV2 72.0 % -> 75.3 % agreement (KL 0.233 -> 0.224), EfficientNet-Lite0 46.7 % -> 46.0 % (KL 1.20 ->
    1.11); floors 0.05 / 0.2 and a ReLU6 upper bound gave 74.0–75.3 % on MobileNetV2.
    """

    ridge: float = 1e-6
    batch_size: int = 32
    max_positions: int = 512
    bias_correction: bool = True
    batchnorm: str = "auto"  # "auto": re-estimate only if it helps; "always"; "never"
    check_images: int = 64
    seed: int = 0
    refit_pointwise: bool = True
    pointwise_ridge: float = 1e-3
    pointwise_min_samples: int = 64
    pointwise_prior: bool = False
    sigmas_per_size: int = 6
    min_samples_per_feature: int = 16
    wide_search_features: int = 256
    max_features: int = 2048
    block_features: int = 512
    holdout: float = 0.1
    holdout_min: int = 16
    activation_floor: float = 0.05
    activation_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.batchnorm not in ("auto", "always", "never"):
            raise ValueError(f"batchnorm must be 'auto', 'always' or 'never', got {self.batchnorm!r}")
        for name in ("batch_size", "max_positions", "max_features", "block_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int | float) or not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if isinstance(self.holdout_min, bool) or not isinstance(self.holdout_min, int) or self.holdout_min < 0:
            raise ValueError(f"holdout_min must be a non-negative integer, got {self.holdout_min!r}")
