"""Inputs of the robustness benchmark and the ways to run them (benchmarks/robustness.py): a fresh ``njet-convert``
process, another entry point, a signal at a given moment, an API call; the files the cases need (an earlier result,
bad checkpoints and images, hostile payloads); each run's :class:`Outcome`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

import njet_convert  # noqa: F401  first: the torchvision guard and the model zoo

__all__ = ["ENV", "MODEL", "Files", "Outcome", "Payload", "api", "convert_cli", "damaged_checkpoint", "failing_export",
           "full_disk", "full_disk_finetune", "hashes", "hostile_folder", "image_folder", "mkdir", "module_cli",
           "nan_state", "no_matplotlib", "png_header", "previous_result", "run_code_source", "signalled_cli", "torn",
           "truncated", "user_module_cli", "write"]

RESULT_FILES = ("model.safetensors", "config.json", "report.md", "report.json", "model.onnx")
MODEL = "mnist-toy2"  # a recipe whose conversion takes a second
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Outcome:
    """How one input ended: exit code or exception type, whether the error was one line, its message."""

    code: str
    one_line: bool
    message: str = ""




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

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """The toy model's state dict (what the bad checkpoints are made from)."""
        import timm

        return timm.create_model("mnist_toy2_conv3").state_dict()


def _in_process_cli(argv: list[str]) -> int:
    from njet_convert import cli

    return cli.main(argv)


def png_header(width: int, height: int) -> bytes:
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


class Payload:
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


def run_code_source(canary: Path) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        record["source"] = {"name": "subprocess:getoutput", "kwargs": {"cmd": f"touch {canary}"}}
    return edit


def _blocked_matplotlib(work: Path) -> dict:
    """An environment in which ``import matplotlib`` fails (the package installed without its plots extra)."""
    stub = work / "no_matplotlib" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named matplotlib (blocked for this check)')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(stub.parent), ENV.get("PYTHONPATH", "")])}


def previous_result(files: Files, out: Path) -> None:
    shutil.copytree(files.previous, out, dirs_exist_ok=True)


def _mount_small_disk(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def _on_small_disk(files: Files, work: Path, size: str, args: list[str]) -> Outcome | None:
    """``njet-convert ARGS --out OUT`` with OUT on a ``size`` tmpfs that holds the earlier result (the staging
    folder beside OUT is on it too); None when this process may not mount one."""
    disk = work / "disk"
    if not _mount_small_disk(disk, size):
        return None
    try:
        out = disk / "out"
        previous_result(files, out)
        before = hashes(out)
        result = convert_cli(*args, "--out", str(out))
        result.message += " [real tmpfs]" if hashes(out) == before else " [real tmpfs; earlier result LOST]"
        return result
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def full_disk(files: Files, work: Path) -> Outcome:
    """A real full disk (a 300 KB tmpfs holding the earlier result) when this process may mount one; otherwise the
    same failure simulated in process (safetensors' ENOSPC error from writing the weights)."""
    result = _on_small_disk(files, work, "300k", ["resnet20"])  # 1 MB of weights: ENOSPC
    if result is not None:
        return result
    code = (
        "import sys; from safetensors import SafetensorError; from njet_convert import cli, serialization\n"
        "def full(*a, **k): raise SafetensorError('Error while serializing: I/O error: No space left on device "
        "(os error 28)')\nserialization.write_model = full\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    out = work / "out"
    previous_result(files, out)
    result = _proc([sys.executable, "-c", code, MODEL, "--order", "2", "--out", str(out)], None, None, 600)
    result.message += " [simulated]"
    return result


def full_disk_finetune(files: Files, work: Path) -> Outcome:
    """A disk that fills while fine-tuning writes its first checkpoint (a 200 KB tmpfs holding the earlier result;
    the checkpoint is 150 KB) when this process may mount one; otherwise the checkpoint written to /dev/full."""
    args = [MODEL, "--finetune", "opencv-digits", "--no-plots", "--max-steps-per-epoch", "2"]
    result = _on_small_disk(files, work, "200k", args)
    if result is not None:
        return result
    code = (
        "import sys; from pathlib import Path; from njet_convert import cli\n"
        "from njet_convert.training import checkpoint\nreal = checkpoint._torch_save\n"
        "checkpoint._torch_save = lambda obj, path: real(obj, Path('/dev/full'))\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    out = work / "out"
    previous_result(files, out)
    result = _proc([sys.executable, "-c", code, *args, "--out", str(out)], None, None, 600)
    result.message += " [simulated: /dev/full]"
    return result


def truncated(path: Path, state: dict) -> None:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def nan_state(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


def mkdir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def user_module_cli(work: Path, name: str, *args: str) -> Outcome:
    (work / "user_models.py").write_text("from torch import nn\n\ndef number():\n    return 42\n\n"
                                         "def conv():\n    return nn.Conv2d(3, 4, 3)\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(work), ENV.get("PYTHONPATH", "")])}
    return convert_cli(f"user_models:{name}", *args, "--dry-run", env=env)



def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def damaged_checkpoint(work: Path) -> str:
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


def no_matplotlib(work: Path) -> Outcome:
    args = [MODEL, "--finetune", "opencv-digits", "--max-steps-per-epoch", "2", "--out", str(work / "out")]
    result = convert_cli(*args, env=_blocked_matplotlib(work))
    saved = (work / "out" / "model.safetensors").is_file()
    result.message = ("model saved; " if saved else "NO MODEL SAVED; ") + result.message
    if not saved:
        result.code += " (no model)"
    return result



def torn(files: Files, work: Path) -> Path:
    folder = work / "torn"
    shutil.copytree(files.previous, folder)
    shutil.copy(files.k3 / "model.safetensors", folder / "model.safetensors")  # as if killed between the renames
    return folder


def failing_export(work: Path) -> Outcome:
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



def hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in RESULT_FILES
            if (folder / name).is_file()}

