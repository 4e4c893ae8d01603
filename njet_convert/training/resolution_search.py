"""Resolution chosen by the loss: per stage, the octave of σ — and with it the subsampling factor — that fits the data.

Why a search and not only gradients (docs/design.md, "Resolution learning from a converted start"): on a converted
network σ at a fixed filter support and a fixed subsampling factor is a re-parametrisation that α follows, and the
factor, which is what makes σ a resolution, has no gradient (sizes are integers). So σ's gradient cannot find that a
2×-zoomed input wants the first stage twice as coarse, although the loss shows it at once: doubling that stage's σ
and its subsampling factor together gives the layers after it the sizes and the detail they were trained on.

A *stage* is the N-Jet layers that run between two subsampling points, closed by the second one (the last stage may
end without a point). :func:`search_resolution` walks the stages in network order and tries, per stage, multiplying
every σ in it and the factor of the point that closes it by ``2 ** octave`` for each candidate octave (the
scale-space move: the filters dilated — α kept on a tensor basis, refitted to the dilated kernel on an over-complete
jet, :mod:`njet_convert.fitting.dilation` — the map shrunk by as much), and the factor alone (σ kept: where σ cannot
follow, a 0.5× input asking for σ below its bound); it keeps the move of lowest loss on the given batches (staying
unless another move beats it by ``min_gain``) and goes on to the next stage. When the loss comes per example, a move
must also beat staying by ``confidence`` standard errors of its paired drop (staying's loss minus the move's,
example by example): a few hundred examples judge up to nine moves per stage, and on a converted MobileNetV2 the
untested choice took gains within that noise, finer stages that raised the multiply-adds by up to 2× at the trained
size for no accuracy (docs/design.md). Afterwards each point is back on
its own law at the factor found. A move whose maps no longer fit a layer of fixed size (a pool window, a flatten)
counts as infinite loss. The loss is measured without gradients and with dropout off, so a search costs about
``2 × len(stages) × len(octaves) × batches`` forward passes. Batch norm normalises each batch by its own
statistics, as training does (the running statistics are left as they were), so that a move is not judged by
statistics gathered at the old resolution while the network was still adapting; ``batch_statistics=False`` uses the
running ones.

A compute budget (``cost`` and ``max_cost``, e.g. multiply-adds per image) makes the choice constrained: per stage
the move of lowest loss among those whose network then costs at most ``max_cost`` (staying keeps its ``min_gain``
advantage when it fits), or, when none fits, the move of lowest loss among those cheaper than staying, a step
towards the budget that the stages after it can continue (the budget is a target: the network the search leaves
may still exceed it). It is the user's statement of what the deployed network may cost, not a trade-off the search
makes up: without it a zoomed input may settle at a resolution whose loss is a little lower and whose compute is
twice as high (docs/design.md, "Resolution learning from a converted start").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample

from ..fitting.dilation import dilated_alpha, dilates_by_refit
from .config import FinetuneConfig

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_OCTAVES", "CostFn", "LossFn", "Stage", "StageChoice", "converted_points",
           "hold_factors", "own_batch_statistics", "rescale_stage", "resolution_stages", "search_resolution"]

DEFAULT_OCTAVES: tuple[float, ...] = FinetuneConfig.search_octaves
DEFAULT_CONFIDENCE: float = FinetuneConfig.search_confidence  # standard errors a move's paired loss drop needs
LossFn = Callable[[nn.Module], "float | Tensor"]  # the mean loss, or the loss of every probe example
CostFn = Callable[[nn.Module], float]
Move = tuple[float, float]  # (σ octave, factor octave)


@dataclass
class Stage:
    """N-Jet layers (by module name) that run before subsampling point ``point`` (None: the network's tail)."""

    layers: list[str]
    point: str | None


@dataclass
class StageChoice:
    """What the search chose for one stage: the octave, σ and factor before → after, and the loss per octave."""

    stage: Stage
    sigma_octave: float
    factor_octave: float
    sigma_before: float  # σ of the stage's first layer
    sigma_after: float
    factor_before: float | None  # of the stage's point
    factor_after: float | None
    losses: dict[str, float] = field(default_factory=dict)  # "σ octave/factor octave": loss
    costs: dict[str, float] = field(default_factory=dict)  # the same keys: the network's cost (with a budget)
    z_scores: dict[str, float] = field(default_factory=dict)  # the same keys: standard errors of the drop vs staying
    refitted: tuple[str, ...] = ()  # the jet layers whose α the move refitted to their dilated kernel

    def describe(self) -> str:
        """``point: σ 0.47 → 0.95, factor 2 → 4``, the line a run prints."""
        factor = ("" if self.factor_before is None else
                  f", factor {self.factor_before:.3g} → {self.factor_after:.3g}")
        return f"{self.stage.point or 'tail'}: σ {self.sigma_before:.3g} → {self.sigma_after:.3g}{factor}"

    def as_dict(self) -> dict[str, object]:
        """Plain types (checkpoints, metrics, ``--json``)."""
        return {"point": self.stage.point, "layers": list(self.stage.layers), "sigma_octave": self.sigma_octave,
                "factor_octave": self.factor_octave, "sigma_before": self.sigma_before,
                "sigma_after": self.sigma_after, "factor_before": self.factor_before,
                "factor_after": self.factor_after, "losses": dict(self.losses), "costs": dict(self.costs),
                "z_scores": dict(self.z_scores), "refitted": list(self.refitted)}


@torch.no_grad()
def resolution_stages(model: nn.Module, images: Tensor) -> list[Stage]:
    """The stages of ``model`` in the order one forward pass on ``images`` runs them (empty stages are left out)."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: order.append((name, mod)))
             for name, m in model.named_modules() if isinstance(m, NJetConv2d | SafeSubsample)]
    was_training = model.training
    try:
        model.eval()(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    stages, layers, seen = [], [], set()
    for name, module in order:
        if name in seen:  # a module called twice keeps its first place
            continue
        seen.add(name)
        if isinstance(module, NJetConv2d):
            layers.append(name)
        else:
            stages.append(Stage(layers, name))
            layers = []
    if layers:
        stages.append(Stage(layers, None))
    return [s for s in stages if s.layers or s.point is not None]


def search_resolution(model: nn.Module, loss: LossFn, stages: Sequence[Stage],
                      octaves: Sequence[float] = DEFAULT_OCTAVES, min_gain: float = 0.01,
                      factor_only: bool = True, batch_statistics: bool = True, cost: CostFn | None = None,
                      max_cost: float | None = None, confidence: float = DEFAULT_CONFIDENCE) -> list[StageChoice]:
    """Choose, stage by stage, the move of lowest ``loss(model)`` and leave ``model`` there (see the module
    docstring). ``loss`` gives the mean loss, or a 1-D tensor of every probe example's loss, which lets the choice
    test its gain. ``min_gain``: the relative loss drop a move needs over staying; ``confidence``: with per-example
    losses, the standard errors of the paired drop (staying's loss minus the move's, example by example) it needs
    as well (0: none); ``factor_only``: also
    try moving the point's factor alone, σ kept (where σ cannot follow: a 0.5× input asks for σ below its bound);
    ``batch_statistics``: batch norm on each batch's own statistics while the loss is measured; ``cost`` and
    ``max_cost``: the budget the chosen network must fit (both or neither)."""
    if not octaves or 0.0 not in octaves:
        raise ValueError(f"octaves must include 0 (the current resolution), got {tuple(octaves)!r}")
    if (cost is None) != (max_cost is None):
        raise ValueError("cost and max_cost go together: give both for a budget, or neither")
    if max_cost is not None and not (max_cost > 0 and math.isfinite(max_cost)):
        raise ValueError(f"max_cost must be a positive number, got {max_cost!r}")
    if not (confidence >= 0 and math.isfinite(confidence)):
        raise ValueError(f"confidence must be a finite number ≥ 0, got {confidence!r}")
    budget = (cost, max_cost) if cost is not None and max_cost is not None else None
    moves = [(o, o) for o in octaves] + ([(0.0, o) for o in octaves if o] if factor_only else [])
    modules = dict(model.named_modules())
    measure = _with_batch_statistics(loss) if batch_statistics else loss
    with _covariant_points(model):
        return [_search_stage(modules, stage, measure, model, moves, min_gain, confidence, budget)
                for stage in stages]


def rescale_stage(model: nn.Module, stage: Stage, sigma_octave: float,
                  factor_octave: float | None = None) -> StageChoice:
    """Make one of the search's moves by hand: every σ of ``stage`` ``sigma_octave`` octaves up (inside its
    bounds) and the factor of its point ``factor_octave`` octaves (default: as many), each point then back on its
    own law at the factor reached. For a user who knows the data's scale, e.g. photos at twice the size the
    network was trained on: the first stage ``1`` octave (and the control the transfer benchmark runs the search
    against)."""
    move = (float(sigma_octave), float(sigma_octave if factor_octave is None else factor_octave))
    if not all(math.isfinite(v) for v in move):
        raise ValueError(f"octaves must be finite numbers, got {move!r}")
    modules = dict(model.named_modules())
    with _covariant_points(model):
        scaled, point = _scaled_modules(modules, stage), _stage_point(modules, stage)
        start = _Start.of(scaled)
        factor_before = point.factor if point is not None else None
        _apply(start, point, factor_before, move)
        return _choice(stage, move, scaled, start, point, factor_before)


def converted_points(model: nn.Module) -> list[SafeSubsample]:
    """The subsampling points of ``model`` that replace a strided conv or pool of a converted network (anchored)."""
    return [m for m in model.modules() if isinstance(m, SafeSubsample) and m.anchor is not None]


def hold_factors(model: nn.Module, octaves: float) -> int:
    """Hold the factor of every converted (anchored) subsampling point of ``model`` on its stride's power-of-two
    ladder while σ keeps it within ``octaves`` (:meth:`njet_layers.SafeSubsample.hold_factor_`); returns how many
    points now hold. ValueError when ``model`` has no converted point (a network built as N-Jet keeps the paper's
    law) or ``octaves`` lies outside [0, 0.5)."""
    points = converted_points(model)
    if not points:
        raise ValueError("factor hold: the model has no converted subsampling point (SafeSubsample with an anchor)")
    for point in points:
        point.hold_factor_(octaves)
    return len(points)


@contextmanager
def _covariant_points(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every converted point follows σ covariantly (a move scales σ and factor together) and
    ``model`` is in eval mode; afterwards each point is on its own law again at the factor it has then."""
    points = [m for m in model.modules() if isinstance(m, SafeSubsample)]
    laws = {p: p.law for p in points}
    was_training = model.training
    model.eval()
    try:
        for p in points:
            if p.anchor is not None or p.source is not None:
                p.use_law_("covariant")
        yield model
    finally:
        for p, law in laws.items():
            p.use_law_(law)
        model.train(was_training)


