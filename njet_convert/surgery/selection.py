"""include / exclude rules: module types, qualified-name globs, ``re:`` regexes or compiled patterns, predicates."""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from ..config import Rule, describe_rule

__all__ = ["Selector"]


class Selector:
    """Decides which convs/pools are converted; remembers which rules matched something."""

    def __init__(self, include: list[Rule] | None, exclude: list[Rule] | None) -> None:
        self.include, self.exclude = include, exclude or []
        self.hits: dict[int, int] = {}
        self.accepted: set[str] = set()

    def _match(self, rule: Rule, name: str, module: nn.Module | None) -> bool:
        if isinstance(rule, type):
            hit = isinstance(module, rule)
        elif isinstance(rule, re.Pattern):
            hit = rule.fullmatch(name) is not None
        elif isinstance(rule, str):
            regex = rule.startswith("re:")
            hit = re.fullmatch(rule[3:], name) is not None if regex else fnmatch.fnmatchcase(name, rule)
        else:
            hit = bool(rule(name, module))
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
