"""Resolution health in training: σ on a bound and 1-px maps are reported, multiply-adds follow σ and map size."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import njet_convert
from njet_convert.export import freeze
from njet_convert.export.separable import layer_costs
from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.resolution import collapsed_maps, multiply_adds, sigmas_at_bounds
from njet_layers import NJetConv2d, SafeSubsample

pytestmark = pytest.mark.usefixtures("one_thread")


class _Net(nn.Module):
    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.conv = NJetConv2d(1, 4, order=2, sigma=sigma)
        self.sub = SafeSubsample(r=4.0, source=self.conv)
        self.sub.start_at(2.0)
        self.mix = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.mix(torch.relu(self.sub(self.conv(x)))).mean((2, 3)))


def test_sigma_on_a_bound_is_named() -> None:
    net = _Net()
    assert sigmas_at_bounds(net) == {}
    with torch.no_grad():
        net.conv.log_sigma.fill_(-5.0)
    assert sigmas_at_bounds(net) == {"conv": "min"}
    with torch.no_grad():
        net.conv.log_sigma.fill_(5.0)
    assert sigmas_at_bounds(net) == {"conv": "max"}
    assert collapsed_maps({"a": [1, 7], "b": [2, 2], "c": []}) == ["a"]


def test_multiply_adds_count_the_exported_or_the_dense_form_and_follow_the_map_size() -> None:
    x = torch.randn(2, 1, 8, 8)
    assert multiply_adds(nn.Conv2d(1, 4, 3, padding=1), x) == 4 * 9 * 64
    layer = NJetConv2d(1, 4, order=2, sigma=1.0)  # s = 5
    layer.impl = "fft"
    assert multiply_adds(layer, x, form="dense") == 4 * 25 * 64 and layer.impl == "fft"  # impl restored
    assert multiply_adds(layer, x) == 4 * 25 * 64  # exported dense too: the chain would save less than 2x
    net = _Net()
    head = 3 * 4
    assert multiply_adds(net, x, form="dense") == 4 * 25 * 64 + 16 * 4 * 4 + head  # 8 px -> 4 px after it
    with torch.no_grad():
        net.conv.log_sigma.fill_(math.log(5.0))  # s = 21; factor 2 * 2 ** (4 / 4) = 4: 8 px -> 2 px
    assert multiply_adds(net, x, form="dense") == 4 * 21 * 21 * 64 + 16 * 2 * 2 + head
    chain = layer_costs(net.conv).separable  # exported: the separable chain, 465 against 1764 per pixel
    assert chain * 2 <= 4 * 21 * 21 and multiply_adds(net, x) == chain * 64 + 16 * 2 * 2 + head
    with pytest.raises(ValueError, match="form"):
        multiply_adds(net, x, form="onnx")


@pytest.mark.parametrize("sigma", [None, 0.55, 0.7])
def test_multiply_adds_as_exported_are_those_of_the_frozen_network(sigma: float | None) -> None:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 64, 3, padding=1))
    model = njet_convert.convert(original.eval(), order="exact", input_size=(3, 24, 24), progress=False)[0]
    if sigma is not None:  # 5x5 filters: the last layer exports as the chain; the stem's factor leaves 2
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, NJetConv2d):
                    layer.log_sigma.fill_(math.log(sigma))
    x = torch.randn(1, 3, 24, 24)
    frozen = freeze(model, x)
    assert multiply_adds(model, x) == multiply_adds(frozen, x) < multiply_adds(model, x, form="dense")


def test_training_metrics_report_bounds_maps_and_multiply_adds(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 2, 2), torch.randint(0, 3, (32,))
    net = _Net(sigma=0.25)  # starts on the lower bound; the 2×2 input leaves a 1-px map after the subsampling
    cfg = FinetuneConfig(lr=0.01, batch_size=16, progress=False, plots=False, tensorboard=False)
    result = finetune(net, (x, y), epochs=1, config=cfg, out_dir=tmp_path, device="cpu")
    row = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["kind"] == "epoch" and row["maps_at_1px"] == ["sub"]
    assert row["sigma_at_bound"] == (["conv=min"] if float(net.conv.sigma.detach()) <= 0.2503 else [])
    assert row["multiply_adds"] == result.multiply_adds_after == multiply_adds(net, x[:1])
    assert isinstance(result.multiply_adds_before, int) and result.multiply_adds_before > 0


def test_cli_finetune_summary_and_plot_show_multiply_adds(tmp_path, capsys) -> None:
    from njet_convert import cli

    out = tmp_path / "toy"
    argv = ["mnist-toy-2layer", "--finetune", "opencv-digits", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # the summary line (--quiet would print none)
    assert "multiply-adds/image" in summary and "(fine-tuning)" in summary
    assert (out / "feature_sizes.png").is_file() and (out / "resolution.png").is_file()
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["multiply_adds"] > 0 and row["maps_at_1px"] == [] and "sigma_at_bound" in row
    report = (out / "report.md").read_text()
    assert "## Resolution learned in fine-tuning" in report
    section = report.split("## Resolution learned in fine-tuning")[1]
    points = [n for n, m in cli_points(out)]
    assert points and all(f"| {n} |" in section for n in points)  # one row per subsampling point
    assert f"{row['multiply_adds']:,}" in section  # multiply-adds after, as measured at the last epoch


def cli_points(out):
    import njet_convert

    model = njet_convert.load(out)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SafeSubsample)]


def test_finetune_records_sigma_factor_and_map_size_per_stage(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 3, (32,))
    net = _Net()
    cfg = FinetuneConfig(lr=0.05, batch_size=16, plots=False, tensorboard=False)
    result = finetune(net, (x, y), epochs=2, config=cfg, out_dir=tmp_path, device="cpu")
    assert [r["name"] for r in result.stages_before] == ["sub"] and result.stages_before[0]["factor"] == 2.0
    assert result.stages_after[0]["sigma"] == pytest.approx(float(net.conv.sigma.detach()))
    assert result.stages_after[0]["factor"] == pytest.approx(net.sub.factor)
    said = capsys.readouterr().err
    assert f"stage sub: σ {result.stages_before[0]['sigma']:.3g} → {result.stages_after[0]['sigma']:.3g}" in said
    assert "multiply-adds per image" in said
    from njet_convert.training.checkpoint import read_checkpoint

    history = read_checkpoint(tmp_path, net)["stage_history"]  # start + one row per epoch, kept for a resume
    assert [h["step"] for h in history] == [0, 2, 4]
    assert history[0]["stages"][0]["size"] == [8, 8]
