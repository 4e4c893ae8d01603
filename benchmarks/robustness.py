"""Bad and hostile inputs through the command line and the API: does each one end the way the project promises?

The promise (README, "Command line"): bad input exits 2 (``ValueError`` in the API) with a one-line error and no
traceback; a signal exits 130 (SIGINT) or 143 (SIGTERM); an earlier result in the output folder survives whatever
happens; nothing in a file runs code. Each row runs one input in a fresh folder and prints:

- ``outcome``: the exit code (CLI rows) or the exception type (API rows; ``-`` when nothing was raised);
- ``1 line``: the error is one line and no traceback was printed;
- ``lost``: an earlier result in the output folder (weights, config, reports, ONNX) changed or vanished;
- ``ran``: a canary file that the hostile payload would create exists afterwards (code was executed);
- ``ok``: all four as promised. The script exits 1 when any row is not.

    python benchmarks/robustness.py [--only WORD] [--json results.json]

Takes a few minutes on 2 CPU cores (each CLI row is a fresh Python process that imports torch).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import njet_convert  # first: the torchvision guard and the model zoo

__all__ = ["Case", "Outcome", "all_cases", "main", "run_case"]

RESULT_FILES = ("model.safetensors", "config.json", "report.md", "report.json", "model.onnx")
MODEL = "mnist-toy2"  # a recipe whose conversion takes a second
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Outcome:
    """How one input ended: exit code or exception type, whether the error was one line, its message."""

    code: str
    one_line: bool
    message: str = ""


@dataclass
class Case:
    """One bad or hostile input. ``run(work)`` runs it in the fresh folder ``work`` (``work/out`` holds an earlier
    result when ``guard``; a payload that executes creates ``work/CANARY``)."""

    name: str
    via: str
    run: Callable[[Path], Outcome]
    expect: tuple[str, ...] = ("2",)
    guard: bool = False


@dataclass
class Row:
    name: str
    via: str
    outcome: str
    expect: str
    one_line: bool
    lost: bool
    ran: bool
    ok: bool
    message: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# -- runners -----------------------------------------------------------------------------------------------------


def _outcome(code: int, stderr: str, stdout: str = "") -> Outcome:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    errors = [line for line in lines if line.startswith(("njet-convert: ", "error: "))]
    one = "Traceback" not in stderr + stdout and (code == 0 or (len(errors) == 1 and errors[0] == last))
    return Outcome(str(code), one, last[:300])


def convert_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600) -> Outcome:
    """``njet-convert ARGS`` in a fresh process."""
    return _proc([sys.executable, "-m", "njet_convert.cli", *args], env, cwd, timeout)


def module_cli(module: str, *args: str, env: dict | None = None) -> Outcome:
    """``python -m MODULE ARGS`` (the training and export entry points)."""
    return _proc([sys.executable, "-m", module, *args], env, None, 600)


def _proc(cmd: list[str], env: dict | None, cwd: Path | None, timeout: int) -> Outcome:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, cwd=cwd, timeout=timeout)
    return _outcome(proc.returncode, proc.stderr, proc.stdout)


def signalled_cli(args: list[str], signum: int, after: str | float) -> Outcome:
    """Run ``njet-convert ARGS`` and send ``signum`` when stderr shows ``after`` (or after ``after`` seconds)."""
    proc = subprocess.Popen([sys.executable, "-m", "njet_convert.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    seen: list[str] = []
    if isinstance(after, str):
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if after in line:
                break
    else:
        time.sleep(after)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return _outcome(proc.returncode, "".join(seen) + err, out)


def api(fn: Callable[[], object]) -> Outcome:
    """Call ``fn``; the outcome is the type of what it raised (``ValueError`` for any subclass of it)."""
    try:
        fn()
    except Exception as err:  # the point is to see every kind
        name = "ValueError" if isinstance(err, ValueError) else type(err).__name__
        text = str(err)
        return Outcome(name, "\n" not in text.strip(), f"{type(err).__name__}: {text.strip()[:300]}")
    return Outcome("-", True, "no error")


# -- fixtures ----------------------------------------------------------------------------------------------------


class Files:
    """Inputs made once per benchmark run: an earlier result, bad checkpoints, bad images, hostile payloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.previous, self.k3 = root / "previous", root / "k3"
        with contextlib.redirect_stdout(io.StringIO()):
            assert _in_process_cli([MODEL, "--out", str(self.previous), "--quiet"]) == 0
            assert _in_process_cli([MODEL, "--k", "3", "--out", str(self.k3), "--quiet"]) == 0

    def model_state(self) -> dict[str, torch.Tensor]:
        import timm

        return timm.create_model("mnist_toy2_conv3").state_dict()


