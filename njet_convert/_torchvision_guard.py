"""Make ``import torchvision`` (and so ``import timm``) work when torchvision's compiled extension cannot load.

The torchvision wheel on PyPI is a CUDA build; on a CPU-only torch its extension fails to load and the import
dies with "operator torchvision::nms does not exist", because torchvision registers fake kernels for its NMS
operators unconditionally. The model definitions we need are pure Python, so declaring those operators'
schemas (and nothing else) lets the import go through. Nothing is done when the extension loads normally.
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = ["SCHEMAS", "declare", "ensure_torchvision", "guard_was_needed", "missing_operator"]

# Schemas of the operators torchvision registers fake kernels for whether or not its extension loaded.
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING = re.compile(r"operator torchvision::(\w+) does not exist")
_declared: list[Any] = []  # the torch.library.Library objects: keep the schema registrations alive


def guard_was_needed() -> bool:
    """Whether the guard had to declare operator schemas for the import to succeed."""
    return bool(_declared)


def ensure_torchvision() -> None:
    """Import torchvision, declaring missing operator schemas first if (and only if) the import needs them."""
    for _ in range(len(SCHEMAS) + 1):
        try:
            import torchvision  # noqa: F401
        except ImportError:
            return  # not installed: callers that need it raise their own error
        except RuntimeError as err:
            missing = missing_operator(err)
            if missing is None:
                raise
            _forget_partial_import()
            declare(missing)
        else:
            return
    raise RuntimeError("torchvision could not be imported even after declaring its operator schemas")


def missing_operator(err: BaseException) -> str | None:
    """The torchvision operator whose absence ``err`` reports, when it is one the guard can declare."""
    missing = _MISSING.search(str(err))
    return missing.group(1) if missing is not None and missing.group(1) in SCHEMAS else None


def declare(name: str) -> None:
    """Declare the schema of torchvision operator ``name`` (once)."""
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define(SCHEMAS[name])
    _declared.append(lib)


def _forget_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
