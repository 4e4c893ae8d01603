"""A bound on how far σ may move in one optimiser step: a trust region for the scale parameters.

Why (docs/design.md, "Resolution learning from a converted start"): the loss of a converted network is steep along
log σ. Released after half an epoch's delay, the first layer of the order-3 MNIST CNN had a log σ gradient of 15,
so at σ lr 0.01 one step moved its σ by a fifth of an octave; α, fitted at the old σ, no longer matched the
filter, the loss jumped from 0.1 to 20, the next gradient (300) threw σ to its bound, the second layer's σ ran from
0.5 to 8 in nine steps and the run ended at chance. A step of at most ``octaves`` per σ keeps the filter close
enough for α to follow, and leaves every step below the bound as the optimiser made it.

Where the bound cuts a step, the SGD momentum buffer is set to the step actually taken, so that momentum gathered
from the steep gradients does not push σ at the bound's speed for many steps after (the way the delay's momentum
did before fine-tuning learned to drop it at the release). Adam's moments are left as they are: its steps are
near ``lr`` already.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SigmaStepBound"]


class SigmaStepBound:
    """Clamp the change of every parameter of an optimiser's ``"sigma"`` group to ``octaves`` per step.

    Use: ``bound.before()`` just before ``optimizer.step()``, ``bound.after()`` just after; ``after`` returns how
    many σ entries it cut back (a step the scaler skipped changes nothing and is not counted).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, octaves: float) -> None:
        if not (octaves > 0 and math.isfinite(octaves)):
            raise ValueError(f"octaves must be a positive finite number, got {octaves!r}")
        self.optimizer = optimizer
        self.limit = octaves * math.log(2.0)  # σ is learned as log σ
        self._start: list[tuple[dict, torch.nn.Parameter, torch.Tensor]] = []

    def _sigma_params(self) -> list[tuple[dict, torch.nn.Parameter]]:
        return [(g, p) for g in self.optimizer.param_groups if g.get("name") == "sigma" for p in g["params"]]

    def before(self) -> None:
        """Remember every σ as it is before the step."""
        self._start = [(g, p, p.detach().clone()) for g, p in self._sigma_params()]

    @torch.no_grad()
    def after(self) -> int:
        """Cut back every σ that moved further than the bound; returns how many entries were cut. All σ are checked
        in one pass, so a step costs one host sync however many layers the network has."""
        start, self._start = self._start, []
        if not start:
            return 0
        delta = torch.cat([(p - s0).reshape(-1) for _, p, s0 in start])
        kept = delta.clamp(-self.limit, self.limit)
        mask = kept != delta
        cut = int(mask.sum())
        if cut:
            sizes = [s0.numel() for _, _, s0 in start]
            for (group, param, s0), k, m in zip(start, kept.split(sizes), mask.split(sizes), strict=True):
                if bool(m.any()):
                    param.copy_(s0 + k.view_as(param))
                    self._match_momentum(group, param, k.view_as(param), m.view_as(param))
        return cut

    def _match_momentum(self, group: dict, param: torch.nn.Parameter, step: torch.Tensor,
                        cut: torch.Tensor) -> None:
        """SGD: where the step was cut, the momentum buffer becomes the step taken (``param -= lr · buffer``)."""
        buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None and group["lr"] > 0:
            buffer.copy_(torch.where(cut, -step / group["lr"], buffer))
