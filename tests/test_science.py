"""Science experiments' building blocks: offline data readers, the segmentation set's label rule, the toy / U-Net /
ASPP models of the paper's experiments, and the small training loop. Fast (well under a minute on CPU)."""

from __future__ import annotations

import gzip

import pytest
import timm
import torch
import torch.nn.functional as F

from njet_convert.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist, read_idx
from njet_convert.data.multiscale_segmentation import (
    IGNORE_INDEX,
    LABEL_THRESHOLD,
    MultiScaleSegmentation,
    make_segmentation_sample,
)
from njet_convert.data.opencv_digits import DEFAULT_DIGITS_PATH, load_opencv_digits
from njet_convert.experiments._train import TrainConfig, make_optimizer, shuffled_batches, train_epochs
from njet_convert.experiments.segmentation import class_weights, mean_iou
from njet_convert.models.aspp import ASPPHead, NJetASPPHead, aspp_parameter_count
from njet_convert.models.mnist_toy import ToyConfig, ToyNet, toy_sigmas
from njet_convert.models.unet import UNet
from njet_layers import NJetConv2d, SafeSubsample

HAS_FMNIST = (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason="needs `apt-get install dataset-fashion-mnist`")
needs_digits = pytest.mark.skipif(not DEFAULT_DIGITS_PATH.is_file(), reason="needs `apt-get install opencv-doc`")


# --- data -------------------------------------------------------------------------------------------------------

@needs_fmnist
def test_fashion_mnist_reads_the_real_files() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (60000,) and set(labels.unique().tolist()) == set(range(10))
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0
    assert torch.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    test_images, _ = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root=tmp_path)


def test_read_idx_roundtrip_and_rejects_garbage(tmp_path) -> None:
    good = tmp_path / "x-idx3-ubyte.gz"
    payload = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    good.write_bytes(gzip.compress(payload))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bad)


@needs_digits
def test_opencv_digits_are_mnist_like() -> None:
    images, labels = load_opencv_digits()
    assert images.shape == (5000, 28, 28)
    assert torch.bincount(labels).tolist() == [500] * 10
    assert float(images[:, :4].abs().max()) == 0.0  # the 4 px MNIST-style border is empty


def _check_label_rule(image, labels, quadrant, classes) -> None:
    h = image[0]
    assert torch.equal(labels == 0, h == 0)
    assert torch.equal(labels == IGNORE_INDEX, (h > 0) & (h < LABEL_THRESHOLD))
    objects = (labels != 0) & (labels != IGNORE_INDEX)
    assert torch.equal(objects, h >= LABEL_THRESHOLD)
    for q in range(4):  # one object (one class) per quadrant
        r, c = (q // 2) * quadrant, (q % 2) * quadrant
        block = labels[r : r + quadrant, c : c + quadrant]
        found = set(block[(block != 0) & (block != IGNORE_INDEX)].tolist())
        assert found <= {int(classes[q]) + 1}


def test_segmentation_sample_follows_threshold_and_ignore_rule() -> None:
    gen = torch.Generator().manual_seed(3)
    objects = torch.rand(4, 28, 28, generator=gen) * (torch.rand(4, 28, 28, generator=gen) > 0.5)
    classes = torch.tensor([0, 3, 7, 9])
    image, labels = make_segmentation_sample(objects, classes, [1, 2, 3, 4], quadrant=120, generator=gen)
    assert image.shape == (1, 240, 240) and labels.shape == (240, 240)
    _check_label_rule(image, labels, 120, classes)
    assert (labels == IGNORE_INDEX).any() and (labels == 10).any()  # the rule is exercised, class 9 -> label 10
    with pytest.raises(ValueError, match="quadrant"):
        make_segmentation_sample(objects, classes, [4, 4, 4, 4], quadrant=100, generator=gen)


@needs_fmnist
def test_multiscale_segmentation_on_real_data_is_deterministic() -> None:
    images, labels = load_fashion_mnist("test")
    ds = MultiScaleSegmentation("test", "s2", length=3, seed=5, images=images, labels=labels)
    image, target = ds[1]
    assert image.shape == (1, 128, 128) and ds.quadrant == 64
    assert torch.equal(target, ds[1][1]) and not torch.equal(target, ds[2][1])
    h = image[0]
    assert torch.equal(target == IGNORE_INDEX, (h > 0) & (h < LABEL_THRESHOLD))
    small = MultiScaleSegmentation("test", "multi", length=1, images=images, labels=labels, object_size=14)
    assert small[0][0].shape == (1, 128, 128)  # 16 px quadrant unit × max scale 4 × 2 quadrants
    with pytest.raises(ValueError, match="scales"):
        MultiScaleSegmentation("test", "s5", images=images, labels=labels)


def test_class_weights_and_mean_iou() -> None:
    labels = torch.tensor([[0, 0, 0, 1], [1, 2, IGNORE_INDEX, 0]])
    w = class_weights(labels, num_classes=3)
    assert w[0] < w[1] < w[2]  # rarer -> heavier
    logits = F.one_hot(labels.clamp(max=2), 3).permute(2, 0, 1)[None].float()

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    assert mean_iou(Fixed(), torch.zeros(1, 1, 2, 4), labels[None], num_classes=3) == pytest.approx(100.0)


# --- models -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["njet_mnist_toy2", "njet_mnist_toy4", "mnist_toy2_conv3", "mnist_toy4_conv11",
                                  "mnist_toy2_dilated", "mnist_toy4_dilated"])
