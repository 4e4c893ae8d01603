"""Kernel fits in the N-Jet basis: closed form vs explicit lstsq, exactness at order 4, data-aware weighting."""

import pytest
import torch
import torch.nn.functional as F

from njet_convert.fitting import CalibrationOptions, KernelFit, embed_kernel, fit_kernels
from njet_convert.fitting.covariance import MomentStats, solve_moments
from njet_layers import NJetConv2d, filter_radius, gaussian_basis


def _njet_from(fit: KernelFit, weight: torch.Tensor, order: int, k: float = 2.0) -> NJetConv2d:
    layer = NJetConv2d(weight.shape[1], weight.shape[0], order=order, sigma=fit.sigma, k=k)
    with torch.no_grad():
        layer.alpha.copy_(fit.alpha)
    return layer


def test_closed_form_equals_explicit_lstsq_per_kernel():
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    fit = fit_kernels(weight, order=3, k=2.0, sigma=0.8)  # 5×5 filter, 10 basis filters: a unique solution
    basis = gaussian_basis(3, torch.tensor(0.8, dtype=torch.float64), 2.0).reshape(10, -1)  # [M, 25]
    for o in range(5):
        for c in range(3):
            target = embed_kernel(weight[o, c], 2).reshape(-1, 1)
            expected = torch.linalg.lstsq(basis.T, target).solution.squeeze(-1)
            torch.testing.assert_close(fit.alpha[o, c].double(), expected, rtol=1e-4, atol=1e-5)
    residual = embed_kernel(weight, 2).reshape(15, -1) - fit.alpha.reshape(15, -1).double() @ basis
    assert fit.error == pytest.approx(float(residual.norm() / weight.norm()), rel=1e-4)


def test_order4_fits_3x3_exactly_and_reproduces_the_conv():
    weight = torch.randn(8, 4, 3, 3)
    fit = fit_kernels(weight, order=4, k=2.0)
    assert fit.error < 1e-5
    assert filter_radius(fit.sigma, 2.0) == 1  # the exact fit needs no larger filter
    x = torch.randn(2, 4, 16, 16)
    layer = _njet_from(fit, weight, 4)
    torch.testing.assert_close(layer(x), F.conv2d(x, weight, padding=1), rtol=1e-3, atol=1e-3)


def test_order3_on_3x3_has_rank_8_and_misses_one_direction():
    basis = gaussian_basis(3, torch.tensor(0.5, dtype=torch.float64), 2.0).reshape(10, 9)
    assert int(torch.linalg.matrix_rank(basis)) == 8
    missing = torch.linalg.svd(basis).Vh[-1].reshape(1, 1, 3, 3)  # orthogonal to the span: nothing of it fits
    assert fit_kernels(missing, order=3, sigma=0.5).error == pytest.approx(1.0, abs=1e-4)
    # the missing direction is even in x and y (an x²y²-like pattern)
    torch.testing.assert_close(missing, missing.flip(-1))
    torch.testing.assert_close(missing, missing.flip(-2))


