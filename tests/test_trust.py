"""Trusted artifacts: one validated conversion record, loading that never runs code it was not told to trust,
folders replaced whole or not at all, explicit arguments that win, and a light import."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import njet_convert
from njet_convert import ConvertConfig, convert, load, save
from njet_convert import atomic as atomic_mod
from njet_convert.errors import first_line
from njet_convert.record import ConversionRecord, record_of
from njet_convert.serialization import write_manifest

HOSTILE = {"name": "subprocess:getoutput", "kwargs": {"cmd": "touch {marker}"}}


class Small(nn.Module):
    """A strided conv net small enough to convert in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.b(torch.relu(self.a(x)))).flatten(1)


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory) -> Path:
    """A saved folder of a registry (zoo) model: loads without trust_code."""
    import timm

    out, _ = convert(timm.create_model("resnet20", num_classes=4).eval(), order=1, input_size=(3, 32, 32))
    folder = tmp_path_factory.mktemp("zoo") / "m"
    save(out, folder)
    return folder


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_config(folder: Path, edit) -> Path:
    """Change config.json as an author of a folder would: the manifest is rewritten to match."""
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    write_manifest(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# 2. Loading never executes code it was not told to trust


def _hostile(zoo_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "executed"
    source = {"name": HOSTILE["name"], "kwargs": {"cmd": HOSTILE["kwargs"]["cmd"].format(marker=marker)}}
    folder = _edit_config(_copy(zoo_folder, tmp_path / "hostile"), lambda d: d.update(source=source))
    return folder, marker


def test_hostile_config_runs_nothing_on_load(zoo_folder, tmp_path) -> None:
    folder, marker = _hostile(zoo_folder, tmp_path)
    with pytest.raises(ValueError, match="trust_code=True") as err:
        load(folder)
    assert "\n" not in str(err.value) and "subprocess:getoutput" in str(err.value)
    assert not marker.exists()


def test_hostile_config_runs_nothing_in_export_and_training_entry_points(zoo_folder, tmp_path, capsys) -> None:
    from njet_convert.export.__main__ import main as export_main
    from njet_convert.training.__main__ import main as training_main

    folder, marker = _hostile(zoo_folder, tmp_path)
    assert export_main([str(folder), "--out", str(tmp_path / "m.onnx")]) == 2
    assert training_main([str(folder), "--finetune", "digits", "--out", str(tmp_path / "ft")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("--trust-code" in line for line in lines), lines
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_trust_code_opts_in(tmp_path) -> None:
    out, _ = convert(Small().eval(), source="tests.test_trust:Small", input_size=(3, 16, 16))
    save(out, tmp_path / "m")
    with pytest.raises(ValueError, match="trust_code"):
        load(tmp_path / "m")
    back = load(tmp_path / "m", trust_code=True).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(back(x), out.eval()(x))


def test_registry_names_load_without_trust(zoo_folder) -> None:
    model = load(zoo_folder)
    assert record_of(model).source.name == "timm:resnet20"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_load_returns_the_saved_dtype(tmp_path, dtype) -> None:
    out, _ = convert(Small().eval(), source="tests.test_trust:Small", input_size=(3, 16, 16))
    out = out.to(dtype)
    save(out, tmp_path / "m")
    back = load(tmp_path / "m", trust_code=True)
    assert {p.dtype for p in back.parameters()} == {dtype}
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), back.state_dict().values(), strict=True))


DAMAGE = {
    "missing 'options'": lambda d: d.pop("options"),
    "options: missing 'order'": lambda d: d["options"].pop("order"),
    "order must be an integer from 0 to 12": lambda d: d["options"].update(order=-1),
    "order rule": lambda d: d["options"].update(order={"re:(": 3}),
    "subsample must be one of": lambda d: d["options"].update(subsample="sideways"),
    "options.learn_sigma": lambda d: d["options"].update(learn_sigma="yes"),
    ".r must be a positive finite number": lambda d: next(iter(d["subsampling"].values())).update(r=0),
    ".mode must be one of": lambda d: next(iter(d["subsampling"].values())).update(mode="cubic-ish"),
    ".sigma must be a positive finite number": lambda d: next(iter(d["layers"].values())).update(sigma="1"),
    "layers must be a JSON object": lambda d: d.update(layers=[]),
    "source.name must be a non-empty string": lambda d: d.update(source={"name": 3}),
    "selected must be a list": lambda d: d.update(selected="all"),
    "dtype must be one of": lambda d: d.update(dtype="int8"),
}


@pytest.mark.parametrize("match", list(DAMAGE))
def test_damaged_config_is_one_line_value_error_naming_the_key(zoo_folder, tmp_path, match) -> None:
    folder = _edit_config(_copy(zoo_folder, tmp_path / "d"), DAMAGE[match])
    with pytest.raises(ValueError) as err:
        load(folder)
    assert type(err.value) is ValueError or isinstance(err.value, ValueError)
    assert match in str(err.value) and "\n" not in str(err.value)


def test_damaged_config_exits_2_from_export_entry_point(zoo_folder, tmp_path, capsys) -> None:
    from njet_convert.export.__main__ import main as export_main

    folder = _edit_config(_copy(zoo_folder, tmp_path / "d"), DAMAGE["options: missing 'order'"])
    assert export_main([str(folder), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_record_round_trips_and_records_every_convert_option() -> None:
    from dataclasses import fields

    out, _ = convert(Small().eval(), source="tests.test_trust:Small", input_size=(3, 16, 16))
    record = record_of(out)
    data = json.loads(record.dumps())
    assert set(data["options"]) == {f.name for f in fields(ConvertConfig)}  # generic, not a hand-copied list
    again = ConversionRecord.from_json(data)
    assert again == record and again.to_json() == data
    assert not hasattr(out, "njet_conversion") and not hasattr(out, "source_architecture")
    assert out.conversion_report is not None


# ----------------------------------------------------------------------------------------------------------------
# 3. A folder is replaced whole or not at all


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    out, _ = convert(Small().eval(), source="tests.test_trust:Small", input_size=(3, 16, 16))
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_swap_keeps_the_old_folder(tmp_path, monkeypatch) -> None:
    save(_model(0), tmp_path / "m")
    before = _snapshot(tmp_path / "m")
    real = os.replace
    calls = []

    def replace(a, b):  # the second rename (new -> target) fails: a kill between the two renames
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated failure between renames")
        real(a, b)

    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)
    monkeypatch.setattr(atomic_mod.os, "replace", replace)
    with pytest.raises(OSError, match="between renames"):
        save(_model(1), tmp_path / "m")
    monkeypatch.undo()
    assert _snapshot(tmp_path / "m") == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # nothing left beside it
    assert load(tmp_path / "m", trust_code=True) is not None


def test_failed_exchange_keeps_the_old_folder(tmp_path, monkeypatch) -> None:
    save(_model(0), tmp_path / "m")
    before = _snapshot(tmp_path / "m")

    def swap(new, target):
        raise OSError(errno.EIO, "killed before the swap")

    monkeypatch.setattr(atomic_mod, "swap_folders", swap)
    with pytest.raises(OSError):
        save(_model(1), tmp_path / "m")
    assert _snapshot(tmp_path / "m") == before and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_disk_full_keeps_the_old_folder(tmp_path, monkeypatch) -> None:
    save(_model(0), tmp_path / "m")
    before = _snapshot(tmp_path / "m")
    import safetensors.torch

    def full(tensors, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space"):
        save(_model(1), tmp_path / "m")
    assert _snapshot(tmp_path / "m") == before


_STAGING_WRITER = (
    "import sys, time\nfrom njet_convert.atomic import replace_folder\n"
    "with replace_folder(sys.argv[1]) as stage:\n"
    "    (stage / 'model.safetensors').write_bytes(b'half')\n"
    "    print(stage, flush=True)\n"
    "    time.sleep(600)\n"
)


def _writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside a save of ``target`` (its staging folder exists and has a file), and that folder."""
    proc = subprocess.Popen([sys.executable, "-c", _STAGING_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # blocks until the staging folder is written, however busy the machine
    assert line, proc.wait()
    return proc, Path(line)


def test_next_save_removes_the_staging_folder_of_a_killed_save_but_not_a_live_one(tmp_path) -> None:
    target = tmp_path / "m"
    live, running = _writer(target)
    try:
        killed, stale = _writer(target)  # a second save of the same target, started while the first runs
        killed.kill()  # SIGKILL: no handler, no cleanup runs
        killed.wait()
        assert stale.is_dir() and running.is_dir() and stale.name.startswith(".m.new-")
        save(_model(0), target)
        assert not stale.exists()  # the killed save's folder is gone
        assert running.is_dir() and (running / "model.safetensors").read_bytes() == b"half"  # the live one stays
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", running.name])
    finally:
        live.kill()
        live.wait()


def test_stale_staging_with_a_checkpoint_to_resume_is_kept(tmp_path) -> None:
    from njet_convert.atomic import remove_stale_staging

    killed, stale = _writer(tmp_path / "m")
    killed.kill()
    killed.wait()
    (stale / "checkpoint.pt").write_bytes(b"resumable")
    assert remove_stale_staging(tmp_path / "m", keep=lambda f: (f / "checkpoint.pt").is_file()) == []
    assert remove_stale_staging(tmp_path / "m") == [stale] and not stale.exists()


def test_save_replaces_whole_and_load_refuses_a_torn_folder(tmp_path) -> None:
    save(_model(0), tmp_path / "m")
    old_config = (tmp_path / "m" / "config.json").read_bytes()
    old_manifest = (tmp_path / "m" / "manifest.json").read_bytes()
    (tmp_path / "m" / "stale.onnx").write_bytes(b"old")
    save(_model(1), tmp_path / "m")
    assert not (tmp_path / "m" / "stale.onnx").exists()  # nothing of the old result beside the new one
    (tmp_path / "m" / "config.json").write_bytes(old_config)  # new weights beside the old config: torn
    (tmp_path / "m" / "manifest.json").write_bytes(old_manifest)
    with pytest.raises(ValueError, match=r"does not match manifest\.json") as err:
        load(tmp_path / "m", trust_code=True)
    assert "\n" not in str(err.value)


def test_save_refuses_to_replace_a_folder_it_did_not_write(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="did not write"):
        save(_model(0), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_output_files_get_umask_modes(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        save(_model(0), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755


def test_cli_export_failure_leaves_the_old_result(tmp_path, monkeypatch, capsys) -> None:
    from njet_convert import cli
    from njet_convert.export import onnx_export

    out = tmp_path / "o"
    args = ["tests.test_trust:Small", "--input-size", "3,16,16", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    before = _snapshot(out)
    assert {"config.json", "manifest.json", "model.safetensors", "report.json", "report.md"} == set(before)

    def boom(*a, **k):
        raise ValueError("simulated exporter failure")

    monkeypatch.setattr(onnx_export, "export_onnx", boom)
    assert cli.main([*args, "--order", "2", "--export-onnx"]) == 2
    assert "simulated exporter failure" in capsys.readouterr().err
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_cli_disk_full_leaves_the_old_result(tmp_path, monkeypatch, capsys) -> None:
    from njet_convert import cli, serialization

    out = tmp_path / "o"
    args = ["tests.test_trust:Small", "--input-size", "3,16,16", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    before = _snapshot(out)

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "write_manifest", full)
    assert cli.main([*args, "--order", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and err.count("\n") == 0
    assert _snapshot(out) == before


# ----------------------------------------------------------------------------------------------------------------
# 5. Smaller truths


def test_explicit_arguments_win_over_config_even_at_their_default() -> None:
    model = Small().eval()
    out, _ = convert(model, order=3, config=ConvertConfig(order=4), fit=False)
    assert record_of(out).options["order"] == 3
    out, _ = convert(model, config=ConvertConfig(order=4, k=3.0), k=2.0, fit=False)
    assert (record_of(out).options["order"], record_of(out).options["k"]) == (4, 2.0)
    out, _ = convert(model, config=ConvertConfig(subsample="keep"), fit=False)
    assert record_of(out).options["subsample"] == "keep"  # not given: the config's value


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_and_help_import_no_torch_timm_or_torchvision() -> None:
    code = ("import sys, contextlib, io\nimport njet_convert\nfrom njet_convert import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as f:\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'MODEL' in f.getvalue()\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    assert _python(code) == "[]"


def test_zoo_is_registered_whenever_timm_is_imported_later() -> None:
    code = "import njet_convert, timm\nprint(timm.create_model('resnet32').__class__.__name__)"
    assert _python(code) == "CifarResNet"


def test_first_line_is_one_line() -> None:
    assert first_line(ValueError("a\n  b")) == "a"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("x" * 500), limit=50) == "x" * 47 + "..."
    assert first_line(ValueError("noise\naten::foo not supported"), prefer=lambda s: "aten::" in s).startswith("aten")


def test_no_design_section_citations_in_the_repository() -> None:
    root = Path(__file__).parents[1]
    files = [p for p in root.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml") and ".venv" not in p.parts]
    needle = "DESIGN " + "§"  # spelt apart so that this file does not cite it
    cited = [str(p.relative_to(root)) for p in files if needle in p.read_text(errors="ignore")]
    assert cited == [] and (root / "docs" / "design.md").is_file()
    assert not (root / "docs" / "HELPERS_BRIEF.md").exists()
    assert njet_convert.__doc__ and "docs/design.md" in njet_convert.__doc__


def test_sigkill_during_saves_leaves_a_complete_folder(tmp_path) -> None:
    """A process that keeps re-saving two different models is SIGKILLed at some point: the folder loads and is
    exactly one of the two."""
    import signal
    import time

    models = [_model(0), _model(1)]
    for i, model in enumerate(models):
        save(model, tmp_path / f"ref{i}")
    ref0, ref1, target = str(tmp_path / "ref0"), str(tmp_path / "ref1"), str(tmp_path / "m")
    code = (f"import njet_convert\na, b = njet_convert.load({ref0!r}, trust_code=True), "
            f"njet_convert.load({ref1!r}, trust_code=True)\nprint('ready', flush=True)\n"
            f"while True:\n    for m in (a, b):\n        njet_convert.save(m, {target!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        while proc.poll() is None and not (Path(target) / "manifest.json").is_file():  # a save done, however slow
            time.sleep(0.05)
        time.sleep(0.2)  # then a kill at any moment of the saves that follow
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    back = load(tmp_path / "m", trust_code=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = back(x)
        assert any(torch.equal(got, m.eval()(x)) for m in models)
