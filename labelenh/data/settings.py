"""Which data a run or a store is made from: the dataset, its split, label noise and image
geometry, as `labelenh teach`/`student`/`evaluate` take them and as runs record them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from labelenh.data.base import DatasetBundle
from labelenh.data.load import load_dataset
from labelenh.data.registry import resolve_crop_pct


@dataclass
class DataSettings:
    dataset: str = "cifar10-mini"
    data_root: str | None = None
    val_split: float = 0.0
    split_seed: int = 0
    noise: str | None = None
    noisy_labels: str | None = None
    noise_seed: int = 0
    image_size: int | None = None
    # an image folder's evaluation crop; None: 1.0, as runs made before it was recorded
    crop_pct: float | None = None

    def load(self) -> DatasetBundle:
        return load_dataset(
            self.dataset,
            self.data_root,
            val_split=self.val_split,
            split_seed=self.split_seed,
            noise=self.noise,
            noisy_labels=self.noisy_labels,
            noise_seed=self.noise_seed,
            image_size=self.image_size,
            crop_pct=self.crop_pct,
        )

    def for_run(self, record: Callable[[], dict[str, Any] | None]) -> DataSettings:
        """These settings with the crop fraction a run uses (`resolve_crop_pct`): `record()`
        gives the data the resumed run or the read store was made with, None for a new run."""
        return replace(self, crop_pct=resolve_crop_pct(self.dataset, self.crop_pct, record))
