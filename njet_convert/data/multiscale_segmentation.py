"""Multi-scale Fashion-MNIST segmentation (the paper's Exp. 1.1B toy set).

Each image holds four Fashion-MNIST objects, one per quadrant. Object ``i`` gets a scale ``s`` drawn from a
probability mass function (homogeneous ``{1: 1}``, ``{2: 1}``, ``{4: 1}`` or multi-scale ``{1, 2, 3, 4}`` with
0.25 each), is upsampled ``s``× with bilinear interpolation and placed in its quadrant centred at a uniformly
sampled location where it fits. Labels (the paper's rule): class + 1 (1..10) where the grey value
``h >= 0.2``, background 0 where ``h == 0``, and :data:`IGNORE_INDEX` where ``0 < h < 0.2`` (those pixels count
neither in the loss nor in the score).

Samples are generated on the fly from ``(seed, index)``: deterministic, and no memory for large images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .fashion_mnist import load_fashion_mnist

__all__ = ["IGNORE_INDEX", "LABEL_THRESHOLD", "SCALE_SETTINGS", "MultiScaleSegmentation", "make_segmentation_sample"]

IGNORE_INDEX = 255
LABEL_THRESHOLD = 0.2
NUM_CLASSES = 11  # background + 10 Fashion-MNIST classes
# The paper's four training-set settings: P(s) per scale.
SCALE_SETTINGS: dict[str, dict[int, float]] = {
    "s1": {1: 1.0},
    "s2": {2: 1.0},
    "s4": {4: 1.0},
    "multi": {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25},
}


def _labels(image: Tensor, classes: Tensor, threshold: float) -> Tensor:
    """Per-pixel labels of an image whose pixel objects carry ``classes`` (class + 1 per pixel, 0 elsewhere)."""
    labels = torch.full(image.shape, IGNORE_INDEX, dtype=torch.int64)
    labels[image <= 0] = 0
    keep = image >= threshold
    labels[keep] = classes[keep]
    return labels


def make_segmentation_sample(
    objects: Tensor,
    classes: Tensor,
    scales: list[int],
    quadrant: int,
    generator: torch.Generator,
    threshold: float = LABEL_THRESHOLD,
) -> tuple[Tensor, Tensor]:
    """Compose one ``[1, 2q, 2q]`` image and its ``[2q, 2q]`` label map from four ``[28, 28]`` objects.

    Args:
        objects: ``[4, h, w]`` grey images in ``[0, 1]``.
        classes: ``[4]`` class indices 0..9 (stored as 1..10 in the labels).
        scales: four integer upsampling factors.
        quadrant: side ``q`` of each quadrant; must hold the largest upsampled object.
        generator: source of the random placement.
    """
    if objects.shape[0] != 4 or len(scales) != 4 or classes.shape[0] != 4:
        raise ValueError(f"need four objects, classes and scales, got {objects.shape[0]}, {classes.shape[0]}, "
                         f"{len(scales)}")
    size = 2 * quadrant
    image = torch.zeros(size, size)
    owner = torch.zeros(size, size, dtype=torch.int64)
    for i in range(4):
        obj = objects[i]
        if scales[i] != 1:
            obj = F.interpolate(obj[None, None], scale_factor=scales[i], mode="bilinear", align_corners=False)[0, 0]
        obj = obj.clamp(0.0, 1.0)
        h, w = obj.shape
        if h > quadrant or w > quadrant:
            raise ValueError(f"quadrant={quadrant} cannot hold an object of {h}×{w} px (scale {scales[i]})")
        top = int(torch.randint(0, quadrant - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, quadrant - w + 1, (1,), generator=generator))
        r0, c0 = (i // 2) * quadrant + top, (i % 2) * quadrant + left
        image[r0 : r0 + h, c0 : c0 + w] = obj
        owner[r0 : r0 + h, c0 : c0 + w] = int(classes[i]) + 1
    return image.unsqueeze(0), _labels(image, owner, threshold)


class MultiScaleSegmentation(Dataset):
    """``length`` generated samples ``([1, 2q, 2q] image, [2q, 2q] labels)`` from one Fashion-MNIST split.

    Args:
        split: Fashion-MNIST split the objects come from (``train`` or ``test``: the paper's validation sets use
            the held-out images).
        scales: a name in :data:`SCALE_SETTINGS` or a mapping ``{scale: probability}``.
        length: number of samples.
        quadrant: quadrant side; default ``ceil(8 * object_size / 7) * max scale`` (``32 * max scale`` for 28 px
            objects: the object plus a margin for random placement).
        object_size: side of the objects at scale 1; 28 keeps Fashion-MNIST's size, smaller values shrink the
            images first (area averaging) — a CPU-budget option that keeps the object-size : receptive-field
            ratios between settings.
        seed: samples depend only on ``(seed, index)``.
        images, labels: Fashion-MNIST tensors to draw from instead of reading ``split`` from disk.
    """

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        split: str = "train",
        scales: str | Mapping[int, float] = "multi",
        length: int = 1000,
        quadrant: int | None = None,
        seed: int = 0,
        images: Tensor | None = None,
        labels: Tensor | None = None,
        object_size: int = 28,
    ) -> None:
        pmf = SCALE_SETTINGS.get(scales) if isinstance(scales, str) else dict(scales)
        if not pmf or any(not isinstance(s, int) or s < 1 for s in pmf) or not math.isclose(sum(pmf.values()), 1.0):
            raise ValueError(f"scales must be one of {tuple(SCALE_SETTINGS)} or a pmf {{int: p}}, got {scales!r}")
        if length < 1:
            raise ValueError(f"length must be positive, got {length!r}")
        if images is None or labels is None:
            images, labels = load_fashion_mnist(split)
        if not 4 <= object_size <= images.shape[-1]:
            raise ValueError(f"object_size must be in 4..{images.shape[-1]}, got {object_size!r}")
        if object_size != images.shape[-1]:
            images = F.interpolate(images[:, None], size=(object_size, object_size), mode="area")[:, 0]
        self.images, self.labels = images, labels
        self.scale_values = torch.tensor(sorted(pmf), dtype=torch.int64)
        self.scale_probs = torch.tensor([pmf[s] for s in sorted(pmf)], dtype=torch.float64)
        side = quadrant if quadrant is not None else math.ceil(8 * object_size / 7)
        self.quadrant = side if quadrant is not None else side * int(self.scale_values.max())
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        picks = torch.randint(0, self.images.shape[0], (4,), generator=gen)
        scale_idx = torch.multinomial(self.scale_probs, 4, replacement=True, generator=gen)
        scales = [int(self.scale_values[i]) for i in scale_idx]
        return make_segmentation_sample(self.images[picks], self.labels[picks], scales, self.quadrant, gen)