def test_sigma_search_picks_the_lowest_error():
    weight = torch.randn(6, 2, 3, 3)
    grid = [0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    best = fit_kernels(weight, order=3, sigma_grid=grid)
    errors = [fit_kernels(weight, order=3, sigma=s).error for s in grid]
    assert best.error == pytest.approx(min(errors), abs=1e-5)
    assert best.alpha.shape == (6, 2, 10) and best.alpha.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_even_and_non_square_kernels_are_centred_like_same_padding():
    x = torch.randn(1, 2, 12, 12)
    for shape in [(2, 2), (1, 3), (3, 1)]:
        weight = torch.randn(3, 2, *shape)
        fit = fit_kernels(weight, order=4, sigma=0.5)  # a 3×3 order-4 filter holds any kernel of <= 3×3 exactly
        assert fit.error < 1e-5, shape
        torch.testing.assert_close(_njet_from(fit, weight, 4)(x), F.conv2d(x, weight, padding="same"),
                                   rtol=1e-3, atol=1e-3)


def test_dilated_kernel_is_spread_over_the_frame():
    weight = torch.randn(2, 1, 3, 3)
    fit = fit_kernels(weight, order=3, k=2.0, dilation=(2, 2))
    assert filter_radius(fit.sigma, 2.0) >= 2  # a dilation-2 3×3 kernel spans 5×5
    assert fit.error < 0.9


def test_data_aware_fit_with_identity_covariance_equals_plain_least_squares():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    sigma = 0.6
    basis = gaussian_basis(3, torch.tensor(sigma, dtype=torch.float64), 2.0).reshape(10, -1)  # [M, 25]
    # Samples: every input channel's patch runs once over the 25 unit vectors of the 5×5 frame -> covariance = I.
    channels, pixels = 3, 25
    patches = torch.zeros(channels * pixels, channels, pixels, dtype=torch.float64)
    for i in range(channels * pixels):
        patches[i, i // pixels, i % pixels] = 1.0
    z = torch.einsum("ncp,mp->cmn", patches, basis).reshape(1, channels * 10, -1)  # [g=1, C*M, L]
    y = torch.einsum("ncp,ocp->on", patches, embed_kernel(weight, 2).reshape(4, channels, pixels))[None]
    stats = MomentStats()
    stats.update(z, y)
    alpha, _, _, _ = solve_moments(stats, centred=False, ridge=0.0)
    plain = fit_kernels(weight, order=3, sigma=sigma)
    torch.testing.assert_close(alpha[0].T.reshape(4, 3, 10).float(), plain.alpha, rtol=1e-4, atol=1e-5)


def test_bad_weight_raises_value_error():
    with pytest.raises(ValueError, match="weight"):
        fit_kernels(torch.randn(3, 3, 3), order=3)
    with pytest.raises(ValueError, match="order"):
        fit_kernels(torch.randn(1, 1, 3, 3), order=-1)
    with pytest.raises(ValueError, match="sigma_grid"):
        fit_kernels(torch.randn(1, 1, 3, 3), order=3, sigma_grid=[])


def _tiny_cnn() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


def _swap(model: torch.nn.Module, order: int) -> tuple[torch.nn.Module, dict[str, str]]:
    import copy

    converted, pairs = copy.deepcopy(model), {}
    for name, conv in list(converted.named_children()):
        if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3):
            fit = fit_kernels(conv.weight.detach(), order)
            layer = NJetConv2d(conv.in_channels, conv.out_channels, order=order, sigma=fit.sigma,
                               groups=conv.groups, bias=conv.bias is not None, stride=conv.stride)
            with torch.no_grad():
                layer.alpha.copy_(fit.alpha)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
            setattr(converted, name, layer)
            pairs[name] = name
    return converted.eval(), pairs


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 6, 6, generator=g), size=(24, 24), mode="bilinear") + 0.3


def test_calibrate_reduces_output_error_and_keeps_exact_fits():
    from njet_convert.fitting import calibrate

    model = _tiny_cnn()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    test = _smooth_images(32, 1)
    with torch.no_grad():
        reference = model(test)

    def error(net):
        with torch.no_grad():
            return float((net(test) - reference).norm() / reference.norm())

    converted, pairs = _swap(model, order=3)
    before = error(converted)
    fits = calibrate(converted, model, pairs, _smooth_images(64, 0), order=3, k=2.0, progress=False)
    assert set(fits) == set(pairs) and all(f.alpha.shape == converted.get_submodule(n).alpha.shape
                                           for n, f in fits.items())
    assert error(converted) < 0.5 * before
    exact, pairs4 = _swap(model, order=4)
    calibrate(exact, model, pairs4, _smooth_images(64, 0), order=4, k=2.0, progress=False)
    assert error(exact) < 1e-3


def test_calibrate_rejects_bad_input():
    from njet_convert.fitting import calibrate

    model = _tiny_cnn()
    converted, pairs = _swap(model, order=3)
    with pytest.raises(ValueError, match="calibration data"):
        calibrate(converted, model, pairs, torch.zeros(4, 24, 24), order=3, k=2.0, progress=False)
    with pytest.raises(ValueError, match="pairs"):
        calibrate(converted, model, {"6": "6"}, _smooth_images(4, 0), order=3, k=2.0, progress=False)


def test_ridge_with_a_prior_shrinks_towards_the_prior_not_zero():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 6, 40, generator=g, dtype=torch.float64)
    y = torch.randn(1, 3, 40, generator=g, dtype=torch.float64)
    stats = MomentStats()
    stats.update(z, y)
    prior = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    free, _, _, _ = solve_moments(stats, centred=False, ridge=0.0)
    strong, _, _, _ = solve_moments(stats, centred=False, ridge=1e6, prior=prior)
    weak, _, _, _ = solve_moments(stats, centred=False, ridge=1e-9, prior=prior)
    torch.testing.assert_close(strong, prior, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weak, free, rtol=1e-5, atol=1e-6)
    zero, _, _, _ = solve_moments(stats, centred=False, ridge=1e6)
    assert float(zero.abs().max()) < 1e-3


