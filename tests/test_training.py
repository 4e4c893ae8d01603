"""Fine-tuning: DDP with gloo under torchrun (2 CPU processes), SIGTERM + resume, NaN stop, parameter groups,
distillation, bad input. Total CPU time ≈ 1–2 minutes (three torchrun launches of a tiny model)."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from training_helpers import quiet_config, toy_data

import njet_convert
from njet_convert.training import DistillConfig, FinetuneConfig, NonFiniteLossError, finetune
from njet_convert.training.checkpoint import read_checkpoint
from njet_convert.training.distill import distillation_loss
from njet_convert.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from njet_layers import NJetConv2d

TORCHRUN = Path(sys.executable).with_name("torchrun")

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from njet_layers import NJetConv2d
    from njet_convert.training import FinetuneConfig, finetune

    out, mode, dump = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = NJetConv2d(1, 4, order=2, sigma=1.0)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            if self.training:
                self.calls += 1
                if mode == "kill" and rank == 0 and self.calls == 3:  # mid-epoch, however busy the machine:
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                    (dump / "marker").touch()  # the test sends SIGTERM to torchrun once it sees this
                    signal.sigtimedwait({signal.SIGTERM}, 600)  # this step waits for it
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                    signal.raise_signal(signal.SIGTERM)  # and hands it to the trainer's handler
            x = torch.relu(self.bn(self.c1(x)))
            return self.fc(x.mean((2, 3)))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 8, 8, generator=g)
    y = (x[:, 0, 2:6, 2:6].mean((1, 2)) > 0).long() + (x[:, 0, 4, 4] > 1).long()
    torch.manual_seed(0)
    model = Net()
    cfg = FinetuneConfig(lr=0.1, batch_size=8, seed=3, warmup_epochs=0.25, progress=False, plots=(mode == "full"))
    resume = out / "checkpoint.pt" if mode == "resume" else None
    result = finetune(model, (x, y), epochs=2, config=cfg, out_dir=out, resume=resume, device="cpu")
    torch.save(model.state_dict(), dump / f"rank{rank}.pt")
    if rank == 0:
        info = {"interrupted": result.interrupted, "history": result.history, "global_step": result.global_step}
        (dump / "result.json").write_text(json.dumps(info))
    """
)