def _in_process_cli(argv: list[str]) -> int:
    from njet_convert import cli

    return cli.main(argv)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_folder(root: Path, bad: bytes | None = None, classes: int = 2, channels: str = "L",
                 bad_name: str = "c0/0-bad.png") -> Path:
    """Class sub-folders of small images, plus ``bad`` as ``bad_name`` when given (by default the first file read)."""
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new(channels, (28, 28), 30 * i + 60 * c).save(root / f"c{c}" / f"{i}.png")
    if bad is not None:
        (root / bad_name).write_bytes(bad)
    return root


class _Payload:
    """Pickled object that touches a file when unpickled (what weights_only=True must refuse)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def hostile_folder(files: Files, work: Path, edit: Callable[[dict], None], name: str = "hostile") -> Path:
    """A copy of the earlier result whose ``config.json`` is changed by ``edit``, with a manifest that matches the
    edit (as an attacker would write it), so what refuses it is the record's own validation or the trust rule."""
    from njet_convert.serialization import write_manifest

    folder = work / name
    shutil.copytree(files.previous, folder)
    record = json.loads((folder / "config.json").read_text())
    edit(record)
    (folder / "config.json").write_text(json.dumps(record))
    write_manifest(folder)
    return folder


def _run_code_source(canary: Path) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        record["source"] = {"name": "subprocess:getoutput", "kwargs": {"cmd": f"touch {canary}"}}
    return edit


def _blocked_matplotlib(work: Path) -> dict:
    """An environment in which ``import matplotlib`` fails (the package installed without its plots extra)."""
    stub = work / "no_matplotlib" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named matplotlib (blocked for this check)')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(stub.parent), ENV.get("PYTHONPATH", "")])}


def _previous_result(files: Files, out: Path) -> None:
    shutil.copytree(files.previous, out, dirs_exist_ok=True)


