"""include / exclude rules: module types, qualified-name globs, ``re:`` regexes or compiled patterns, predicates."""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from ..config import CONV_KINDS, LayerOrder, OrderSpec, Rule, describe_order, describe_rule

__all__ = ["Selector", "conv_kind", "order_for", "rule_matches"]


def rule_matches(rule: Rule, name: str, module: nn.Module | None) -> bool:
    """Whether one selection rule (type, glob, ``re:`` regex, compiled pattern or predicate) matches."""
    if isinstance(rule, type):
        return isinstance(module, rule)
    if isinstance(rule, re.Pattern):
        return rule.fullmatch(name) is not None
    if isinstance(rule, str):
        regex = rule.startswith("re:")
        return re.fullmatch(rule[3:], name) is not None if regex else fnmatch.fnmatchcase(name, rule)
    return bool(rule(name, module))


def conv_kind(conv: nn.Module) -> str:
    """``"depthwise"`` (one input channel per group), ``"grouped"``, ``"pointwise"`` (1×1, one group) or
    ``"dense"``."""
    groups, channels = getattr(conv, "groups", 1), getattr(conv, "in_channels", 1)
    if groups > 1:
        return "depthwise" if groups == channels else "grouped"
    return "pointwise" if tuple(getattr(conv, "kernel_size", (3, 3))) == (1, 1) else "dense"


def order_for(order: OrderSpec, name: str, conv: nn.Module) -> LayerOrder:
    """The order of conv ``name``: ``order`` itself, or the first order rule that matches (a kind of
    ``CONV_KINDS`` matches by :func:`conv_kind`, other rules by name); ``ValueError`` if none does."""
    if not isinstance(order, dict):
        return order
    for rule, value in order.items():
        if (conv_kind(conv) == rule) if rule in CONV_KINDS else rule_matches(rule, name, conv):
            return value
    raise ValueError(f"order rules {describe_order(order)!r} give no order for conv {name!r} "
                     f"({conv_kind(conv)}): add a rule such as '*=3'")


class Selector:
    """Decides which convs/pools are converted; remembers which rules matched something."""

    def __init__(self, include: list[Rule] | None, exclude: list[Rule] | None) -> None:
        self.include, self.exclude = include, exclude or []
        self.hits: dict[int, int] = {}
        self.accepted: set[str] = set()

    def _match(self, rule: Rule, name: str, module: nn.Module | None) -> bool:
        hit = rule_matches(rule, name, module)
        if hit:
            self.hits[id(rule)] = self.hits.get(id(rule), 0) + 1
        return hit

    def __call__(self, name: str, module: nn.Module | None) -> bool:
        """Whether ``name`` / ``module`` is selected (every rule is evaluated, so unused rules can be found)."""
        inc = True if self.include is None else any([self._match(r, name, module) for r in self.include])
        exc = any([self._match(r, name, module) for r in self.exclude])
        if inc and not exc:
            self.accepted.add(name)
        return inc and not exc

    def check_all_used(self) -> None:
        """``ValueError`` naming the first rule that matched nothing."""
        for kind, rules in (("include", self.include or []), ("exclude", self.exclude)):
            for rule in rules:
                if not self.hits.get(id(rule)):
                    raise ValueError(f"{kind} rule {describe_rule(rule)!r} matches no conv or pool of the model")
