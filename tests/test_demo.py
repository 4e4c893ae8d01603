"""``make demo``'s output folder: every file it writes is listed in its manifest (written last), and the folder
loads back."""

from __future__ import annotations

import json

import timm
import torch

import njet_convert
from njet_convert.demo import write_folder
from njet_convert.serialization import MANIFEST_FILE


def test_demo_folder_manifest_lists_every_file_including_report_and_onnx(tmp_path):
    torch.manual_seed(0)
    model, report = njet_convert.convert(timm.create_model("mnist_toy2_conv3").eval(), order=2, progress=False,
                                         source="timm:mnist_toy2_conv3")
    out = tmp_path / "demo"
    result = write_folder(model, report, out, torch.randn(2, 1, 28, 28))
    assert result is not None and max(result.checks.values()) < 1e-3
    files = json.loads((out / MANIFEST_FILE).read_text())["files"]
    written = {p.name for p in out.iterdir()} - {MANIFEST_FILE}
    assert {"report.md", "report.json", "model.onnx", "model.safetensors", "config.json"} <= written
    assert set(files) == written  # report.md, report.json and model.onnx were written after the manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left beside it
    njet_convert.load(out)  # the manifest matches what is there