@pytest.mark.parametrize("size", [28, 112])
def test_toy_nets_build_and_forward(name: str, size: int) -> None:
    model = timm.create_model(name, width=4)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_njet_toy_uses_safe_subsampling_linked_to_sigma() -> None:
    model = ToyNet(ToyConfig(depth=2, width=4, conv="njet"))
    sub = [m for m in model.modules() if isinstance(m, SafeSubsample)]
    conv = [m for m in model.modules() if isinstance(m, NJetConv2d)]
    assert len(sub) == 1 and sub[0].source is conv[0] and len(conv) == 2
    assert sub[0].output_size((112, 112)) == (95, 95)  # 112 / 2**(1/4), ceil
    with torch.no_grad():
        conv[0].log_sigma.fill_(torch.log(torch.tensor(4.0)))
    assert sub[0].output_size((112, 112)) == (56, 56) and toy_sigmas(model)[0] == pytest.approx(4.0)
    plain = ToyNet(ToyConfig(conv="njet", safe_subsample=False, width=4))
    assert not any(isinstance(m, SafeSubsample) for m in plain.modules())
    with pytest.raises(ValueError, match="conv"):
        ToyConfig(conv="deformable")


def test_unet_baseline_and_njet_forward_at_odd_sizes() -> None:
    base, njet = UNet(width=4), timm.create_model("njet_unet_fmnist", width=4)
    x = torch.randn(1, 1, 37, 50)
    assert base(x).shape == njet(x).shape == (1, 11, 37, 50)
    convs = [m for m in njet.modules() if isinstance(m, NJetConv2d)]
    assert len(convs) == 10 and all(c.order == 2 and c.alpha.shape[-1] == 6 for c in convs)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in base.modules()) == 10


@pytest.mark.parametrize(("in_ch", "classes", "order"), [(2048, 21, 3), (64, 5, 2), (32, 3, 1)])
def test_aspp_shared_alpha_parameter_count(in_ch: int, classes: int, order: int) -> None:
    base = ASPPHead(in_ch, classes)
    assert sum(p.numel() for p in base.parameters()) == aspp_parameter_count(in_ch, classes)
    head = NJetASPPHead(in_ch, classes, order=order)
    count = sum(p.numel() for p in head.parameters())
    M = (order + 1) * (order + 2) // 2
    assert count == in_ch * classes * M + classes + 4 == aspp_parameter_count(in_ch, classes, order=order, shared=True)
    free = NJetASPPHead(in_ch, classes, order=order, share_alpha=False)
    assert sum(p.numel() for p in free.parameters()) == 4 * in_ch * classes * M + classes + 4


def test_paper_table6_counts() -> None:
    assert aspp_parameter_count(2048, 21) == 1_548_372
    assert aspp_parameter_count(2048, 21, shared=True) == 387_093
    paper = {3: 430_101, 2: 258_069, 1: 129_045}
    for order, n in paper.items():
        assert aspp_parameter_count(2048, 21, order=order, shared=True, count_sigma=False) == n


def test_njet_aspp_shares_alpha_learns_four_sigmas() -> None:
    base = ASPPHead(8, 3)
    head = NJetASPPHead.from_aspp(base, order=3)
    assert head.sigmas == pytest.approx([3.0, 6.0, 9.0, 12.0])  # rate / k
    assert all(b.alpha is head.branches[0].alpha for b in head.branches)
    assert torch.allclose(head.bias, sum(b.bias for b in base.branches))
    x = torch.randn(2, 8, 20, 20)
    head(x).square().mean().backward()
    assert all(b.log_sigma.grad is not None and b.log_sigma.grad != 0 for b in head.branches)
    # tying survives a state_dict round trip
    clone = NJetASPPHead(8, 3)
    clone.load_state_dict(head.state_dict())
    assert torch.allclose(clone(x), head(x), atol=1e-5) and clone.branches[3].alpha is clone.branches[0].alpha


# --- training loop ----------------------------------------------------------------------------------------------

@needs_digits
def test_training_loop_learns_and_moves_sigma() -> None:
    images, labels = load_opencv_digits()
    x, y = images[::25, None], labels[::25]  # 200 digits, all classes
    model = ToyNet(ToyConfig(depth=2, width=4, conv="njet"))
    start = toy_sigmas(model)
    losses: list[float] = []
    train_epochs(model, shuffled_batches(x, y, 32, 0), TrainConfig(epochs=3, lr=1e-2),
                 on_epoch=lambda e, loss: losses.append(loss))
    assert losses[-1] < losses[0]
    assert any(abs(a - b) > 1e-3 for a, b in zip(start, toy_sigmas(model), strict=True))


def test_optimizer_gives_sigma_its_own_lr_and_no_decay() -> None:
    model = ToyNet(ToyConfig(depth=2, width=4, conv="njet"))
    opt = make_optimizer(model, TrainConfig(lr=1e-2, sigma_lr=5e-2, weight_decay=1e-3))
    sigma_ids = {id(m.log_sigma) for m in model.modules() if isinstance(m, NJetConv2d)}
    (group,) = [g for g in opt.param_groups if {id(p) for p in g["params"]} == sigma_ids]
    assert group["lr"] == 5e-2 and group["weight_decay"] == 0.0
    alpha_group = [g for g in opt.param_groups if any(p is model.features[0].alpha for p in g["params"])]
    assert alpha_group[0]["lr"] == 1e-2 and alpha_group[0]["weight_decay"] == 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(model, TrainConfig(optimizer="rmsprop"))
