"""Which data a run or a store is made from: the dataset, its split, label noise and image
geometry, as `labelenh teach`/`student`/`evaluate` take them and as runs record them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from labelenh import bounds as B
from labelenh.data.base import DatasetBundle
from labelenh.data.load import load_dataset
from labelenh.data.registry import resolve_crop_pct
from labelenh.options import check_values, option

H_DATA = "Data"


def _data(default: Any = None, **kw: Any) -> Any:
    return option(default, panel=H_DATA, show_default=False, **kw)


@dataclass
class DataSettings:
    """Which data a run reads. Each field declares its flag (labelenh.options); `teach`,
    `student`, `evaluate`, `export-soft-labels` and `store verify|add-teacher` take them all."""

    dataset: str = _data("cifar10-mini", help="cifar10 | cifar100 | stl10 | fashionmnist | imagenet | "
                                               "folder:PATH | npz:PATH | cifar10-mini | synthetic")
    data_root: str | None = _data(help="Folder holding the dataset in torchvision's on-disk format (never "
                                       "downloaded).")
    # 0: no validation split (the flag's range excludes it: leave the flag out)
    val_split: float = _data(0.0, bound=B.VAL_SPLIT,
                             help="Fraction of train held out for validation/early stopping, in {range}.")
    split_seed: int = _data(0, bound=B.SEED, help="Seed of the validation split, in {range}.")
    noise: str | None = _data(help="Synthetic label noise: symmetric:RATE or pairflip:RATE.")
    noisy_labels: str | None = _data(help="CIFAR-N label file FILE[:KEY] (e.g. CIFAR-10_human.pt:worst).")
    noise_seed: int = _data(0, bound=B.SEED, help="Seed of the synthetic label noise, in {range}.")
    image_size: int | None = _data(bound=B.IMAGE_SIZE,
                                   help="Resize folder/ImageNet images to this size, in {range}.")
    # an image folder's evaluation crop; None: 1.0, as runs made before it was recorded
    crop_pct: float | None = _data(
        bound=B.CROP_PCT,
        help="Image folders: evaluation images are the centre crop of the short side resized to image size / "
             "crop-pct, in {range}; default: 0.875 (256 -> 224, as timm) for a new run or store, what the "
             "resumed run or the store read was made with otherwise (1.0 where it records none).")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> DataSettings:
        """Settings from flags or a recipe ({field: value}, other keys ignored, None = the
        default), checked against the declared ranges."""
        given = {k: v for k, v in values.items() if k in DATA_KEYS and v is not None}
        check_values(cls, given)
        return cls(**given)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DataSettings:
        """Settings as a run or store recorded them (a val_split of 0: none)."""
        return cls.from_values({k: v for k, v in record.items() if k != "val_split" or v})

    def options(self) -> dict[str, Any]:
        """The settings besides the dataset and where it lies, as a store records them."""
        return {k: v for k, v in self.__dict__.items() if k not in ("dataset", "data_root")}

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


DATA_KEYS = frozenset(f.name for f in fields(DataSettings))
