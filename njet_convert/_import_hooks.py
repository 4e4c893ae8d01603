"""Lazy imports with the guarantees of eager ones: ``import njet_convert`` imports neither torchvision nor timm
(that took ~2 s), yet whenever either is imported later in the process — by njet_convert or by the user —

- torchvision goes through the import guard (:mod:`njet_convert._torchvision_guard`): when its compiled extension
  cannot load, the missing operator schemas are declared and the import is retried;
- timm gets the paper's model zoo registered (:mod:`njet_convert.models`) as soon as it has been imported, so
  ``timm.create_model("resnet32")`` works after ``import njet_convert`` as it always did.

This is a ``sys.meta_path`` finder that wraps the loaders of those two packages; nothing else is touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["install"]

_WATCHED = ("torchvision", "timm")


class _Finder(importlib.abc.MetaPathFinder):
    """Finds torchvision and timm with the other finders, then wraps their loaders."""

    def find_spec(self, name: str, path: Any, target: ModuleType | None = None) -> Any:
        if name not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader; adds the guard (torchvision) or the zoo registration (timm)."""

    def __init__(self, real: Any, name: str) -> None:
        self.real, self.name = real, name

    def __getattr__(self, attr: str) -> Any:  # resource readers, get_filename, ... of the real loader
        return getattr(self.real, attr)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if self.name == "torchvision":
            self._exec_guarded(module)
            return
        self.real.exec_module(module)
        import njet_convert.models  # noqa: F401  (registers the zoo in timm)

    def _exec_guarded(self, module: ModuleType) -> None:
        from . import _torchvision_guard as guard

        for _ in range(len(guard.SCHEMAS) + 1):
            try:
                self.real.exec_module(module)
                return
            except RuntimeError as err:
                missing = guard.missing_operator(err)
                if missing is None:
                    raise
                for sub in [n for n in sys.modules if n.startswith("torchvision.")]:
                    del sys.modules[sub]
                guard.declare(missing)
        raise RuntimeError("torchvision could not be imported even after declaring its operator schemas")


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); register the zoo now if timm is already imported."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if "timm" in sys.modules:
        import njet_convert.models  # noqa: F401
