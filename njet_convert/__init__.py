"""njet_convert: model surgery that turns pretrained CNNs into N-Jet networks, fine-tunes and exports them.

Public API (docs/design.md, "Public API"): ``convert``, ``freeze``, ``export_onnx``, ``finetune``, ``save``,
``load``. Importing the package is cheap: it imports none of torch, torchvision or timm. It installs an import hook
(:mod:`njet_convert._import_hooks`) so that torchvision, whenever it is imported, goes through the import guard,
and timm, whenever it is imported, has the paper's model zoo registered (``timm.create_model("resnet32")``).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _import_hooks

_import_hooks.install()  # before anything imports timm or torchvision

# Public names -> the module that defines them; imported on first use to keep `import njet_convert` light.
_PUBLIC = {
    "convert": "njet_convert.converter",
    "ConvertConfig": "njet_convert.config",
    "ConversionReport": "njet_convert.report",
    "save": "njet_convert.serialization",
    "load": "njet_convert.serialization",
    "freeze": "njet_convert.export.freeze",
    "export_onnx": "njet_convert.export.onnx_export",
    "finetune": "njet_convert.training.finetune",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'njet_convert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