def test_candidate_sigmas_cover_both_filter_sizes():
    from njet_convert.fitting.calibration.njet_refit import candidate_sigmas as _candidate_sigmas

    layer = NJetConv2d(4, 4, order=3, sigma=0.42)
    sigmas = _candidate_sigmas(layer, torch.nn.Conv2d(4, 4, 3), 2.0, per_size=6)
    radii = [filter_radius(s, 2.0) for s in sigmas]
    assert 0.42 in sigmas and radii.count(1) >= 6 and radii.count(2) == 6 and set(radii) == {1, 2}


@pytest.mark.parametrize("size", [3, 5])
def test_plain_fit_sigmas_stay_inside_the_support_edge(size):
    """The plain fit's σ grid does not put σ₀ on a filter-size edge: one bounded fine-tuning step up
    (``sigma_max_step``, 0.02 octave) must not make a 3×3 or 5×5 layer's filter a ring larger (the margin is 5 % of
    each size's σ interval, so it is less than a step from 9×9 filters on)."""
    from njet_convert.fitting.sigma_search import default_sigma_grid
    from njet_convert.training import FinetuneConfig

    radius, step = (size - 1) // 2, 2.0 ** FinetuneConfig().sigma_max_step
    grid = default_sigma_grid(radius, 2.0)
    assert {filter_radius(s, 2.0) for s in grid} == {radius, radius + 1}
    assert all(filter_radius(s * step, 2.0) == filter_radius(s, 2.0) for s in grid), grid
    fit = fit_kernels(torch.randn(8, 4, size, size), 3, 2.0)
    assert filter_radius(fit.sigma * step, 2.0) == filter_radius(fit.sigma, 2.0)


def test_calibration_keeps_safe_subsampling_factors_when_sigma_moves():
    import njet_convert
    from njet_convert.fitting import calibrate
    from njet_layers import SafeSubsample

    model = _tiny_cnn()
    converted, _ = njet_convert.convert(model, order=3, subsample="safe")
    pairs = {n: n for n, m in converted.named_modules() if isinstance(m, NJetConv2d)}
    subsamplers = [m for m in converted.modules() if isinstance(m, SafeSubsample)]
    assert subsamplers and all(m.factor == 2 for m in subsamplers)
    before = [float(m.sigma.detach()) for m in subsamplers]
    calibrate(converted, model, pairs, _smooth_images(32, 0), order=3, k=2.0, progress=False,
              options=CalibrationOptions(sigmas_per_size=6))
    after = [float(m.sigma.detach()) for m in subsamplers]
    assert any(abs(a - b) > 1e-3 for a, b in zip(after, before, strict=True))  # the strided layer's σ moved
    assert all(abs(m.factor - 2) < 1e-6 for m in subsamplers)  # yet every feature map keeps its size
    x = _smooth_images(4, 3)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape


