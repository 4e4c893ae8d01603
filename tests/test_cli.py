"""The njet-convert console script: bad input exits 2 with one line and no traceback; a real run end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(sys.executable).with_name("njet-convert")


def _run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "njet_convert.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("njet-convert: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_unknown_model_suggests_close_names(tmp_path):
    _user_error(_run("resnt32", "--out", str(tmp_path / "o")), "unknown model 'resnt32'", "resnet32")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_checkpoint(tmp_path):
    _user_error(_run("resnet32", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")),
                "checkpoint not found", "nope.pth")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint\n" * 10)
    _user_error(_run("resnet32", "--checkpoint", str(bad), "--out", str(tmp_path / "o")), "bad.pth", "corrupt")


def test_checkpoint_shape_mismatch_names_the_key(tmp_path):
    import timm

    import njet_convert  # noqa: F401  (registers the zoo)

    ckpt = tmp_path / "r32.pth"
    state = timm.create_model("resnet32", num_classes=100).state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, ckpt)
    _user_error(_run("resnet32", "--checkpoint", str(ckpt), "--dry-run"), "shape mismatch", "'fc.weight'")


def test_negative_order():
    _user_error(_run("resnet32", "--order", "-1"), "--order", "-1")


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ndescription: x\npaper: none\nmodel: {name: resnet20}\ntrain: {lrr: 0.1}\n")
    _user_error(_run(str(recipe), "--dry-run"), "unknown key 'train.lrr'", "'lr'")


def test_unwritable_output_dir(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a path below a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "out"
    _user_error(_run("resnet32", "--out", str(target)), "cannot write to output directory")


def test_resnet32_order3_end_to_end(tmp_path):
    out = tmp_path / "r32"
    proc = _run("resnet32", "--order", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "untrained" in proc.stderr  # said plainly, and converted anyway
    assert "| layer1.0.conv1 | Conv2d | 16x16x3x3 | NJetConv2d |" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("resnet32: 31 conv(s) -> N-Jet (order 3)") and str(out) in summary
    assert {"config.json", "model.safetensors", "report.md", "report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 31 and all(r["new_type"] == "NJetConv2d" for r in report["layers"])
    assert report["params_before"] == 466_906
    import njet_convert

    model = njet_convert.load(out).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.njet_record.input_size == [3, 32, 32]  # so the folder exports without --input-shape
    from njet_convert.export.__main__ import main as export_main

    assert export_main([str(out), "--out", str(out / "model.onnx")]) == 0
    assert (out / "model.onnx").is_file()


def test_dry_run_json_writes_nothing(tmp_path):
    proc = _run("resnet20", "--dry-run", "--json", "--order", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is the JSON alone
    assert data["dry_run"] is True and data["out"] is None and data["weights"] == "untrained"
    assert data["source"] == {"name": "timm:resnet20", "kwargs": {}}
    assert data["report"]["options"]["order"] == 2 and len(data["report"]["layers"]) == 19
    assert not any(tmp_path.iterdir())


def test_recipe_name_and_list_recipes():
    proc = _run("--list-recipes", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert {"resnet32-cifar10", "resnet110-cifar10", "deeplab-aspp-voc", "unet-fashion-multiscale"} <= names


def test_main_in_process_reports_internal_errors(monkeypatch, capsys):
    from njet_convert import cli

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli.run, "_convert", boom)
    assert cli.main(["resnet20", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "internal error: RuntimeError: kaboom" in err and "traceback is in" in err
    log = err.split("traceback is in ")[1].split(";")[0]
    assert "Traceback" in Path(log).read_text()
    os.unlink(log)


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell environment")
def test_pretrained_offline_points_to_checkpoint(monkeypatch):
    from njet_convert import checkpoints
    from njet_convert.errors import UserError

    monkeypatch.setattr(checkpoints, "network_available", lambda *a, **k: False)

    def download():
        raise OSError("[Errno -2] Name or service not known")

    with pytest.raises(UserError, match="--checkpoint"):
        checkpoints.pretrained_or_exit(download, "resnet18")


def test_recover_needs_calibrate():
    _user_error(_run("resnet32", "--recover", "5"), "--recover needs --calibrate")


def test_calibrate_and_recover_end_to_end(tmp_path):
    import timm

    weights = tmp_path / "r32.pth"  # weights make it a network to calibrate (an untrained one is built new at σ0)
    torch.save(timm.create_model("resnet32").state_dict(), weights)
    out = tmp_path / "r32"
    proc = _run("resnet32", "--checkpoint", str(weights), "--calibrate", "photos", "--calibration-images", "40",
                "--recover", "2", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["calibrated"] and report["recovery"]["steps"] >= 1
    assert report["recovery"]["end"][1] <= report["recovery"]["start"][1] + 1e-12


def test_k_bound_is_checked_once_with_one_message(capsys):
    from njet_convert import ConvertConfig, cli

    with pytest.raises(ValueError) as api_error:
        ConvertConfig(k=1e6)
    assert cli.main(["mnist-toy2", "--k", "1e6", "--dry-run"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"njet-convert: error: argument --k: {api_error.value} (see njet-convert --help)"


def test_an_untrained_network_is_initialised_from_the_seed(tmp_path):
    from safetensors.torch import load_file

    from njet_convert import cli

    def weights(name: str, *seed: str) -> dict[str, torch.Tensor]:
        assert cli.main(["mnist-toy2", "--out", str(tmp_path / name), "--quiet", *seed]) == 0
        return load_file(tmp_path / name / "model.safetensors")

    first, again, other = weights("a"), weights("b"), weights("c", "--seed", "1")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_quiet_prints_nothing_but_errors(tmp_path, capsys):
    from njet_convert import cli

    assert cli.main(["mnist-toy2", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # no table, no summary line, no progress
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert cli.main(["mnist-toy2", "--k", "0", "--quiet", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("njet-convert: error: argument --k")


@pytest.mark.parametrize("options", [["--search-confidence", "-1"], ["--search-max-macs", "1M"],
                                     ["--factor-hold", "0.7"], ["--sigma-max-step", "-0.1"]])
def test_a_bad_fine_tuning_option_is_refused_before_conversion(tmp_path, monkeypatch, capsys, options) -> None:
    from njet_convert import cli
    from njet_convert.cli import run

    def no_conversion(*_args):
        raise AssertionError("converted before the options were checked")

    monkeypatch.setattr(run, "_convert", no_conversion)
    out = tmp_path / "out"
    assert cli.main(["mnist-toy2", "--finetune", "opencv-digits", "--out", str(out), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("njet-convert: error:") and "\n" not in err and not out.exists()
