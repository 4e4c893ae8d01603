"""CUDA: every layer path on the GPU equals the CPU, under AMP (bf16/fp16, kernels composed in fp32) and in
channels-last; freeze and ONNX export from a CUDA model; a 2-process NCCL run. Run with ``pytest -m cuda``
(``benchmarks/cuda_check.sh`` runs these and the speed tables in one go); skipped, saying why, without a GPU."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import njet_convert  # noqa: F401  (before torchvision: the import guard)
from njet_layers import NJetConv2d

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is "
                       "False on this machine"),
]

IMPLS = ("dense", "basis_first", "fft", "separable")
CFGS = [
    dict(in_channels=8, out_channels=6, order=3, sigma=1.0, bias=True),
    dict(in_channels=6, out_channels=6, order=(2, 2), sigma=0.5),
    dict(in_channels=4, out_channels=4, order=2, sigma=2.0, groups=2, stride=2),
]


def _layer(cfg: dict, impl: str) -> NJetConv2d:
    torch.manual_seed(0)
    return NJetConv2d(**cfg, impl=impl)


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("impl", IMPLS)
def test_every_path_on_cuda_equals_cpu(impl: str, cfg: dict) -> None:
    cpu = _layer(cfg, impl).double()
    gpu = _layer(cfg, impl).double().cuda()
    x = torch.randn(2, cfg["in_channels"], 20, 18, dtype=torch.float64)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_c, out_g = cpu(xc), gpu(xg)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-9, atol=1e-9)
    up = torch.randn_like(out_c)
    out_c.backward(up)
    out_g.backward(up.cuda())
    for a, b in ((xc.grad, xg.grad), (cpu.alpha.grad, gpu.alpha.grad), (cpu.log_sigma.grad, gpu.log_sigma.grad)):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_amp_with_fp32_kernels(impl: str, dtype: torch.dtype) -> None:
    layer = _layer(CFGS[0], impl).cuda()
    x = torch.randn(4, 8, 24, 24, device="cuda")
    ref = layer(x)
    with torch.autocast("cuda", dtype=dtype):
        assert layer.kernel().dtype == torch.float32  # composed in the parameters' precision
        out = layer(x)
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < tol, f"{impl} under {dtype}: relative error {err:.2e}"
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in (layer.alpha, layer.log_sigma))
    assert layer.alpha.grad.dtype == torch.float32


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last(impl: str) -> None:
    layer = _layer(CFGS[0], impl).cuda()
    x = torch.randn(2, 8, 17, 21, device="cuda")
    ref = layer(x)
    out = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_freeze_and_onnx_export_from_a_cuda_model(tmp_path) -> None:
    import torchvision

    from njet_convert import convert
    from njet_convert.export import export_onnx, freeze
    from njet_convert.export.freeze import max_relative_error

    model = convert(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25), order=3)[0].eval().cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    frozen = freeze(model, x)
    with torch.no_grad():
        assert max_relative_error(frozen(x), model(x)) <= 1e-4
    result = export_onnx(model, tmp_path / "m.onnx", x)
    assert os.path.exists(result)


_DDP_WORKER = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    from njet_layers import NJetConv2d
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    layer = NJetConv2d(4, 4, order=3, sigma=1.5, impl="separable").cuda()
    model = torch.nn.parallel.DistributedDataParallel(layer, device_ids=[rank])
    torch.manual_seed(1 + rank)
    model(torch.randn(2, 4, 16, 16, device="cuda")).square().mean().backward()
    grads = [torch.zeros_like(layer.alpha.grad) for _ in range(dist.get_world_size())]
    dist.all_gather(grads, layer.alpha.grad)
    assert all(torch.equal(g, grads[0]) for g in grads), "gradients differ across ranks"
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"2-process NCCL needs 2 GPUs; {torch.cuda.device_count()} visible")
def test_two_process_nccl(tmp_path) -> None:
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_WORKER)
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("cfg", CFGS)
def test_the_kernel_node_on_cuda_equals_the_autograd_composition(cfg: dict) -> None:
    """The layer composes with autograd off the CPU; the single node (host round trips) must agree there too, for
    the day a GPU measures it faster."""
    from njet_layers.kernel_compose import compose_kernel, compose_kernel_autograd

    layer = _layer(cfg, "dense").cuda()
    args = (layer.sigma_bounds, layer.order, layer.radius, layer.mixes)
    got = compose_kernel(layer.alpha, layer.log_sigma, *args)
    want = compose_kernel_autograd(layer.alpha, layer.log_sigma, *args)
    torch.testing.assert_close(got, want)
    probe = torch.randn_like(want)
    grads = torch.autograd.grad((got * probe).sum(), (layer.alpha, layer.log_sigma))
    expected = torch.autograd.grad((want * probe).sum(), (layer.alpha, layer.log_sigma))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