def _conv_path_stats(layer, orig, inputs, bases, opts, seed):
    """The former calibration path (a grouped conv2d per σ candidate), kept here as the reference."""
    from njet_convert.fitting.calibration.sampling import sampled_target as _sampled_target
    from njet_convert.fitting.calibration.sampling import target_full as _target_full

    gen = torch.Generator().manual_seed(seed)
    pad = max((b.shape[-1] - 1) // 2 for b in bases.values())
    stats = {s: MomentStats() for s in bases}
    for x in inputs:
        ys, offsets, sub = _sampled_target(orig, x, opts.max_positions, gen)
        xp = F.pad(x, (pad, pad, pad, pad))
        for s, basis in bases.items():
            channels, m, radius = x.shape[1], basis.shape[0], (basis.shape[-1] - 1) // 2
            weight = basis.repeat(channels, 1, 1).unsqueeze(1)
            full = [(x.shape[-2 + a] - 2 * layer.crop[a] - 1) // layer.stride[a] + 1 for a in range(2)]
            ratio = [max(1, round(full[a] / max(1, _target_full(ys.shape[-2 + a], offsets[a], sub))))
                     for a in range(2)]
            starts = [ratio[a] * offsets[a] * layer.stride[a] + layer.crop[a] + pad - radius for a in range(2)]
            steps = [ratio[a] * sub * layer.stride[a] for a in range(2)]
            z = F.conv2d(xp[..., starts[0]:, starts[1]:], weight, None, tuple(steps), 0, 1, channels)
            h, w = ys.shape[-2:]
            z = z[..., :h, :w].reshape(x.shape[0], channels * m, h, w)
            g, b, out = layer.groups, x.shape[0], ys.shape[1]
            zg = z.reshape(b, g, -1, h * w).permute(1, 2, 0, 3).reshape(g, channels * m // g, -1)
            yg = ys.reshape(b, g, out // g, h * w).permute(1, 2, 0, 3).reshape(g, out // g, -1)
            stats[s].update(zg, yg)
    return stats


@pytest.mark.parametrize("channels,out,groups,stride,crop,orig_stride,orig_padding,sigmas,positions", [
    # 5×5 patches, 10 basis filters: projected patch moments, except the dense case (per-candidate responses)
    (6, 6, 6, 1, 0, 1, 1, [0.3, 0.35, 0.45, 0.5, 0.6, 0.8, 0.9, 1.0], 40),  # depthwise, both filter sizes
    (6, 12, 6, 1, 0, 2, 1, [0.4, 0.7, 0.9], 1000),  # depthwise ×2, the original strided, every position
    (4, 6, 2, 2, 0, 2, 1, [0.3, 0.35, 0.45, 0.5, 0.6, 0.8, 0.9, 1.0], 30),  # grouped, strided
    (3, 5, 1, 1, 1, 1, 0, [0.45, 0.6], 50),  # dense, crop ('valid' conv)
])
def test_shared_patches_equal_the_conv_path_per_sigma(channels, out, groups, stride, crop, orig_stride,
                                                      orig_padding, sigmas, positions):
    from njet_convert.fitting.calibration.exact import candidate_stats as _candidate_stats
    from njet_convert.fitting.patches import embed_basis

    torch.manual_seed(0)
    orig = torch.nn.Conv2d(channels, out, 3, stride=orig_stride, padding=orig_padding, groups=groups, bias=True)
    layer = NJetConv2d(channels, out, order=3, sigma=0.5, groups=groups, bias=True, stride=stride, crop=crop)
    inputs = [torch.randn(3, channels, 17, 15), torch.randn(2, channels, 17, 15)]
    opts = CalibrationOptions(max_positions=positions)
    bases = {s: gaussian_basis(3, torch.tensor(s, dtype=torch.float64), 2.0, radius=filter_radius(s, 2.0)).float()
             for s in sigmas}
    with torch.no_grad():
        reference = _conv_path_stats(layer, orig, inputs, bases, opts, seed=3)
    pad = max((b.shape[-1] - 1) // 2 for b in bases.values())
    padded = {s: embed_basis(b, pad) for s, b in bases.items()}
    with torch.no_grad():
        new = _candidate_stats(layer, orig, inputs, padded, pad, opts, torch.Generator().manual_seed(3))
    for s in sigmas:
        assert new[s].count == reference[s].count > 0
        for field in ("zz", "zy", "yy", "z", "y"):
            expected = getattr(reference[s], field)
            torch.testing.assert_close(getattr(new[s], field), expected, rtol=1e-5,
                                       atol=1e-5 * float(expected.abs().max()), msg=f"sigma={s} {field}")
        # the fit error decides σ (α itself is ill-determined along the basis's near-null directions on 3×3)
        _, _, res_new, yy = solve_moments(new[s], centred=True, ridge=1e-6)
        _, _, res_ref, _ = solve_moments(reference[s], centred=True, ridge=1e-6)
        torch.testing.assert_close(res_new / yy, res_ref / yy, rtol=1e-3, atol=1e-5)


def test_pipeline_keeps_the_outputs_of_the_refitted_network():
    from njet_convert.fitting.pipeline import LayerPipeline

    model = _tiny_cnn()
    batches = [_smooth_images(3, 0), _smooth_images(2, 1), _smooth_images(4, 2)]
    with LayerPipeline(model, ["3", "9"], batches, keep_outputs=2) as pipe:
        for name, inputs in pipe:
            assert len(inputs) == 3
            with torch.no_grad():
                model.get_submodule(name).weight.mul_(1.5)  # a "refit" while the passes are paused at the layer
    outputs = pipe.outputs()
    assert outputs is not None and len(outputs) == 2
    with torch.no_grad():
        for out, batch in zip(outputs, batches, strict=False):
            torch.testing.assert_close(out, model(batch))
