"""The table of bad and hostile inputs of the robustness benchmark (benchmarks/robustness.py): one row per input,
its entry point, how it is run and the outcome the project promises. The inputs and runners are in
benchmarks/robustness_inputs.py."""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from robustness_inputs import (
    MODEL,
    Files,
    Outcome,
    Payload,
    api,
    convert_cli,
    damaged_checkpoint,
    failing_export,
    full_disk,
    full_disk_finetune,
    hostile_folder,
    image_folder,
    mkdir,
    module_cli,
    nan_state,
    no_matplotlib,
    png_header,
    run_code_source,
    signalled_cli,
    torn,
    truncated,
    user_module_cli,
    write,
)
from torch import nn

import njet_convert
from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["CASES", "Case"]


@dataclass
class Case:
    """One bad or hostile input. ``run(files, work)`` runs it in the fresh folder ``work`` (``work/out`` holds an
    earlier result when ``guard``; a payload that executes creates ``work/CANARY``)."""

    name: str
    via: str
    run: Callable[[Files, Path], Outcome]
    expect: tuple[str, ...] = ("2",)
    guard: bool = False


CLI, API = "njet-convert", "API"
FT = [MODEL, "--finetune", "opencv-digits", "--no-plots", "--max-steps-per-epoch", "3"]  # a few fine-tuning steps
NO_GPU = not torch.cuda.is_available()


def out(work: Path) -> str:
    return str(work / "out")


def ckpt(work: Path, name: str, make: Callable[[Path], None]) -> str:
    """``work/name`` written by ``make``; its path."""
    make(work / name)
    return str(work / name)


def _toy() -> nn.Module:
    import timm

    return timm.create_model("mnist_toy2_conv3")


def load(folder: Path) -> object:
    return njet_convert.load(folder)


def hostile(files: Files, work: Path) -> Path:
    return hostile_folder(files, work, run_code_source(work / "CANARY"))


def drop(key: str) -> Callable[[dict], None]:
    return lambda record: record.pop(key)


def set_sub(key: str, value: object) -> Callable[[dict], None]:
    return lambda record: [v.__setitem__(key, value) for v in record["subsampling"].values()]


def _convert(calibration: torch.Tensor) -> object:
    return njet_convert.convert(_toy(), calibration=calibration, progress=False)


def _nan_checkpoint(work: Path) -> Path:
    torch.save(nan_state(_toy().state_dict()), work / "nan.pth")
    return work / "nan.pth"


def _diverging_finetune(work: Path) -> object:
    from njet_convert.training import FinetuneConfig, finetune

    x = torch.randn(32, 1, 8, 8)
    data = (x, (x.mean((1, 2, 3)) > 0).long())
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    cfg = FinetuneConfig(batch_size=8, progress=False, plots=False, lr=1e8)
    return finetune(small, data, data, epochs=2, config=cfg, out_dir=work / "run", device="cpu")


def _load_checkpoint(work: Path) -> object:
    from njet_convert.checkpoints import load_checkpoint

    return load_checkpoint(_toy(), _nan_checkpoint(work))


