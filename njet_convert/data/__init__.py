"""Data: named datasets and folders for the command line (:mod:`.datasets`), offline sets used by the science
experiments (Fashion-MNIST, the opencv handwritten digits, the multi-scale Fashion-MNIST segmentation set of the
paper's Exp. 1.1B) and the bundled photos for calibration (:mod:`.photos`)."""

from .datasets import DATASETS, calibration_images, dataset_names, default_data_dir, resolve_dataset
from .fashion_mnist import FashionMNIST, load_fashion_mnist
from .multiscale_segmentation import IGNORE_INDEX, MultiScaleSegmentation, make_segmentation_sample
from .opencv_digits import load_opencv_digits
from .photos import calibration_photos, heldout_photos

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "FashionMNIST",
    "MultiScaleSegmentation",
    "calibration_images",
    "calibration_photos",
    "dataset_names",
    "default_data_dir",
    "heldout_photos",
    "load_fashion_mnist",
    "load_opencv_digits",
    "make_segmentation_sample",
    "resolve_dataset",
]
