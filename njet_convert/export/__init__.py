"""Frozen-σ export: N-Jet networks → plain PyTorch models (:func:`freeze`) and ONNX files (:func:`export_onnx`).

Command line: ``python -m njet_convert.export MODEL_DIR --out model.onnx`` (see :mod:`njet_convert.export.__main__`).
"""

from .freeze import FreezeReport, freeze
from .onnx_export import ExportResult, OnnxExportError, VerificationError, export_onnx

__all__ = ["ExportResult", "FreezeReport", "OnnxExportError", "VerificationError", "export_onnx", "freeze"]