def _launch(tmp: Path, out: Path, mode: str, dump: Path) -> subprocess.Popen:
    script = tmp / "ddp_script.py"
    script.write_text(SCRIPT)
    dump.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(out), mode, str(dump)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 1200) -> str:  # a guard against a hang, not a time limit
    output, _ = proc.communicate(timeout=timeout)
    return output


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 2-rank run (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("full")
    out, dump = tmp / "out", tmp / "dump"
    proc = _launch(tmp, out, "full", dump)
    output = _finish(proc)
    assert proc.returncode == 0, output
    return tmp, out, dump


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to the interpreter")
def test_ddp_two_ranks_loss_down_ranks_equal_one_checkpoint(full_run):
    _, out, dump = full_run
    info = json.loads((dump / "result.json").read_text())
    losses = [row["train_loss"] for row in info["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    r0, r1 = _load(dump / "rank0.pt"), _load(dump / "rank1.pt")
    assert _same(r0, r1)  # DDP kept the replicas identical (weights, σ, batch-norm buffers)
    init_sigma = 1.0
    assert float(r0["c1.log_sigma"].exp()) != init_sigma  # σ was learned
    checkpoints = sorted(p.name for p in out.iterdir() if p.suffix == ".pt" or ".tmp" in p.name)
    assert checkpoints == ["checkpoint.pt"]
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["epoch"] == 2
    assert _same(state["model"], r0)
    for name in ("metrics.jsonl", "metrics.csv", "sigma.png", "feature_sizes.png", "first_layer_filters.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to the interpreter")
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(full_run, tmp_path):
    _, _, full_dump = full_run
    out, dump = tmp_path / "out", tmp_path / "dump"
    proc = _launch(tmp_path, out, "kill", dump)
    deadline = time.time() + 1200  # a guard against a hang: the run waits at its third step for the signal
    while not (dump / "marker").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (dump / "marker").exists(), _finish(proc)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both workers
    output = _finish(proc)
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 8, output  # stopped mid-epoch, after a step
    info = json.loads((dump / "result.json").read_text())
    assert info["interrupted"], output

    resumed = tmp_path / "dump2"
    proc = _launch(tmp_path, out, "resume", resumed)
    output = _finish(proc)
    assert proc.returncode == 0, output
    full = _load(full_dump / "rank0.pt")
    assert _same(_load(resumed / "rank0.pt"), full)
    assert _same(_load(resumed / "rank1.pt"), full)
    assert read_checkpoint(out / "checkpoint.pt")["global_step"] == 16


class _Tiny(nn.Module):
    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.conv = NJetConv2d(1, 3, order=1, sigma=0.8)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        self.calls, self.nan_at = 0, nan_at

    def forward(self, x):
        out = self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.nan_at is not None and self.calls >= self.nan_at:
                out = out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y = toy_data()  # 4 steps per epoch; NaN in the 6th step (epoch 2)
    model = _Tiny(nan_at=6)
    with pytest.raises(NonFiniteLossError, match=r"NaN/Inf.*epoch 2, step 2.*last good checkpoint"):
        finetune(model, (x, y), epochs=3, config=quiet_config(), out_dir=tmp_path, device="cpu")
    state = read_checkpoint(tmp_path / "checkpoint.pt", _Tiny())
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not any(".tmp" in p.name for p in tmp_path.iterdir())


def test_param_groups_schedule_and_sigma_bounds():
    model = _Tiny()
    groups = {g["name"]: g for g in param_groups(model, FinetuneConfig(lr=0.1, sigma_lr=0.01, alpha_decay=1e-3))}
    assert groups["alpha"]["params"] == [model.conv.alpha] and groups["alpha"]["weight_decay"] == 1e-3
    assert groups["sigma"]["params"] == [model.conv.log_sigma] and groups["sigma"]["lr"] == 0.01
    assert groups["sigma"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["no_decay"]["params"]} == {id(model.bn.weight), id(model.bn.bias),
                                                              id(model.fc.bias)}
    assert groups["decay"]["params"] == [model.fc.weight]
    cfg = FinetuneConfig(warmup_epochs=1, warmup_start=0.1)
    factors = [lr_factor(s, 10, 3, cfg) for s in range(30)]
    assert factors[0] == pytest.approx(0.1) and factors[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(factors[:11])) and factors[-1] < 0.02
    step = FinetuneConfig(schedule="step", step_epochs=1, step_gamma=0.5)
    assert lr_factor(25, 10, 3, step) == pytest.approx(0.25)
    multistep = FinetuneConfig(schedule="multistep", milestones=(2, 3), step_gamma=0.1)
    assert [lr_factor(s, 10, 4, multistep) for s in (19, 20, 29, 30)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    poly = FinetuneConfig(schedule="poly", poly_power=0.9)
    assert lr_factor(0, 10, 2, poly) == 1.0 and lr_factor(10, 10, 2, poly) == pytest.approx(0.5 ** 0.9)
    with pytest.raises(ValueError, match="milestones"):
        FinetuneConfig(schedule="multistep")
    adam = build_optimizer(model, FinetuneConfig(optimizer="adam", alpha_decay=1e-3))
    assert isinstance(adam, torch.optim.Adam) and {g["name"] for g in adam.param_groups} == set(groups)
    # σ stays in bounds by construction: a huge step on log σ is clamped by the layer
    with torch.no_grad():
        model.conv.log_sigma.fill_(50.0)
    lo, hi = model.conv.sigma_bounds
    assert lo <= float(model.conv.sigma.detach()) <= hi and model.conv.kernel_size <= 2 * math.ceil(2 * hi) + 1


def test_distillation_unlabeled_moves_student_to_teacher(tmp_path):
    x, _ = toy_data(48)
    torch.manual_seed(0)
    teacher, student = _Tiny().eval(), _Tiny()
    def kl() -> float:
        with torch.no_grad():
            return float(distillation_loss(student.eval()(x), teacher(x)))
    before = kl()
    result = finetune(student, x, x, epochs=3, config=quiet_config(lr=0.2), teacher=teacher, device="cpu")
    assert kl() < 0.7 * before
    assert result.val_after is not None and "agreement" in result.val_after
    # with labels and label_weight=1 the loss is plain cross-entropy
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    mixed = distillation_loss(logits, torch.randn(5, 4), y, DistillConfig(label_weight=1.0))
    assert mixed.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_bad_inputs_raise_value_error(tmp_path):
    x, y = toy_data()
    with pytest.raises(ValueError, match="labels out of range"):
        finetune(_Tiny(), (x, y + 5), epochs=1, config=quiet_config(), device="cpu")
    with pytest.raises(ValueError, match="labels must be integer"):
        finetune(_Tiny(), (x, y.float()), epochs=1, config=quiet_config(), device="cpu")
    with pytest.raises(ValueError, match="no labels"):
        finetune(_Tiny(), x, epochs=1, config=quiet_config(), device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        finetune(_Tiny(), (x, y), epochs=0, device="cpu")
    with pytest.raises(ValueError, match="cannot run on the training data's inputs of shape"):
        finetune(_Tiny(), (x.repeat(1, 3, 1, 1), y), epochs=1, config=quiet_config(), device="cpu")  # 3 channels, not 1
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    # a resume path that is no checkpoint, or a checkpoint of another model; nothing written is lost
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        finetune(_Tiny(), (x, y), epochs=1, config=quiet_config(), resume=junk, device="cpu")
    with pytest.raises(ValueError, match="no such checkpoint"):
        finetune(_Tiny(), (x, y), epochs=1, config=quiet_config(), resume=tmp_path / "missing.pt", device="cpu")
    finetune(_Tiny(), (x, y), epochs=1, config=quiet_config(), out_dir=tmp_path / "run", device="cpu")
    written = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    other = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="not a checkpoint of this model"):
        finetune(other, (x, y), epochs=2, config=quiet_config(), out_dir=tmp_path / "run", resume=tmp_path / "run",
                 device="cpu")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == written
    from njet_convert.training.__main__ import main

    assert main(["pkg.mod:fn", "--finetune", "no-such-dataset"]) == 2
    assert njet_convert.finetune is finetune


def test_sigma_delay_holds_sigma_while_alpha_learns():
    model = _Tiny()
    cfg = FinetuneConfig(lr=0.1, sigma_lr=0.05, sigma_delay_epochs=0.5, schedule="constant")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, 10, 2, cfg)
    lrs = []
    for _ in range(7):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert [r["sigma"] for r in lrs] == [0.0] * 5 + [0.05] * 2 and all(r["alpha"] == 0.1 for r in lrs)
    with pytest.raises(ValueError, match="sigma_delay_epochs"):
        FinetuneConfig(sigma_delay_epochs=-1)


def _layout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                         NJetConv2d(4, 3, order=1, sigma=0.8), nn.Flatten(), nn.LazyLinear(2))


@pytest.mark.parametrize("setting,expect_channels_last", [("auto", False), (True, True), (False, False)])
def test_channels_last_setting_on_cpu(setting, expect_channels_last):
    x, y = toy_data()
    reference = _layout_net()
    reference(x[:1])
    model = _layout_net()
    model(x[:1])
    model.load_state_dict(reference.state_dict())
    result = finetune(model, (x, y), epochs=1, config=quiet_config(channels_last=setting, seed=4), device="cpu")
    base = finetune(reference, (x, y), epochs=1, config=quiet_config(channels_last=False, seed=4), device="cpu")
    assert model[1].weight.is_contiguous(memory_format=torch.channels_last) is expect_channels_last
    assert result.history[-1]["train_loss"] == pytest.approx(base.history[-1]["train_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="channels_last"):
        FinetuneConfig(channels_last="yes")


def test_sigma_released_after_its_delay_starts_without_the_momentum_of_the_delay(monkeypatch):
    import importlib

    module = importlib.import_module("njet_convert.training.finetune")
    real, seen = module._Trainer._forget_sigma_momentum, []

    def recording(trainer):
        sigma = trainer.model.conv.log_sigma
        seen.append((trainer.progress.global_step, "momentum_buffer" in trainer.optimizer.state.get(sigma, {})))
        real(trainer)
        assert sigma not in trainer.optimizer.state

    monkeypatch.setattr(module._Trainer, "_forget_sigma_momentum", recording)
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 2, (64,))
    cfg = FinetuneConfig(batch_size=16, sigma_delay_epochs=0.5, progress=False, plots=False, tensorboard=False)
    finetune(_Tiny(), (x, y), epochs=2, config=cfg, device="cpu")
    assert seen == [(2, True)]  # once, at the release (step 2 of 4 per epoch), with a buffer gathered at lr 0
