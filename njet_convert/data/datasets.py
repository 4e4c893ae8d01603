"""Datasets by name or folder for the command line: CIFAR-10/100, SVHN, MNIST, Fashion-MNIST (torchvision, or the
offline Debian idx files), the opencv-doc digits, the bundled photos, image folders.

Torchvision datasets are looked for in ``data_dir`` (``--data-dir``; default ``$NJET_DATA`` or
``~/.cache/njet/data``) and downloaded there when missing and the network is there; offline with the files
missing raises :class:`~njet_convert.errors.UserError` that says how to get them. Images come as float tensors
normalised with the dataset's mean and std (ImageNet's for photos and image folders).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ..errors import UserError, first_line

__all__ = ["DATASETS", "DatasetInfo", "calibration_images", "dataset_names", "default_data_dir", "resolve_dataset"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: torchvision class name, channels, image size, classes, normalisation."""

    torchvision: str | None
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    about: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("CIFAR10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR-10"),
    "cifar100": DatasetInfo("CIFAR100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR-100"),
    "svhn": DatasetInfo("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "SVHN"),
    "mnist": DatasetInfo("MNIST", 1, 28, 10, (0.1307,), (0.3081,), "MNIST"),
    "fashion-mnist": DatasetInfo("FashionMNIST", 1, 28, 10, (0.2860,), (0.3530,),
                                 "Fashion-MNIST (offline: Debian dataset-fashion-mnist)"),
    "opencv-digits": DatasetInfo(None, 1, 28, 10, (0.1307,), (0.3081,), "5000 digits of opencv-doc (offline)"),
    "photos": DatasetInfo(None, 3, 224, 0, *IMAGENET, "bundled real photos, unlabeled (offline)"),
    "fashion-mnist-multiscale": DatasetInfo(None, 1, 112, 11, (0.0,), (1.0,),
                                            "multi-scale Fashion-MNIST segmentation (paper Exp. 1.1B, offline)"),
}
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "digits": "opencv-digits",
            "opencv_digits": "opencv-digits"}


def dataset_names() -> list[str]:
    """The dataset names :func:`resolve_dataset` knows (besides folders)."""
    return sorted(DATASETS)


def default_data_dir() -> Path:
    """``$NJET_DATA`` or ``~/.cache/njet/data``: where torchvision datasets are looked for and downloaded."""
    return Path(os.environ.get("NJET_DATA", Path.home() / ".cache" / "njet" / "data"))


def _key(spec: str) -> str:
    key = spec.strip().lower()
    return _ALIASES.get(key, key)


def resolve_dataset(spec: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                    image_size: int | None = None, download: bool = True) -> Dataset | Tensor:
    """A dataset of ``(image, label)`` from a name or a folder of class sub-folders; a flat folder of images gives
    an unlabeled tensor ``[N, 3, S, S]``. UserError for unknown names, missing data and unreadable folders."""
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    key = _key(spec)
    if key in DATASETS:
        return _named(key, split, Path(data_dir) if data_dir else default_data_dir(), image_size, download)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(path, image_size or 224)
    if path.exists():
        raise UserError(f"data {spec!r} is a file; pass a dataset name or a folder of images")
    import difflib

    close = difflib.get_close_matches(key, dataset_names(), n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"unknown data {spec!r}: {hint}use one of {', '.join(dataset_names())} or an image folder")