def _mount_small_disk(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def full_disk(files: Files, work: Path) -> Outcome:
    """A real full disk (a 300 KB tmpfs holding the earlier result) when this process may mount one; otherwise the
    same failure simulated in process (safetensors' ENOSPC error from ``save``)."""
    out = work / "out"
    if _mount_small_disk(out, "300k"):
        try:
            _previous_result(files, out)
            before = _hashes(out)
            result = convert_cli("resnet20", "--out", str(out))  # 1 MB of weights: ENOSPC
            result.message += " [real tmpfs]" if _hashes(out) == before else " [real tmpfs; earlier result LOST]"
            return result
        finally:
            subprocess.run(["umount", str(out)], capture_output=True)
    code = (
        "import sys; from safetensors import SafetensorError; from njet_convert import cli, serialization\n"
        "def full(*a, **k): raise SafetensorError('Error while serializing: I/O error: No space left on device "
        "(os error 28)')\nserialization.save = full\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    _previous_result(files, out)
    result = _proc([sys.executable, "-c", code, MODEL, "--order", "2", "--out", str(out)], None, None, 600)
    result.message += " [simulated]"
    return result


# -- the cases ---------------------------------------------------------------------------------------------------


def cli_cases(files: Files) -> list[Case]:
    """Inputs to ``njet-convert`` (model, weights, options, data)."""
    state = files.model_state()

    def ckpt(work: Path, name: str, write: Callable[[Path], None]) -> str:
        path = work / name
        write(path)
        return str(path)

    def out(work: Path) -> str:
        return str(work / "out")

    return [
        Case("unknown model name", "njet-convert", lambda w: convert_cli("resnt32", "--out", out(w)), guard=True),
        Case("checkpoint file missing", "njet-convert",
             lambda w: convert_cli(MODEL, "--checkpoint", str(w / "nope.pth"), "--out", out(w)), guard=True),
        Case("checkpoint of random bytes", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "junk.pth", lambda p: p.write_bytes(os.urandom(4096))), "--out", out(w)),
            guard=True),
        Case("checkpoint truncated to half", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "half.pth", lambda p: _truncated(p, state)), "--out", out(w)), guard=True),
        Case("pickle checkpoint that runs a command", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "evil.pth", lambda p: torch.save({"x": _Payload(w / "CANARY")}, p)),
            "--out", out(w)), guard=True),
        Case("checkpoint of another network", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "other.pth", lambda p: torch.save(nn.Linear(3, 4).state_dict(), p)),
            "--out", out(w)), guard=True),
        Case("checkpoint whose weights are all NaN", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "nan.pth", lambda p: torch.save(_nan(state), p)), "--out", out(w)),
            guard=True),
        Case("safetensors of random bytes", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "junk.safetensors", lambda p: p.write_bytes(os.urandom(512))),
            "--out", out(w)), guard=True),
        Case("safetensors header claiming 2**60 bytes", "njet-convert", lambda w: convert_cli(
            MODEL, "--checkpoint", ckpt(w, "huge.safetensors", lambda p: p.write_bytes(struct.pack("<Q", 2**60))),
            "--out", out(w)), guard=True),
        Case("MODEL callable returning a non-module", "njet-convert", lambda w: _user_module_cli(w, "number")),
        Case("MODEL callable not taking --num-classes", "njet-convert",
             lambda w: _user_module_cli(w, "conv", "--num-classes", "3")),
        Case("recipe YAML with a python/object tag", "njet-convert", lambda w: convert_cli(
            ckpt(w, "evil.yaml", lambda p: p.write_text(f"!!python/object/apply:os.system ['touch {w / 'CANARY'}']\n")),
            "--out", out(w)), guard=True),
        Case("recipe with an unknown key", "njet-convert", lambda w: convert_cli(
            ckpt(w, "typo.yaml", lambda p: p.write_text("name: t\ndescription: x\npaper: none\nmodel: {name: "
                                                        "resnet20}\ntrain: {lrr: 0.1}\n")), "--dry-run")),
        Case("--order -1", "njet-convert", lambda w: convert_cli(MODEL, "--order", "-1", "--out", out(w)), guard=True),
        Case("--order 100", "njet-convert", lambda w: convert_cli(MODEL, "--order", "100", "--out", out(w)),
             guard=True),
        Case("--k 1e6", "njet-convert", lambda w: convert_cli(MODEL, "--k", "1e6", "--out", out(w)), guard=True),
        Case("--k nan", "njet-convert", lambda w: convert_cli(MODEL, "--k", "nan", "--out", out(w)), guard=True),
        Case("--input-size with 3 channels for a 1-channel model", "njet-convert",
             lambda w: convert_cli(MODEL, "--input-size", "3,28,28", "--out", out(w)), guard=True),
        Case("--input-size 0,0,0", "njet-convert", lambda w: convert_cli(MODEL, "--input-size", "0,0,0")),
        Case("--resume without --finetune", "njet-convert",
             lambda w: convert_cli(MODEL, "--resume", str(w / "out"), "--out", out(w)), guard=True),
        Case("--device cuda without a GPU" if not torch.cuda.is_available() else "--device nonsense", "njet-convert",
             lambda w: convert_cli(MODEL, "--device", "cuda" if not torch.cuda.is_available() else "tpu")),
        Case("--out is a file", "njet-convert", lambda w: convert_cli(
            MODEL, "--out", ckpt(w, "file", lambda p: p.write_text("x")))),
        Case("--out below a file", "njet-convert", lambda w: convert_cli(
            MODEL, "--out", ckpt(w, "blocker", lambda p: p.write_text("x")) + "/out")),
        Case("--calibrate unknown name", "njet-convert",
             lambda w: convert_cli(MODEL, "--calibrate", "imagenet-22k", "--out", out(w)), guard=True),
        Case("--calibrate empty folder", "njet-convert",
             lambda w: convert_cli(MODEL, "--calibrate", _mkdir(w / "empty"), "--out", out(w)), guard=True),
        Case("--calibrate corrupt image in class folders", "njet-convert", lambda w: convert_cli(
            MODEL, "--calibrate", str(image_folder(w / "data", b"\x89PNG garbage" * 20)), "--out", out(w)),
            guard=True),
        Case("--calibrate 40000x40000 PNG header (bomb)", "njet-convert", lambda w: convert_cli(
            MODEL, "--calibrate", str(image_folder(w / "data", _png_header(40000, 40000))), "--out", out(w)),
            guard=True),
        Case("--calibration-images 0", "njet-convert",
             lambda w: convert_cli(MODEL, "--calibrate", "photos", "--calibration-images", "0")),
        Case("full disk while saving", "njet-convert", lambda w: full_disk(files, w)),
    ]


