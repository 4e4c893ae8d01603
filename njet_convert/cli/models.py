"""MODEL on the command line: a recipe (name, alias or YAML path) or a network name, resolved to a
:class:`ModelSpec` (docs/design.md, "Command line"). Which network a name means is decided by
:func:`njet_convert.record.find_architecture`; this module adds recipes, ``--num-classes`` and the user-facing
errors (close matches, wrong builder arguments).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError, first_line
from ..record import Architecture, find_architecture, torchvision_names
from .exits import api

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelSpec", "resolve_model"]


@dataclass
class ModelSpec:
    """A resolved MODEL: its architecture (what :func:`njet_convert.load` rebuilds) and its recipe if any."""

    arch: Architecture
    recipe: Any = None
    input_size: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        return self.arch.builder

    @property
    def source(self) -> dict[str, Any]:
        return self.arch.to_json()

    def build(self, pretrained: bool) -> nn.Module:
        """The network (hub weights when ``pretrained``); UserError for what the user can fix. The user named this
        MODEL on the command line, so a ``module:callable`` is trusted."""
        def make() -> Any:
            return self.arch.build(pretrained=pretrained, trust_code=True)

        if not pretrained:
            return _module(api(lambda: _call_with_kwargs(make, self.name), f"building {self.name}"), self.name)
        if self.arch.kind == "code":
            raise UserError(f"--pretrained works for timm and torchvision names, not {self.name!r}; "
                            "use --checkpoint PATH")
        from ..checkpoints import pretrained_or_exit

        host = "huggingface.co" if self.arch.kind == "timm" else "download.pytorch.org"
        return _module(api(lambda: pretrained_or_exit(make, self.name, host), f"--pretrained {self.name}"),
                       self.name)


# A TypeError is the user's only when the call's arguments (MODEL kwargs, --num-classes) do not fit the signature.
_SIGNATURE_ERRORS = ("unexpected keyword argument", "required positional argument", "required keyword-only",
                     "positional argument but", "positional arguments but", "multiple values for argument")


def _call_with_kwargs(make: Callable[[], Any], name: str) -> Any:
    try:
        return make()
    except TypeError as err:
        if any(text in str(err) for text in _SIGNATURE_ERRORS):
            raise UserError(f"building {name}: {first_line(err)}") from None
        raise


def _module(model: Any, name: str) -> nn.Module:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UserError(f"MODEL {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def resolve_model(name: str, num_classes: int | None = None) -> ModelSpec:
    """Resolve MODEL: a recipe (name, alias or YAML path), a timm name (the paper's zoo is registered in timm), a
    torchvision name (``tv:`` prefix forces it), ``package.module:callable``; UserError with close matches when
    nothing fits."""
    from ..recipes import find_recipe, load_recipe, recipe_names

    if name.endswith((".yaml", ".yml")) or find_recipe(name) is not None:
        recipe = load_recipe(name)
        arch = find_architecture(recipe.model.name)
        if arch is None:
            raise UserError(f"recipe {name!r} names an unknown model {recipe.model.name!r}")
        size = recipe.model.input_size
        spec = ModelSpec(Architecture(arch.name, {**arch.kwargs, **recipe.model.kwargs}), recipe,
                         tuple(size) if size else None)  # type: ignore[arg-type]
    else:
        found = find_architecture(name)
        if found is None:
            import timm

            pool = list(dict.fromkeys(recipe_names() + timm.list_models() + torchvision_names()))
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see --list-recipes, timm.list_models()"
            raise UserError(f"unknown model {name!r}{hint}")
        spec = ModelSpec(found)
    if num_classes is not None:
        spec = ModelSpec(Architecture(spec.arch.name, {**spec.arch.kwargs, "num_classes": num_classes}),
                         spec.recipe, spec.input_size)
    return spec