def _named(key: str, split: str, root: Path, size: int | None, download: bool) -> Dataset | Tensor:
    info = DATASETS[key]
    if key == "photos":
        from .photos import calibration_photos, heldout_photos

        return (calibration_photos if split == "train" else heldout_photos)(256, size or info.size)
    if key == "opencv-digits":
        return _opencv_digits(split, info, size)
    if key == "fashion-mnist-multiscale":
        from .multiscale_segmentation import MultiScaleSegmentation

        return _offline(lambda: MultiScaleSegmentation(split), "fashion-mnist-multiscale")
    if key == "fashion-mnist" and not (root / "FashionMNIST").is_dir():
        from .fashion_mnist import DEFAULT_ROOT

        if (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file():
            return _debian_fashion_mnist(split, info, size)
    return _torchvision(info, split, root, size, download)


def _offline(build: Callable[[], Dataset], name: str) -> Dataset:
    try:
        return build()
    except FileNotFoundError as err:
        raise UserError(f"{name}: {err}") from None


def _normalise(images: Tensor, info: DatasetInfo, size: int | None) -> Tensor:
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    return (images - mean) / std


def _debian_fashion_mnist(split: str, info: DatasetInfo, size: int | None) -> Dataset:
    from .fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist(split)
    return TensorDataset(_normalise(images.unsqueeze(1), info, size), labels)


def _opencv_digits(split: str, info: DatasetInfo, size: int | None) -> Dataset:
    from .opencv_digits import digits_split

    try:
        x_train, y_train, x_test, y_test = digits_split(4000, 1000, seed=0)
    except FileNotFoundError as err:
        raise UserError(f"opencv-digits: {err}") from None
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return TensorDataset(_normalise(images, info, size), labels)


def _torchvision(info: DatasetInfo, split: str, root: Path, size: int | None, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    steps = [transforms.Resize(size)] if size is not None and size != info.size else []
    tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    cls = getattr(datasets, info.torchvision)
    split_kw = {"split": split} if info.torchvision == "SVHN" else {"train": split == "train"}
    folder = root / info.torchvision.lower() if info.torchvision == "SVHN" else root
    try:
        return cls(str(folder), download=False, transform=tf, **split_kw)
    except RuntimeError:
        if not download:
            raise UserError(_missing(info, root, "and downloading is off")) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(str(folder), download=True, transform=tf, **split_kw)
    except PermissionError as err:
        raise UserError(f"cannot write {info.about} to {str(root)!r}: {err.strerror}; pass --data-dir DIR") from None
    except Exception as err:
        from ..checkpoints import is_offline_error

        if is_offline_error(err) or isinstance(err, OSError | RuntimeError):
            raise UserError(_missing(info, root, "and cannot be downloaded (no network?)")) from None
        raise


def _missing(info: DatasetInfo, root: Path, why: str) -> str:
    return (f"{info.about} is not in {str(root)!r} {why}: on a machine with network run `python -c \"import "
            f"torchvision; torchvision.datasets.{info.torchvision}('{root}', download=True)\"`, copy the folder "
            "here and pass it with --data-dir")


def _folder(path: Path, size: int) -> Dataset | Tensor:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                 transforms.Normalize(*IMAGENET)])
        try:
            return datasets.ImageFolder(str(path), transform=tf, loader=_open_rgb)
        except (FileNotFoundError, OSError) as err:
            raise UserError(f"image folder {str(path)!r}: {err}") from None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"data folder {str(path)!r} holds no images and no class sub-folders")
    return torch.cat([_read_image(f, size) for f in files])


def _open_rgb(path: str | Path) -> Any:
    """An image file as an RGB PIL image; UserError naming the file when it is unreadable, truncated or a
    decompression bomb (a header claiming more pixels than PIL's limit, e.g. 40000x40000)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        reason = "not a readable image" if "cannot identify" in str(err) else first_line(err)
        raise UserError(f"cannot read image {str(path)!r}: {reason}") from None


def _read_image(path: Path, size: int) -> Tensor:
    import numpy as np

    array = np.asarray(_open_rgb(path), dtype=np.float32) / 255.0
    img = torch.from_numpy(array).permute(2, 0, 1)[None]
    h, w = img.shape[-2:]
    side = min(h, w)
    img = img[..., (h - side) // 2: (h - side) // 2 + side, (w - side) // 2: (w - side) // 2 + side]
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1), torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    return (img - mean) / std


def calibration_images(spec: str, n: int, input_size: tuple[int, int, int], *,
                       data_dir: str | os.PathLike | None = None, seed: int = 0) -> Tensor:
    """``n`` images ``[n, C, H, W]`` from ``spec`` (a name or folder) for the data-aware fit, adapted to the
    model's ``input_size`` (channels repeated or averaged, resized). Labels are dropped."""
    if n < 1:
        raise UserError(f"the number of calibration images must be positive, got {n}")
    c, h, w = input_size
    key = _key(spec)
    if key == "photos":
        from .photos import calibration_photos

        images = calibration_photos(n, h)
    else:
        data = resolve_dataset(spec, "train", data_dir=data_dir, image_size=None)
        images = data if torch.is_tensor(data) else _take(data, n, seed)
    images = images[:n].float()
    if images.shape[1] != c:
        images = images.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else images
        if images.shape[1] != c:
            raise UserError(f"calibration data {spec!r} has {images.shape[1]} channels, the model takes {c}")
    if tuple(images.shape[-2:]) != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return images.contiguous()


def _take(data: Dataset, n: int, seed: int) -> Tensor:
    count = len(data)  # type: ignore[arg-type]
    if count == 0:
        raise UserError("calibration data is empty")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n]
    items = [data[int(i)] for i in order]
    return torch.stack([item[0] if isinstance(item, tuple | list) else item for item in items])