def _truncated(path: Path, state: dict) -> None:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


def _mkdir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _user_module_cli(work: Path, name: str, *args: str) -> Outcome:
    (work / "user_models.py").write_text("from torch import nn\n\ndef number():\n    return 42\n\n"
                                         "def conv():\n    return nn.Conv2d(3, 4, 3)\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(work), ENV.get("PYTHONPATH", "")])}
    return convert_cli(f"user_models:{name}", *args, "--dry-run", env=env)


def finetune_cases(files: Files) -> list[Case]:
    """``njet-convert --finetune``: data, hyper-parameters, checkpoints, signals, a missing plotting library."""
    ft = [MODEL, "--finetune", "opencv-digits", "--no-plots", "--max-steps-per-epoch", "3"]

    def out(work: Path) -> list[str]:
        return ["--out", str(work / "out")]

    return [
        Case("--finetune corrupt image in class folders", "njet-convert", lambda w: convert_cli(
            MODEL, "--finetune", str(image_folder(w / "d", b"not an image" * 9, channels="L")), "--input-size",
            "1,28,28", *out(w)), guard=True),
        Case("--finetune corrupt image read by a DataLoader worker", "njet-convert", lambda w: convert_cli(
            "resnet20", "--finetune", str(image_folder(w / "d", b"GIF89a broken", channels="RGB", bad_name="c1/z.png")),
            "--workers", "2", "--input-size", "3,32,32", *out(w)), guard=True),
        Case("--finetune labels beyond --num-classes", "njet-convert",
             lambda w: convert_cli(*ft, "--num-classes", "5", *out(w)), guard=True),
        Case("--finetune RGB folder into a 1-channel model", "njet-convert", lambda w: convert_cli(
            MODEL, "--finetune", str(image_folder(w / "d", channels="RGB")), *out(w)), guard=True),
        Case("--finetune --lr 1e8 (diverges)", "njet-convert",
             lambda w: convert_cli(*ft, "--lr", "1e8", *out(w)), guard=True),
        Case("--finetune --epochs 0", "njet-convert", lambda w: convert_cli(*ft, "--epochs", "0", *out(w)),
             guard=True),
        Case("--finetune --batch-size 0", "njet-convert", lambda w: convert_cli(*ft, "--batch-size", "0", *out(w)),
             guard=True),
        Case("--resume of random bytes", "njet-convert", lambda w: convert_cli(
            *ft, "--resume", _write(w / "junk.pt", os.urandom(999)), *out(w)), guard=True),
        Case("--resume checkpoint without optimizer state", "njet-convert",
             lambda w: convert_cli(*ft, "--resume", _damaged_checkpoint(w), *out(w)), guard=True),
        Case("--finetune without matplotlib (plots extra)", "njet-convert", lambda w: _no_matplotlib(w), ("0",)),
        Case("SIGINT during fine-tuning", "njet-convert", lambda w: signalled_cli(
            [*ft[:-2], "--epochs", "50", *out(w)], signal.SIGINT, "validation before"), ("130",), guard=True),
        Case("SIGTERM during fine-tuning", "njet-convert", lambda w: signalled_cli(
            [*ft[:-2], "--epochs", "50", *out(w)], signal.SIGTERM, "validation before"), ("143",), guard=True),
        Case("SIGINT 0.5 s after start (imports)", "njet-convert",
             lambda w: signalled_cli([MODEL, "--dry-run"], signal.SIGINT, 0.5), ("130",)),
    ]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _damaged_checkpoint(work: Path) -> str:
    from njet_convert.training import FinetuneConfig, finetune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    finetune(model, (x, y), epochs=1, config=FinetuneConfig(batch_size=8, progress=False, plots=False),
             out_dir=work / "run", device="cpu")
    state = torch.load(work / "run" / "checkpoint.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, work / "damaged.pt")
    return str(work / "damaged.pt")


def _no_matplotlib(work: Path) -> Outcome:
    args = [MODEL, "--finetune", "opencv-digits", "--max-steps-per-epoch", "2", "--out", str(work / "out")]
    result = convert_cli(*args, env=_blocked_matplotlib(work))
    saved = (work / "out" / "model.safetensors").is_file()
    result.message = ("model saved; " if saved else "NO MODEL SAVED; ") + result.message
    if not saved:
        result.code += " (no model)"
    return result


def loading_cases(files: Files) -> list[Case]:
    """Saved folders that were tampered with or torn, read by ``load``, the export and the training entry points."""
    def hostile(w: Path) -> Path:
        return hostile_folder(files, w, _run_code_source(w / "CANARY"))

    def drop(key: str) -> Callable[[dict], None]:
        return lambda record: record.pop(key)

    def set_sub(key: str, value: object) -> Callable[[dict], None]:
        return lambda record: [v.__setitem__(key, value) for v in record["subsampling"].values()]

    def load(folder: Path) -> object:
        from njet_convert import load as load_folder

        return load_folder(folder)

    return [
        Case("config.json naming subprocess:getoutput: load()", "API", lambda w: api(lambda: load(hostile(w))),
             ("ValueError",)),
        Case("config.json naming subprocess:getoutput: export CLI", "export CLI", lambda w: module_cli(
            "njet_convert.export", str(hostile(w)), "--out", str(w / "m.onnx"))),
        Case("config.json naming subprocess:getoutput: training CLI", "training CLI", lambda w: module_cli(
            "njet_convert.training", str(hostile(w)), "--finetune", "opencv-digits", "--out", str(w / "t"),
            "--max-steps-per-epoch", "1")),
        Case("config.json without 'source'", "API",
             lambda w: api(lambda: load(hostile_folder(files, w, drop("source")))), ("ValueError",)),
        Case("config.json without 'layers'", "API",
             lambda w: api(lambda: load(hostile_folder(files, w, drop("layers")))), ("ValueError",)),
        Case("config.json with subsampling r = -1", "API",
             lambda w: api(lambda: load(hostile_folder(files, w, set_sub("r", -1)))), ("ValueError",)),
        Case("config.json with an unknown subsampling mode", "API",
             lambda w: api(lambda: load(hostile_folder(files, w, set_sub("mode", "magic")))), ("ValueError",)),
        Case("torn folder: new weights beside the old config", "API", lambda w: api(lambda: load(_torn(files, w))),
             ("ValueError",)),
        Case("--export-onnx fails onto an existing result", "njet-convert", lambda w: _failing_export(w),
             guard=True),
    ]


def _torn(files: Files, work: Path) -> Path:
    folder = work / "torn"
    shutil.copytree(files.previous, folder)
    shutil.copy(files.k3 / "model.safetensors", folder / "model.safetensors")  # as if killed between the renames
    return folder


def _failing_export(work: Path) -> Outcome:
    """The exporter fails after the new weights, config and reports were made (in this process, exporter patched)."""
    from unittest import mock

    from njet_convert.export import onnx_export

    def fail(*args: object, **kwargs: object) -> None:
        raise ValueError("the exporter failed (simulated)")

    err = io.StringIO()
    with mock.patch.object(onnx_export, "export_onnx", fail), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = _in_process_cli([MODEL, "--order", "2", "--export-onnx", "--out", str(work / "out")])
    return _outcome(code, err.getvalue())


def api_cases(files: Files) -> list[Case]:
    """The Python API: layers, ``convert``, checkpoints, ``finetune``."""
    from njet_convert.checkpoints import load_checkpoint
    from njet_convert.training import FinetuneConfig, finetune
    from njet_layers import NJetConv2d, SafeSubsample

    def toy() -> nn.Module:
        import timm

        return timm.create_model("mnist_toy2_conv3")

    def convert(calibration: torch.Tensor) -> object:
        return njet_convert.convert(toy(), calibration=calibration, progress=False)

    x = torch.randn(32, 1, 8, 8)
    data = (x, (x.mean((1, 2, 3)) > 0).long())
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    cfg = FinetuneConfig(batch_size=8, progress=False, plots=False, lr=1e8)

    def nan_ckpt(w: Path) -> Path:
        torch.save(_nan(toy().state_dict()), w / "nan.pth")
        return w / "nan.pth"

    return [
        Case("NJetConv2d(k=1e9)", "API", lambda w: api(lambda: NJetConv2d(64, 64, k=1e9)), ("ValueError",)),
        Case("NJetConv2d(order=100)", "API", lambda w: api(lambda: NJetConv2d(1, 1, order=100)), ("ValueError",)),
        Case("NJetConv2d(sigma='1.0')", "API", lambda w: api(lambda: NJetConv2d(1, 1, sigma="1.0")), ("ValueError",)),
        Case("SafeSubsample(source=nn.Conv2d(...))", "API",
             lambda w: api(lambda: SafeSubsample(source=nn.Conv2d(1, 1, 3))), ("ValueError",)),
        Case("SafeSubsample(r=1e-300)", "API", lambda w: api(lambda: SafeSubsample(r=1e-300, sigma=1.0)),
             ("ValueError",)),
        Case("SafeSubsample(sigma=torch.ones(3))", "API", lambda w: api(lambda: SafeSubsample(sigma=torch.ones(3))),
             ("ValueError",)),
        Case("convert(k=1e6)", "API", lambda w: api(lambda: njet_convert.convert(toy(), k=1e6, progress=False)),
             ("ValueError",)),
        Case("convert(calibration=1e30)", "API", lambda w: api(lambda: convert(torch.full((4, 1, 28, 28), 1e30))),
             ("ValueError",)),
        Case("convert(calibration=NaN)", "API",
             lambda w: api(lambda: convert(torch.full((4, 1, 28, 28), float("nan")))), ("ValueError",)),
        Case("load_checkpoint(all-NaN file)", "API", lambda w: api(lambda: load_checkpoint(toy(), nan_ckpt(w))),
             ("ValueError",)),
        Case("finetune(lr=1e8)", "API", lambda w: api(lambda: finetune(
            small, data, data, epochs=2, config=cfg, out_dir=w / "run", device="cpu")), ("NonFiniteLossError",)),
    ]


def all_cases(files: Files) -> list[Case]:
    return [*cli_cases(files), *finetune_cases(files), *loading_cases(files), *api_cases(files)]


# -- the harness -------------------------------------------------------------------------------------------------


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in RESULT_FILES
            if (folder / name).is_file()}


def run_case(case: Case, files: Files, work: Path) -> Row:
    """Run one case in ``work`` and judge it."""
    work.mkdir(parents=True)
    out = work / "out"
    if case.guard:
        _previous_result(files, out)
    before = _hashes(out) if case.guard else {}
    start = time.perf_counter()
    try:
        result = case.run(work)
    except Exception as err:  # the harness itself failed on this row: say so, keep going
        result = Outcome(f"harness error {type(err).__name__}", False, str(err)[:300])
    after = _hashes(out) if case.guard else {}
    lost = case.guard and any(after.get(name) != digest for name, digest in before.items())
    ran = (work / "CANARY").exists()
    ok = result.code in case.expect and result.one_line and not lost and not ran
    return Row(case.name, case.via, result.code, "/".join(case.expect), result.one_line, lost, ran, ok,
               result.message, round(time.perf_counter() - start, 1))


def _table(rows: list[Row]) -> str:
    head = "| # | input | via | outcome | expected | 1 line | lost | ran | ok |\n|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for i, r in enumerate(rows, 1):
        ok = "yes" if r.ok else "**NO**"
        lines.append(f"| {i} | {r.name} | {r.via} | {r.outcome} | {r.expect} | {_yn(r.one_line)} | {_yn(r.lost)} | "
                     f"{_yn(r.ran)} | {ok} |")
    return "\n".join(lines)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--json", help="also write the rows (with messages and times) to this file")
    parser.add_argument("--messages", action="store_true", help="print each row's last stderr line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="njet-robustness-") as tmp:
        root = Path(tmp)
        files = Files(root / "files")
        cases = [c for c in all_cases(files) if not args.only or args.only in c.name]
        rows = []
        for i, case in enumerate(cases, 1):
            rows.append(run_case(case, files, root / f"case{i:02d}"))
            print(f"[{i}/{len(cases)}] {case.name}: {rows[-1].outcome} ({rows[-1].seconds} s)", file=sys.stderr)
    print(_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} rows as promised.")
    if args.messages:
        for i, r in enumerate(rows, 1):
            print(f"{i:>3}. {r.message}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
