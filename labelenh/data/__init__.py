"""Datasets: image sources, bundles, label noise and the `load_dataset` entry point."""

from labelenh.data.base import DatasetBundle, ImageSource, TensorImages, normalize
from labelenh.data.folder import FolderImages
from labelenh.data.noise import (
    CIFARN_ALIASES,
    PAIRFLIP_CIFAR10,
    apply_noise,
    load_noisy_labels,
    parse_noise,
    transition_matrix,
)
from labelenh.data.registry import (
    DATASETS,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_crop_pct,
)

__all__ = [
    "CIFARN_ALIASES",
    "DATASETS",
    "PAIRFLIP_CIFAR10",
    "DatasetBundle",
    "FolderImages",
    "ImageSource",
    "TensorImages",
    "apply_noise",
    "list_datasets",
    "load_dataset",
    "load_noisy_labels",
    "normalize",
    "parse_noise",
    "register_dataset",
    "resolve_crop_pct",
    "transition_matrix",
]
