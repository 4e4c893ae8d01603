"""Typed settings of one fine-tuning run (the paper's optimisation: SGD, momentum 0.9, L2 on α, own lr for σ)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AMP_MODES", "SCHEDULES", "DistillConfig", "FinetuneConfig"]

SCHEDULES = ("cosine", "step", "multistep", "poly", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class DistillConfig:
    """Knowledge distillation to a teacher (the original network).

    ``loss = (1 - label_weight) * T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + label_weight · CE(labels)``;
    batches without labels use the KL term alone.
    """

    temperature: float = 4.0
    label_weight: float = 0.0  # 0: pure distillation; in (0, 1]: mix with the labels' cross-entropy

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if not 0.0 <= self.label_weight <= 1.0:
            raise ValueError(f"label_weight must lie in [0, 1], got {self.label_weight!r}")


@dataclass
class FinetuneConfig:
    """Hyper-parameters of :func:`njet_convert.training.finetune.finetune`.

    Parameter groups (see :mod:`njet_convert.training.optim`): α of every NJetConv2d decays with ``alpha_decay``
    (paper: 1e-4 ResNet, 1e-3 ALLCNN, 1e-2 NIN), σ (``log_sigma``) learns at ``sigma_lr`` (default ``lr``) with
    ``sigma_decay`` (default none), held for the first ``sigma_delay_epochs`` (a converted network's new head or
    new data gives σ large, meaningless gradients before α has adapted: docs/design.md, "Resolution learning from a
    converted start"; the momentum σ gathers meanwhile is dropped on release), batch-norm weights and biases
    never decay, other weights use ``weight_decay``.

    ``resolution_search``: when σ is released (after the delay; at the start without one) choose per stage the
    octave of σ and subsampling factor of lowest training loss among ``search_octaves``, measured on
    ``search_batches`` training batches (:mod:`njet_convert.training.resolution_search`): the factor has no
    gradient, so this is how a converted network moves its resolution by whole octaves (a zoomed input).
    ``search_batchnorm``: the statistics batch norm normalises by while the search measures the loss —
    ``"batch"`` (the default: each batch's own, as training does) or ``"running"`` (eval mode: those gathered so
    far, at the old resolution and while the network was still adapting; on a converted MobileNetV2 half an epoch
    into Fashion-MNIST they gave staying a loss above chance, and the search picked moves by that: docs/design.md).
    ``search_max_macs``: a compute budget for the search, multiply-adds per training image of the network as exported
    (:func:`njet_convert.training.resolution.multiply_adds`): per stage the move of lowest loss whose network fits
    it; when none does, of those cheaper than staying. ``search_confidence``: a move replaces staying only when
    its loss drop over the search batches' examples, example by example, is this many standard errors above 0
    (and 1 % of the loss): the choice is made on a few hundred examples, and a gain within their noise is not
    one (0 turns the test off).

    ``sigma_max_step``: the most any σ may move in one optimiser step, in octaves (default 0.02; ``None`` or 0:
    no bound; :mod:`njet_convert.training.sigma_step`). The loss of a converted network is steep along log σ: one
    step at σ lr 0.01 moved a converted layer's σ by a fifth of an octave, α no longer matched the filter and σ
    ran to its bounds. Steps below the bound are the optimiser's own.

    ``factor_hold``: octaves (in [0, 0.5)) within which every converted subsampling point holds its factor on its
    stride's power-of-two ladder (``SafeSubsample.hold_factor_``: a regular ``nearest`` grid while σ drifts a
    little; default 0.25, a quarter octave); 0 turns the hold off, ``None`` leaves each point's own setting.
    Networks built as N-Jet have no converted point and keep the paper's law. Saved with the model.
    """

    lr: float = 0.01
    sigma_lr: float | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9  # SGD
    nesterov: bool = False  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    weight_decay: float = 1e-4
    alpha_decay: float = 1e-4
    sigma_decay: float = 0.0
    sigma_delay_epochs: float = 0.0  # σ held (lr 0) for this many epochs while α adapts, then on the schedule
    sigma_max_step: float | None = 0.02  # octaves any σ may move in one optimiser step (None or 0: no bound)
    resolution_search: bool = False
    search_octaves: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    search_batches: int = 4
    search_batchnorm: Literal["running", "batch"] = "batch"
    search_max_macs: float | None = None  # compute budget of the search, multiply-adds per image
    search_confidence: float = 2.0  # standard errors of the paired per-example loss drop a move needs
    factor_hold: float | None = 0.25  # octaves a converted point's factor is held on its grid (None: as it is)
    autotune: bool = False  # impl="auto" layers time their candidate paths once per shape (njet_layers.autotune)
    schedule: Literal["cosine", "step", "multistep", "poly", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from ``warmup_start * lr``; fractional epochs allowed
    warmup_start: float = 0.1
    step_epochs: int = 30  # step schedule: multiply lr by ``step_gamma`` every ``step_epochs`` epochs
    step_gamma: float = 0.1  # also the factor of each multistep milestone
    milestones: tuple[int, ...] = ()  # multistep schedule: epochs at which lr is multiplied by ``step_gamma``
    poly_power: float = 0.9  # poly schedule (DeepLab): lr · (1 - progress) ** poly_power
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    batch_size: int = 64
    workers: int = 0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    distill: DistillConfig | None = None  # set (or pass teacher=) to distil; teacher= without it uses defaults
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA when supported, fp16 else; off on CPU
    # channels-last memory: "auto" on CUDA only; True on every device (on CPU oneDNN runs it ~1.2-1.5x faster, at
    # float rounding that differs from the contiguous run's); False nowhere
    channels_last: bool | Literal["auto"] = "auto"
    seed: int = 0
    max_steps_per_epoch: int | None = None  # cap (quick runs, smoke tests)
    eval_every: int = 1  # epochs between validations
    progress: bool = True  # tqdm bars on rank 0 when stderr is a tty
    plots: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed
    find_unused_parameters: bool | None = None  # DDP; None: only when some trainable parameter gets no gradient
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, stored in checkpoints and metrics

    def __post_init__(self) -> None:
        if isinstance(self.distill, dict):
            self.distill = DistillConfig(**self.distill)
        positive = {"lr": self.lr, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "step_epochs": self.step_epochs}
        for name, value in positive.items():
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.sigma_lr is not None and not self.sigma_lr >= 0:
            raise ValueError(f"sigma_lr must be >= 0, got {self.sigma_lr!r}")
        for name in ("weight_decay", "alpha_decay", "sigma_decay", "warmup_epochs", "momentum", "label_smoothing",
                     "sigma_delay_epochs"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        step = self.sigma_max_step
        if step is not None and (isinstance(step, bool) or not (isinstance(step, int | float) and step >= 0 and
                                                                math.isfinite(step))):
            raise ValueError(f"sigma_max_step must be a finite number of octaves >= 0 (0: no bound), got {step!r}")
        hold = self.factor_hold
        if hold is not None and (isinstance(hold, bool) or not (isinstance(hold, int | float) and 0 <= hold < 0.5)):
            raise ValueError(f"factor_hold must be a number of octaves in [0, 0.5), got {self.factor_hold!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        self.search_octaves = tuple(float(o) for o in self.search_octaves)
        if 0.0 not in self.search_octaves or not all(math.isfinite(o) for o in self.search_octaves):
            raise ValueError(f"search_octaves must be finite and include 0, got {self.search_octaves!r}")
        if isinstance(self.search_batches, bool) or not isinstance(self.search_batches, int) or self.search_batches < 1:
            raise ValueError(f"search_batches must be a positive integer, got {self.search_batches!r}")
        if self.search_batchnorm not in ("running", "batch"):
            raise ValueError(f"search_batchnorm must be 'running' or 'batch', got {self.search_batchnorm!r}")
        if isinstance(self.search_confidence, bool) or not (isinstance(self.search_confidence, int | float) and
                                                            0 <= self.search_confidence < math.inf):
            raise ValueError(f"search_confidence must be a finite number ≥ 0, got {self.search_confidence!r}")
        if self.search_max_macs is not None:
            if isinstance(self.search_max_macs, bool) or not (isinstance(self.search_max_macs, int | float) and
                                                              0 < self.search_max_macs < math.inf):
                raise ValueError(f"search_max_macs must be a positive number, got {self.search_max_macs!r}")
            if not self.resolution_search:
                raise ValueError("search_max_macs (--search-max-macs) is a budget for the resolution search: set "
                                 "resolution_search=True (--resolution-search)")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.milestones = tuple(self.milestones)
        if self.schedule == "multistep" and (not self.milestones or any(
                isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.milestones)):
            raise ValueError(f"the multistep schedule needs milestones: positive epochs, got {self.milestones!r}")
        if not self.poly_power > 0:
            raise ValueError(f"poly_power must be positive, got {self.poly_power!r}")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "auto"):
            raise ValueError(f"channels_last must be True, False or 'auto', got {self.channels_last!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints, which are read with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig fields: {unknown}")
        return cls(**values)
