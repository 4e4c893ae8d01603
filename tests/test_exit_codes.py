"""Exit codes that tell the truth: bad input is exit 2 (ValueError in the API) in one line, a bug is exit 1, a signal
is 128 + its number; a diverged or interrupted run never replaces an earlier result. Each test reproduces a case that
used to end otherwise (exit 1 "internal error", exit 0 with a broken model, an OOM kill, a 70-line traceback)."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn
from training_helpers import quiet_config, toy_data

import njet_convert
from njet_convert import cli
from njet_convert.errors import UserError
from njet_convert.training import FinetuneConfig, NonFiniteLossError, finetune
from njet_convert.training.checkpoint import read_checkpoint
from njet_layers import NJetConv2d, SafeSubsample


def _main(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def _user_error(capsys, *argv: str, words: tuple[str, ...] = ()) -> str:
    code, lines = _main(capsys, *argv)
    errors = [line for line in lines if line.startswith("njet-convert: ")]
    assert code == 2, lines
    assert len(errors) == 1 and errors[0].startswith("njet-convert: error: "), lines
    assert not any("Traceback" in line for line in lines)
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


# -- the layers: refused before anything is allocated ----------------------------------------------------------


def test_njet_conv_refuses_huge_k_and_order_and_odd_sigma():
    with pytest.raises(ValueError, match=r"k=1e\+09 makes filters up to .* max_kernel_size"):
        NJetConv2d(8, 8, k=1e9)  # was OOM-killed at 23.5 GB
    assert NJetConv2d(1, 1, k=1e9, max_kernel_size=5).kernel_size == 5  # an explicit cap makes it safe
    with pytest.raises(ValueError, match="order must be at most 12"):
        NJetConv2d(1, 1, order=100)
    with pytest.raises(ValueError, match="sigma must be a positive finite number, got str"):
        NJetConv2d(1, 1, sigma="1.0")
    with pytest.raises(ValueError, match="sigma must be one positive number, got a tensor of shape \\(2,\\)"):
        NJetConv2d(1, 1, sigma=torch.tensor([1.0, 2.0]))
    assert float(NJetConv2d(1, 1, sigma=torch.tensor(1.5)).sigma.detach()) == pytest.approx(1.5)


def test_safe_subsample_refuses_non_sigma_source_tiny_r_and_odd_sigma():
    with pytest.raises(ValueError, match=r"source must have a 'sigma' attribute.*Conv2d"):
        SafeSubsample(source=nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="r=1e-300 is too small"):
        SafeSubsample(r=1e-300, sigma=1.0)
    with pytest.raises(ValueError, match="got str"):
        SafeSubsample(sigma="2")
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        SafeSubsample(sigma=torch.ones(3))
    assert SafeSubsample(sigma=torch.tensor([2.0]), r=2.0).factor == pytest.approx(2.0)


# -- the API ---------------------------------------------------------------------------------------------------


def _toy() -> nn.Module:
    import timm

    return timm.create_model("mnist_toy2_conv3")


def test_huge_calibration_values_are_a_value_error():
    with pytest.raises(ValueError, match="calibration batch 0 holds values up to 1e\\+30"):  # was LinAlgError
        njet_convert.convert(_toy(), calibration=torch.full((4, 1, 28, 28), 1e30), progress=False)


def test_convert_bounds_k_and_order_before_fitting():
    with pytest.raises(ValueError, match="k must be at most 64"):  # the fit once tried to allocate 18 TB
        njet_convert.convert(_toy(), k=1e6, progress=False)
    with pytest.raises(ValueError, match="order must be an integer from 0 to 12"):
        njet_convert.ConvertConfig(order=100)


def test_all_nan_checkpoint_names_the_file(tmp_path):
    from njet_convert.checkpoints import load_checkpoint

    model = _toy()
    path = tmp_path / "nan.pth"
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"nan\.pth.*NaN/Inf"):  # was "min() arg is an empty sequence"
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _class_folders(root: Path, bad_name: str, bad: bytes) -> Path:
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(root / label / f"{i}.png")
    (root / "b" / bad_name).write_bytes(bad)
    return root


@pytest.mark.parametrize("name, content, words", [
    ("broken.png", b"not an image" * 8, "not a readable image"),
    ("bomb.png", _png_header(40000, 40000), "decompression bomb"),
])
def test_unreadable_images_in_class_folders_are_user_errors(tmp_path, name, content, words):
    from njet_convert.data.datasets import calibration_images

    root = _class_folders(tmp_path / "data", name, content)
    with pytest.raises(UserError, match=f"cannot read image .*{name}.*{words}"):
        calibration_images(str(root), 16, (3, 16, 16))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / name).write_bytes(content)
    with pytest.raises(UserError, match=f"{name}.*{words}"):
        calibration_images(str(flat), 4, (3, 16, 16))


# -- fine-tuning -----------------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    """A tiny network that can be told to break at a given training call (weights, BN statistics, eval loss)."""

    def __init__(self, break_at: int | None = None, how: str = "") -> None:
        super().__init__()
        self.conv = NJetConv2d(1, 3, order=1, sigma=0.8)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        self.calls, self.break_at, self.how = 0, break_at, how

    def forward(self, x):
        broken = self.break_at is not None and self.calls >= self.break_at
        if self.training:
            self.calls += 1
            if broken and self.how == "bn":
                self.bn.running_var.fill_(float("inf"))  # the loss of this step stays finite
        out = self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
        if not self.training and broken and self.how == "val":
            out = out * float("nan")
        return out


@pytest.mark.parametrize("how, match", [("bn", "bn.running_var became NaN/Inf"),
                                        ("val", "validation loss became NaN/Inf after epoch 2")])
def test_divergence_with_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path, how, match):
    x, y = toy_data()  # 4 steps per epoch: epoch 1 is good and checkpointed, epoch 2 breaks
    model = _Tiny(break_at=5, how=how)
    with pytest.raises(NonFiniteLossError, match=f"{match}.*last good checkpoint"):
        finetune(model, (x, y), (x, y), epochs=3, config=quiet_config(), out_dir=tmp_path, device="cpu")
    state = read_checkpoint(tmp_path / "checkpoint.pt", _Tiny())
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_huge_learning_rate_diverges_instead_of_succeeding(tmp_path):
    x, y = toy_data()
    with pytest.raises(NonFiniteLossError, match="NaN/Inf"):  # was exit 0 with NaN BN statistics saved
        finetune(_Tiny(), (x, y), (x, y), epochs=2, config=quiet_config(lr=1e8), out_dir=tmp_path, device="cpu")
    if (tmp_path / "checkpoint.pt").exists():
        state = read_checkpoint(tmp_path / "checkpoint.pt", _Tiny())
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_validation_labels_beyond_the_classes_are_a_value_error():
    x, y = toy_data()
    with pytest.raises(ValueError, match="validation data: labels out of range for a model with 2 outputs"):
        finetune(_Tiny(), (x, y), (x, y + 5), epochs=1, config=quiet_config(), device="cpu")  # was IndexError


def test_checkpoint_without_optimizer_state_is_refused(tmp_path):
    x, y = toy_data()
    finetune(_Tiny(), (x, y), epochs=1, config=quiet_config(), out_dir=tmp_path, device="cpu")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match=r"damaged\.pt.*missing 'optimizer'"):  # was KeyError
        finetune(_Tiny(), (x, y), epochs=2, config=quiet_config(), resume=tmp_path / "damaged.pt", device="cpu")


def test_missing_matplotlib_skips_the_plots_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    x, y = toy_data()
    cfg = FinetuneConfig(batch_size=8, progress=False, plots=True)
    result = finetune(_Tiny(), (x, y), epochs=1, config=cfg, out_dir=tmp_path, device="cpu")
    assert result.epochs_done == 1 and result.plots == {} and (tmp_path / "checkpoint.pt").is_file()
    err = capsys.readouterr().err
    assert "plots skipped" in err and "njet[plots]" in err


# -- the command line (in process: fast) -----------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (("mnist-toy2", "--order", "100", "--dry-run"), ("--order", "from 0 to 12")),  # was exit 1 (normal std -nan)
    (("mnist-toy2", "--k", "1e6", "--dry-run"), ("--k", "at most 64")),
    (("mnist-toy2", "--resume", "x.pt", "--dry-run"), ("--resume needs --finetune",)),  # was accepted silently
    (("mnist-toy2", "--input-size", "3,28,28", "--dry-run"), ("3 channel(s)", "takes 1")),  # was accepted
])
def test_refused_options(capsys, argv, words):
    _user_error(capsys, *argv, words=words)


def _module_file(tmp_path: Path, monkeypatch, source: str) -> str:
    (tmp_path / "user_models.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_models", None)
    return "user_models"


def test_model_callable_returning_a_non_module_or_taking_other_kwargs(tmp_path, monkeypatch, capsys):
    mod = _module_file(tmp_path, monkeypatch, "from torch import nn\n\ndef number():\n    return 42\n\n"
                                              "def conv():\n    return nn.Conv2d(3, 4, 3)\n")
    _user_error(capsys, f"{mod}:number", "--dry-run", words=("returned int", "not a torch.nn.Module"))
    _user_error(capsys, f"{mod}:conv", "--num-classes", "3", "--dry-run", words=("unexpected keyword",))


def test_a_type_error_inside_the_library_stays_an_internal_error(monkeypatch, capsys):
    from njet_convert import converter

    def buggy(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(converter, "convert", buggy)
    code, lines = _main(capsys, "mnist-toy2", "--dry-run")
    assert code == 1 and "internal error: TypeError" in lines[-1]  # was exit 2 "user error"
    assert "Reporting problems" in lines[-1]  # points to something that exists
    Path(lines[-1].split("the traceback is in ")[1].split(";")[0]).unlink()
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "## Reporting problems" in readme


def test_ctrl_c_while_main_imports_is_quiet(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.run, "resolve_model", interrupted)
    code, lines = _main(capsys, "mnist-toy2", "--dry-run")
    assert code == 130 and lines == ["njet-convert: interrupted"]


def test_ctrl_c_that_breaks_an_import_is_still_an_interruption(monkeypatch, capsys):
    def broken_import(*args, **kwargs):
        try:  # a library's import swallows the KeyboardInterrupt and fails later in another way
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(cli.run, "resolve_model", broken_import)
    code, lines = _main(capsys, "mnist-toy2", "--dry-run")
    assert code == 130 and lines == ["njet-convert: interrupted"]  # was exit 1 "internal error"


def test_full_disk_while_saving_is_exit_2_and_keeps_the_old_result(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    from njet_convert import serialization

    out = tmp_path / "out"
    assert cli.main(["mnist-toy2", "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full(*args, **kwargs):  # what safetensors raises on ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(serialization, "write_model", full)  # what the CLI writes its weights with
    _user_error(capsys, "mnist-toy2", "--out", str(out), "--order", "2", words=("no space left",))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) as a device that is always full")
def test_checkpoint_on_a_full_disk_is_an_os_error_no_space():
    from njet_convert.training import checkpoint

    with pytest.raises(OSError) as info:  # torch's own file writer said RuntimeError "unexpected pos 704 vs 598"
        checkpoint._torch_save({"w": torch.zeros(100_000)}, Path("/dev/full"))
    assert info.value.errno == errno.ENOSPC


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) as a device that is always full")
def test_full_disk_during_finetune_is_exit_2_and_keeps_the_old_result(tmp_path, monkeypatch, capsys):
    from njet_convert.training import checkpoint

    out = tmp_path / "out"
    assert cli.main(["mnist-toy2", "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = checkpoint._torch_save
    monkeypatch.setattr(checkpoint, "_torch_save", lambda obj, path: real(obj, Path("/dev/full")))  # disk full
    line = _user_error(capsys, "mnist-toy2", "--finetune", "opencv-digits", "--max-steps-per-epoch", "2",
                       "--no-plots", "--out", str(out), words=("no space left",))
    assert "Traceback" not in line  # was exit 1, "internal error: RuntimeError: ... unexpected pos"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left beside it


def test_finetune_without_matplotlib_still_saves_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    code = cli.main(["mnist-toy2", "--finetune", "opencv-digits", "--max-steps-per-epoch", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "plots skipped" in err and (out / "model.safetensors").is_file() and not list(out.glob("*.png"))


# -- signals (subprocesses) ------------------------------------------------------------------------------------


def test_sigint_during_finetune_keeps_out_and_exits_130(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["mnist-toy2", "--out", str(out), "--quiet"]) == 0
    before = (out / "model.safetensors").read_bytes(), (out / "config.json").read_bytes()
    cmd = [sys.executable, "-m", "njet_convert.cli", "mnist-toy2", "--finetune", "opencv-digits", "--epochs", "20",
           "--no-plots", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:  # interrupt once training has begun
        if "validation before fine-tuning" in line:
            proc.send_signal(signal.SIGINT)
            break
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err  # was exit 0 with the partly trained model over --out
    assert "stopped by SIGINT" in err and "--resume" in err and "Traceback" not in err
    assert ((out / "model.safetensors").read_bytes(), (out / "config.json").read_bytes()) == before
    resume = err.split("--resume ")[-1].split()[0]  # the unfinished run's checkpoint, outside --out
    state = read_checkpoint(resume)
    assert state["global_step"] >= 1 and not Path(resume).is_relative_to(out)


class _Stops(_Tiny):
    """Sends this process SIGTERM at its third training call (what a cluster scheduler does before a kill)."""

    def forward(self, x):
        if self.training and self.calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


def test_sigterm_in_finetune_reports_the_signal(tmp_path):
    x, y = toy_data()
    result = finetune(_Stops(), (x, y), epochs=3, config=quiet_config(), out_dir=tmp_path, device="cpu")
    assert result.interrupted and result.signal == signal.SIGTERM and result.checkpoint.is_file()


def test_training_entry_point_exits_143_after_sigterm(tmp_path, monkeypatch, capsys):
    from njet_convert.training.__main__ import main

    source = ("import os, signal\nfrom torch import nn\n\nclass Net(nn.Module):\n"
              "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(28 * 28, 10)\n"
              "        self.calls = 0\n\n    def forward(self, x):\n        if self.training:\n"
              "            self.calls += 1\n            if self.calls == 2:\n"
              "                os.kill(os.getpid(), signal.SIGTERM)\n        return self.fc(x.flatten(1))\n\n"
              "def net():\n    return Net()\n")
    mod = _module_file(tmp_path, monkeypatch, source)
    code = main([f"{mod}:net", "--finetune", "opencv-digits", "--out", str(tmp_path / "run"), "--quiet",
                 "--no-plots"])
    assert code == 143 and "--resume" in capsys.readouterr().err  # was 0


class _Unreadable(torch.utils.data.Dataset):
    """Item 5 cannot be read (as an unreadable image file in a folder dataset)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        if i == 5:
            raise UserError("cannot read image 'c1/5.png': not a readable image")
        return torch.randn(1, 6, 6), i % 2


def test_unreadable_item_in_a_worker_is_a_one_line_error():
    cfg = quiet_config(workers=2, max_steps_per_epoch=None)
    with pytest.raises(UserError) as info:
        finetune(_Tiny(), _Unreadable(), epochs=1, config=cfg, device="cpu")
    assert str(info.value) == "cannot read image 'c1/5.png': not a readable image"  # not the worker's traceback