CASES: list[Case] = [
    # -- njet-convert: model, weights, options, data
    Case("unknown model name", CLI, lambda f, w: convert_cli("resnt32", "--out", out(w)), guard=True),
    Case("checkpoint file missing", CLI,
         lambda f, w: convert_cli(MODEL, "--checkpoint", str(w / "nope.pth"), "--out", out(w)), guard=True),
    Case("checkpoint of random bytes", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "junk.pth", lambda p: p.write_bytes(os.urandom(4096))), "--out", out(w)),
        guard=True),
    Case("checkpoint truncated to half", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "half.pth", lambda p: truncated(p, f.state)), "--out", out(w)), guard=True),
    Case("pickle checkpoint that runs a command", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "evil.pth", lambda p: torch.save({"x": Payload(w / "CANARY")}, p)),
        "--out", out(w)), guard=True),
    Case("checkpoint of another network", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "other.pth", lambda p: torch.save(nn.Linear(3, 4).state_dict(), p)),
        "--out", out(w)), guard=True),
    Case("checkpoint whose weights are all NaN", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "nan.pth", lambda p: torch.save(nan_state(f.state), p)), "--out", out(w)),
        guard=True),
    Case("safetensors of random bytes", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "junk.safetensors", lambda p: p.write_bytes(os.urandom(512))),
        "--out", out(w)), guard=True),
    Case("safetensors header claiming 2**60 bytes", CLI, lambda f, w: convert_cli(
        MODEL, "--checkpoint", ckpt(w, "huge.safetensors", lambda p: p.write_bytes(struct.pack("<Q", 2**60))),
        "--out", out(w)), guard=True),
    Case("MODEL callable returning a non-module", CLI, lambda f, w: user_module_cli(w, "number")),
    Case("MODEL callable not taking --num-classes", CLI,
         lambda f, w: user_module_cli(w, "conv", "--num-classes", "3")),
    Case("recipe YAML with a python/object tag", CLI, lambda f, w: convert_cli(
        ckpt(w, "evil.yaml", lambda p: p.write_text(f"!!python/object/apply:os.system ['touch {w / 'CANARY'}']\n")),
        "--out", out(w)), guard=True),
    Case("recipe with an unknown key", CLI, lambda f, w: convert_cli(
        ckpt(w, "typo.yaml", lambda p: p.write_text("name: t\ndescription: x\npaper: none\nmodel: {name: "
                                                    "resnet20}\ntrain: {lrr: 0.1}\n")), "--dry-run")),
    Case("--order -1", CLI, lambda f, w: convert_cli(MODEL, "--order", "-1", "--out", out(w)), guard=True),
    Case("--order 100", CLI, lambda f, w: convert_cli(MODEL, "--order", "100", "--out", out(w)), guard=True),
    Case("--k 1e6", CLI, lambda f, w: convert_cli(MODEL, "--k", "1e6", "--out", out(w)), guard=True),
    Case("--k nan", CLI, lambda f, w: convert_cli(MODEL, "--k", "nan", "--out", out(w)), guard=True),
    Case("--input-size with 3 channels for a 1-channel model", CLI,
         lambda f, w: convert_cli(MODEL, "--input-size", "3,28,28", "--out", out(w)), guard=True),
    Case("--input-size 0,0,0", CLI, lambda f, w: convert_cli(MODEL, "--input-size", "0,0,0")),
    Case("--resume without --finetune", CLI,
         lambda f, w: convert_cli(MODEL, "--resume", str(w / "out"), "--out", out(w)), guard=True),
    Case("--device cuda without a GPU" if NO_GPU else "--device nonsense", CLI,
         lambda f, w: convert_cli(MODEL, "--device", "cuda" if NO_GPU else "tpu")),
    Case("--out is a file", CLI,
         lambda f, w: convert_cli(MODEL, "--out", ckpt(w, "file", lambda p: p.write_text("x")))),
    Case("--out below a file", CLI, lambda f, w: convert_cli(
        MODEL, "--out", ckpt(w, "blocker", lambda p: p.write_text("x")) + "/out")),
    Case("--calibrate unknown name", CLI,
         lambda f, w: convert_cli(MODEL, "--calibrate", "imagenet-22k", "--out", out(w)), guard=True),
    Case("--calibrate empty folder", CLI,
         lambda f, w: convert_cli(MODEL, "--calibrate", mkdir(w / "empty"), "--out", out(w)), guard=True),
    Case("--calibrate corrupt image in class folders", CLI, lambda f, w: convert_cli(
        MODEL, "--calibrate", str(image_folder(w / "data", b"\x89PNG garbage" * 20)), "--out", out(w)), guard=True),
    Case("--calibrate 40000x40000 PNG header (bomb)", CLI, lambda f, w: convert_cli(
        MODEL, "--calibrate", str(image_folder(w / "data", png_header(40000, 40000))), "--out", out(w)),
        guard=True),
    Case("--calibration-images 0", CLI,
         lambda f, w: convert_cli(MODEL, "--calibrate", "photos", "--calibration-images", "0")),
    Case("full disk while saving", CLI, full_disk),
    # -- njet-convert --finetune: data, hyper-parameters, checkpoints, signals, a missing plotting library
    Case("--finetune corrupt image in class folders", CLI, lambda f, w: convert_cli(
        MODEL, "--finetune", str(image_folder(w / "d", b"not an image" * 9, channels="L")), "--input-size",
        "1,28,28", "--out", out(w)), guard=True),
    Case("--finetune corrupt image read by a DataLoader worker", CLI, lambda f, w: convert_cli(
        "resnet20", "--finetune", str(image_folder(w / "d", b"GIF89a broken", channels="RGB", bad_name="c1/z.png")),
        "--workers", "2", "--input-size", "3,32,32", "--out", out(w)), guard=True),
    Case("--finetune labels beyond --num-classes", CLI,
         lambda f, w: convert_cli(*FT, "--num-classes", "5", "--out", out(w)), guard=True),
    Case("--finetune RGB folder into a 1-channel model", CLI, lambda f, w: convert_cli(
        MODEL, "--finetune", str(image_folder(w / "d", channels="RGB")), "--out", out(w)), guard=True),
    Case("--finetune --lr 1e8 (diverges)", CLI, lambda f, w: convert_cli(*FT, "--lr", "1e8", "--out", out(w)),
         guard=True),
    Case("--finetune --epochs 0", CLI, lambda f, w: convert_cli(*FT, "--epochs", "0", "--out", out(w)), guard=True),
    Case("--finetune --batch-size 0", CLI, lambda f, w: convert_cli(*FT, "--batch-size", "0", "--out", out(w)),
         guard=True),
    Case("--resume of random bytes", CLI, lambda f, w: convert_cli(
        *FT, "--resume", write(w / "junk.pt", os.urandom(999)), "--out", out(w)), guard=True),
    Case("--resume checkpoint without optimizer state", CLI,
         lambda f, w: convert_cli(*FT, "--resume", damaged_checkpoint(w), "--out", out(w)), guard=True),
    Case("--finetune without matplotlib (plots extra)", CLI, lambda f, w: no_matplotlib(w), ("0",)),
    Case("full disk while fine-tuning (checkpoint)", CLI, full_disk_finetune),
    Case("SIGINT during fine-tuning", CLI, lambda f, w: signalled_cli(
        [*FT[:-2], "--epochs", "50", "--out", out(w)], signal.SIGINT, "validation before"), ("130",), guard=True),
    Case("SIGTERM during fine-tuning", CLI, lambda f, w: signalled_cli(
        [*FT[:-2], "--epochs", "50", "--out", out(w)], signal.SIGTERM, "validation before"), ("143",), guard=True),
    Case("SIGINT 0.5 s after start (imports)", CLI,
         lambda f, w: signalled_cli([MODEL, "--dry-run"], signal.SIGINT, 0.5), ("130",)),
    # -- saved folders that were tampered with or torn: load, the export and the training entry points
    Case("config.json naming subprocess:getoutput: load()", API, lambda f, w: api(lambda: load(hostile(f, w))),
         ("ValueError",)),
    Case("config.json naming subprocess:getoutput: export CLI", "export CLI", lambda f, w: module_cli(
        "njet_convert.export", str(hostile(f, w)), "--out", str(w / "m.onnx"))),
    Case("config.json naming subprocess:getoutput: training CLI", "training CLI", lambda f, w: module_cli(
        "njet_convert.training", str(hostile(f, w)), "--finetune", "opencv-digits", "--out", str(w / "t"),
        "--max-steps-per-epoch", "1")),
    Case("config.json without 'source'", API,
         lambda f, w: api(lambda: load(hostile_folder(f, w, drop("source")))), ("ValueError",)),
    Case("config.json without 'layers'", API,
         lambda f, w: api(lambda: load(hostile_folder(f, w, drop("layers")))), ("ValueError",)),
    Case("config.json with subsampling r = -1", API,
         lambda f, w: api(lambda: load(hostile_folder(f, w, set_sub("r", -1)))), ("ValueError",)),
    Case("config.json with an unknown subsampling mode", API,
         lambda f, w: api(lambda: load(hostile_folder(f, w, set_sub("mode", "magic")))), ("ValueError",)),
    Case("torn folder: new weights beside the old config", API, lambda f, w: api(lambda: load(torn(f, w))),
         ("ValueError",)),
    Case("--export-onnx fails onto an existing result", CLI, lambda f, w: failing_export(w), guard=True),
    # -- the Python API: layers, convert, checkpoints, finetune
    Case("NJetConv2d(k=1e9)", API, lambda f, w: api(lambda: NJetConv2d(64, 64, k=1e9)), ("ValueError",)),
    Case("NJetConv2d(order=100)", API, lambda f, w: api(lambda: NJetConv2d(1, 1, order=100)), ("ValueError",)),
    Case("NJetConv2d(sigma='1.0')", API, lambda f, w: api(lambda: NJetConv2d(1, 1, sigma="1.0")), ("ValueError",)),
    Case("SafeSubsample(source=nn.Conv2d(...))", API,
         lambda f, w: api(lambda: SafeSubsample(source=nn.Conv2d(1, 1, 3))), ("ValueError",)),
    Case("SafeSubsample(r=1e-300)", API, lambda f, w: api(lambda: SafeSubsample(r=1e-300, sigma=1.0)),
         ("ValueError",)),
    Case("SafeSubsample(sigma=torch.ones(3))", API, lambda f, w: api(lambda: SafeSubsample(sigma=torch.ones(3))),
         ("ValueError",)),
    Case("convert(k=1e6)", API, lambda f, w: api(lambda: njet_convert.convert(_toy(), k=1e6, progress=False)),
         ("ValueError",)),
    Case("convert(calibration=1e30)", API, lambda f, w: api(lambda: _convert(torch.full((4, 1, 28, 28), 1e30))),
         ("ValueError",)),
    Case("convert(calibration=NaN)", API,
         lambda f, w: api(lambda: _convert(torch.full((4, 1, 28, 28), float("nan")))), ("ValueError",)),
    Case("load_checkpoint(all-NaN file)", API, lambda f, w: api(lambda: _load_checkpoint(w)), ("ValueError",)),
    Case("finetune(lr=1e8)", API, lambda f, w: api(lambda: _diverging_finetune(w)), ("NonFiniteLossError",)),
]