@contextmanager
def own_batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every batch norm of ``model`` normalises by the statistics of the batch it sees (as in
    training) and updates nothing; its mode, running statistics and counter are restored afterwards."""
    saved = []
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        saved.append((bn, bn.training, bn.track_running_stats, bn.running_mean, bn.running_var))
        bn.train()
        bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    try:
        yield model
    finally:
        for bn, training, track, mean, var in saved:
            bn.train(training)
            bn.track_running_stats, bn.running_mean, bn.running_var = track, mean, var


def _with_batch_statistics(loss: LossFn) -> LossFn:
    def measure(model: nn.Module) -> float | Tensor:
        with own_batch_statistics(model):
            return loss(model)
    return measure


def _search_stage(modules: dict[str, nn.Module], stage: Stage, loss: LossFn, model: nn.Module,
                  moves: Sequence[Move], min_gain: float, confidence: float,
                  budget: tuple[CostFn, float] | None) -> StageChoice:
    scaled, point = _scaled_modules(modules, stage), _stage_point(modules, stage)
    start = _Start.of(scaled)
    factor_before = point.factor if point is not None else None
    readings: dict[Move, Tensor | None] = {}
    costs: dict[Move, float] = {}
    for move in moves:
        _apply(start, point, factor_before, move)
        readings[move] = _reading_or_none(loss, model)
        if budget is not None and readings[move] is not None:
            costs[move] = budget[0](model)
    losses = {m: float(r.mean()) if r is not None else math.inf for m, r in readings.items()}
    z_scores = {m: _paired_z(readings[(0.0, 0.0)], r) for m, r in readings.items() if m != (0.0, 0.0)}
    best = _choose(losses, costs, budget[1] if budget is not None else None, min_gain,
                   lambda m: z_scores[m] >= confidence)
    _apply(start, point, factor_before, best)
    return _choice(stage, best, scaled, start, point, factor_before, losses, costs,
                   {m: z for m, z in z_scores.items() if math.isfinite(z)})


def _choice(stage: Stage, move: Move, scaled: list[nn.Module], start: _Start,
            point: SafeSubsample | None, factor_before: float | None, losses: dict[Move, float] | None = None,
            costs: dict[Move, float] | None = None, z_scores: dict[Move, float] | None = None) -> StageChoice:
    """The record of ``move`` made on ``stage`` (σ of its first layer and its point's factor, before → after)."""
    first = scaled[0] if scaled else None
    sigma = ((math.exp(start.log_sigma[first]), float(first.sigma.detach())) if first is not None else
             (math.nan, math.nan))
    keyed = [{f"{a:g}/{b:g}": v for (a, b), v in (table or {}).items()} for table in (losses, costs, z_scores)]
    layers = scaled[:len(stage.layers)]  # the point with a σ of its own comes last
    refitted = tuple(name for name, module in zip(stage.layers, layers, strict=True) if start.refitted(module))
    return StageChoice(stage, move[0], move[1], *sigma, factor_before, point.factor if point is not None else None,
                       *keyed, refitted)


def _stage_point(modules: dict[str, nn.Module], stage: Stage) -> SafeSubsample | None:
    """The point closing ``stage`` when its factor follows a layer's σ (None: the tail, or a point of its own)."""
    point = modules[stage.point] if stage.point is not None else None
    return point if isinstance(point, SafeSubsample) and point.source is not None else None


def _choose(losses: dict[Move, float], costs: dict[Move, float], max_cost: float | None, min_gain: float,
            significant: Callable[[Move], bool] = lambda move: True) -> Move:
    """The move of lowest loss (ties: the smaller factor change, then σ and factor together) among those that fit
    the budget and, when staying fits, beat staying by ``min_gain`` and are ``significant`` (else staying).
    When none fits, the move of lowest loss among those cheaper than staying: a step towards the budget that the
    later stages can continue."""
    stay = (0.0, 0.0)
    fits = [m for m in losses if max_cost is None or (m in costs and costs[m] <= max_cost)]
    if not fits and max_cost is not None:
        fits = [m for m in costs if costs[m] < costs.get(stay, math.inf)]
        if not fits:
            return stay
    if stay in fits:
        fits = [m for m in fits if m == stay or (losses[m] < losses[stay] * (1 - min_gain) and significant(m))]
    return min(fits, key=lambda m: (losses[m], abs(m[1]), m[0] != m[1]))


def _paired_z(stay: Tensor | None, move: Tensor | None) -> float:
    """How many standard errors the mean of ``stay - move`` (per example) lies above 0: ``inf`` when there is
    nothing to test (means only, or staying has no loss), ``-inf`` when the move has none."""
    if move is None:
        return -math.inf
    if stay is None or stay.numel() < 2 or stay.shape != move.shape:
        return math.inf
    drop = stay - move
    mean, spread = float(drop.mean()), float(drop.std()) / math.sqrt(drop.numel())
    if spread == 0.0:
        return math.inf if mean > 0 else 0.0
    return mean / spread


def _apply(start: _Start, point: SafeSubsample | None, factor: float | None, move: Move) -> None:
    """σ of the stage ``move[0]`` octaves from its start, the point's factor ``move[1]`` octaves from ``factor``."""
    _set_octave(start, move[0])
    if point is not None and factor is not None:
        point.shift = math.log2(factor) + move[1] - point._exponent(float(point.sigma.detach()))


def _reading_or_none(loss: LossFn, model: nn.Module) -> Tensor | None:
    """The loss as a 1-D tensor (per example, or the mean alone), or None where the maps became too small for a
    layer of fixed size (a pool window, a flatten): that move cannot be taken."""
    try:
        value = loss(model)
    except RuntimeError:
        return None
    reading = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    return reading if bool(torch.isfinite(reading).all()) else None


def _scaled_modules(modules: dict[str, nn.Module], stage: Stage) -> list[nn.Module]:
    """The stage's N-Jet layers, and its point when the point has a σ of its own (no linked layer)."""
    scaled = [modules[name] for name in stage.layers]
    point = modules.get(stage.point) if stage.point is not None else None
    if isinstance(point, SafeSubsample) and point.source is None and hasattr(point, "log_sigma"):
        scaled.append(point)
    return scaled


@torch.no_grad()
def _set_octave(start: _Start, octave: float) -> None:
    """log σ of each module at its start value + ``octave`` octaves, inside the module's σ bounds; α of each jet
    layer refitted so its kernel is the starting one dilated by as much (:mod:`njet_convert.fitting.dilation`)."""
    for module, log_sigma in start.log_sigma.items():
        lo, hi = (math.log(b) for b in module.sigma_bounds)
        module.log_sigma.fill_(min(max(log_sigma + octave * math.log(2.0), lo), hi))
        if module in start.alpha:
            module.alpha.copy_(start.alpha_at(module, float(module.log_sigma)))


@dataclass
class _Start:
    """Where a stage's modules start: log σ of each, and α of each jet layer (whose α a σ move refits)."""

    log_sigma: dict[nn.Module, float]
    alpha: dict[nn.Module, Tensor]
    refits: dict[tuple[nn.Module, float], Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, modules: Sequence[nn.Module]) -> _Start:
        jets = [m for m in modules if isinstance(m, NJetConv2d) and dilates_by_refit(m)]
        return cls({m: float(m.log_sigma.detach()) for m in modules}, {m: m.alpha.detach().clone() for m in jets})

    def refitted(self, layer: nn.Module) -> bool:
        """Whether ``layer``'s α now is a refit: a jet layer whose σ has left its start."""
        return layer in self.alpha and float(layer.log_sigma) != self.log_sigma[layer]

    def alpha_at(self, layer: nn.Module, log_sigma: float) -> Tensor:
        """α of ``layer`` at ``log_sigma``: its start α there, else its kernel dilated (computed once per σ)."""
        start = self.log_sigma[layer]
        if log_sigma == start:
            return self.alpha[layer]
        key = (layer, log_sigma)
        if key not in self.refits:
            self.refits[key] = dilated_alpha(layer, self.alpha[layer], math.exp(start), math.exp(log_sigma))
        return self.refits[key]
