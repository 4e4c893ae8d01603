"""Named recipes: one YAML file per paper experiment (model, conversion, data and training hyper-parameters).

Recipes live in the top-level ``recipes/`` folder of the source tree, shipped in the wheel as the package data of
``njet_convert.recipe_files``. :func:`load_recipe` takes a recipe name, an alias (``resnet32`` for
``resnet32-cifar10``) or a path to the user's own YAML file, and validates it against the dataclasses below: an
unknown key or a wrongly typed value raises :class:`~njet_convert.errors.UserError` naming it.

``not_in_paper`` lists the dotted keys (``train.epochs``) whose values the paper does not state (taken from the
cited original papers or chosen by us), so that every number is traceable.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError, first_line

__all__ = ["ConvertSection", "DataSection", "ModelSection", "Recipe", "TrainSection", "find_recipe", "list_recipes",
           "load_recipe", "parse_recipe", "recipe_dirs"]


@dataclass
class ModelSection:
    """The network: a timm/zoo/torchvision name or ``package.module:callable``, its keyword arguments, input size."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: list[int] | None = None  # [C, H, W]


@dataclass
class ConvertSection:
    """Conversion settings (paper §3, §4.1): basis order, filter extent k, σ init, safe-subsampling r."""

    order: Any = 3  # an order, "exact" or per-layer rules (ConvertConfig's order; checked by parse_recipe)
    k: float = 2.0
    sigma: float = 1.0  # σ0 of layers built new (an untrained model); pretrained kernels get a fitted σ0 instead
    r: float = 4.0  # safe subsampling: factor = stride * 2 ** ((sigma - sigma0) / r) at converted points
    subsample: Literal["safe", "keep"] = "safe"
    include: list[str] | None = None
    exclude: list[str] | None = None


@dataclass
class DataSection:
    """Training data: a name known to :mod:`njet_convert.data.datasets` and its image size (``njet-convert RECIPE
    --finetune`` without DATA fine-tunes on it)."""

    dataset: str
    image_size: int | None = None


@dataclass
class TrainSection:
    """Optimisation of the N-Jet model as the paper trains it; ``njet-convert RECIPE --finetune`` uses every field
    (momentum for SGD, betas for Adam)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    betas: list[float] | None = None
    alpha_decay: float = 0.0  # L2 weight on the N-Jet α
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 1
    schedule: Literal["constant", "step", "multistep", "cosine", "poly"] = "constant"
    milestones: list[int] | None = None
    gamma: float = 0.1
    sigma_max_step: float = 0.0  # octaves a σ may move per step (FinetuneConfig.sigma_max_step); the paper: no bound


@dataclass
class Recipe:
    """One experiment of the paper; see the module doc."""

    name: str
    description: str
    paper: str  # where in the paper
    model: ModelSection
    convert: ConvertSection = field(default_factory=ConvertSection)
    data: DataSection | None = None
    train: TrainSection | None = None
    aliases: list[str] = field(default_factory=list)
    not_in_paper: list[str] = field(default_factory=list)
    notes: str = ""
    path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (what the YAML holds, plus ``path``)."""
        return dataclasses.asdict(self)


def recipe_dirs() -> list[Path]:
    """Folders searched for named recipes: ``$NJET_RECIPES``, the installed package data, the source tree's."""
    dirs: list[Path] = []
    if os.environ.get("NJET_RECIPES"):
        dirs.append(Path(os.environ["NJET_RECIPES"]))
    here = Path(__file__).resolve().parent
    dirs.append(here / "recipe_files")  # installed wheel (package data of njet_convert.recipe_files)
    dirs.append(here.parent / "recipes")  # source tree / editable install
    return [d for d in dirs if d.is_dir()]


def _recipe_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in reversed(recipe_dirs()):  # earlier folders win
        for path in sorted(folder.glob("*.yaml")):
            files[path.stem] = path
    return files


def list_recipes() -> list[Recipe]:
    """Every named recipe, validated, sorted by name."""
    return [load_recipe(path) for _, path in sorted(_recipe_files().items())]


def find_recipe(name: str) -> Path | None:
    """The file of recipe ``name`` or of the recipe that lists ``name`` as an alias; None when there is none."""
    files = _recipe_files()
    if name in files:
        return files[name]
    for path in files.values():
        if name in _aliases(path):
            return path
    return None


def _aliases(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    aliases = data.get("aliases") if isinstance(data, dict) else None
    return [str(a) for a in aliases] if isinstance(aliases, list) else []


def recipe_names() -> list[str]:
    """Names and aliases of the named recipes (for suggestions)."""
    files = _recipe_files()
    return sorted(set(files) | {a for p in files.values() for a in _aliases(p)})


def load_recipe(spec: str | os.PathLike) -> Recipe:
    """A recipe from a name, an alias or a YAML path; UserError when it is unknown, unreadable or invalid."""
    text = str(spec)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        found = find_recipe(text)
        if found is None:
            close = difflib.get_close_matches(text, recipe_names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see njet-convert --list-recipes"
            raise UserError(f"unknown recipe {text!r}{hint}")
        path = found
    if not path.is_file():
        raise UserError(f"recipe file not found: {text!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read recipe {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {first_line(err)}") from None
    recipe = parse_recipe(data, where=str(path))
    recipe.path = str(path)
    return recipe


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Validate plain data (a YAML mapping) against :class:`Recipe`; UserError names the first bad key."""
    recipe = _build(Recipe, data, where, "")
    _check_not_in_paper(recipe, where)
    if recipe.convert is not None:
        from .config import parse_order

        try:
            recipe.convert.order = parse_order(recipe.convert.order)
        except ValueError as err:
            raise UserError(f"{where}: convert.order: {first_line(err)}") from None
    return recipe


def _build(cls: type, data: Any, where: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the recipe'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise UserError(f"{where}: unknown key {prefix + str(key)!r}{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], where, prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing key {prefix + f.name!r}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, where, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key + ".")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        return [_value(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    return _scalar(hint, value, where, key)


def _scalar(hint: Any, value: Any, where: str, key: str) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is Any:
        return value
    kind = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(hint, str(hint))
    raise UserError(f"{where}: {key} must be {kind}, got {value!r}")


def _check_not_in_paper(recipe: Recipe, where: str) -> None:
    for dotted in recipe.not_in_paper:
        obj: Any = recipe
        for part in dotted.split("."):
            if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
                raise UserError(f"{where}: not_in_paper names an unknown key {dotted!r}")
            obj = getattr(obj, part)
