"""`load_dataset`: dataset spec -> DatasetBundle (noise applied, validation split taken)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from labelenh import bounds as B
from labelenh.data.base import DatasetBundle, ImageSource
from labelenh.data.noise import apply_noise, load_noisy_labels
from labelenh.data.registry import CROP_KINDS, DATASETS, Loaded, default_crop_pad, list_datasets
from labelenh.errors import LabelenhError


def _split_indices(n: int, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(train rows, val rows), both sorted, from a permutation seeded by `seed`."""
    if val_split == 0:
        return torch.arange(n), None
    n_val = round(val_split * n)
    if n_val < 1 or n_val >= n:
        raise LabelenhError(
            f"val split {val_split} of {n} train samples gives {n_val} validation samples: "
            "choose a fraction that leaves at least one sample on each side"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def load_dataset(
    spec: str,
    data_root: str | Path | None = None,
    *,
    val_split: float = 0.0,
    split_seed: int = 0,
    noise: str | None = None,
    noisy_labels: str | None = None,
    noise_seed: int = 0,
    image_size: int | None = None,
    crop_pct: float | None = None,
) -> DatasetBundle:
    """Load a dataset by spec (see `list_datasets()`), never downloading anything.

    Order of operations: read both splits; replace the full train set's labels with noisy ones
    (`noise` = 'symmetric:EPS' | 'pairflip:EPS', seeded by `noise_seed`, or `noisy_labels` =
    'FILE[:KEY]'); then hold out `val_split` of the train rows (seeded by `split_seed`) as the
    validation split, whose labels are therefore noisy too. Train and val keep the original row
    order. `image_size` resizes in-memory datasets (short side, centre crop) and sets the
    decode size of image folders (default 224) and of synthetic data (default 32). `crop_pct`
    is an image folder's evaluation geometry: the short side resized to image_size / crop_pct,
    then a centre crop; None is 1.0, the geometry of stores and runs that do not record one
    (`resolve_crop_pct` gives new runs the standard 0.875).
    """
    spec, vs, noise = _checked_args(spec, val_split, split_seed, noise, noisy_labels, noise_seed,
                                    image_size, crop_pct)
    kind, loaded = _read(spec, data_root, image_size, crop_pct)
    k = len(loaded.classes)
    train, noise_meta = _with_noise(loaded.train, noise, noisy_labels, noise_seed, k)
    train_idx, val_idx = _split_indices(len(train), vs, split_seed)
    val = None if val_idx is None else train.subset(val_idx)
    if val_idx is not None:
        train = train.subset(train_idx)
    meta = _meta(spec, kind, loaded, train, val, vs, split_seed, noise_meta)
    mean, std = loaded.stats
    return DatasetBundle(
        name=spec,
        num_classes=k,
        classes=loaded.classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        crop_pad=default_crop_pad(train.image_shape[1]),
        train=train,
        val=val,
        test=loaded.test,
        meta=meta,
    )


def _checked_args(spec: Any, val_split: Any, split_seed: int, noise: str | None,
                  noisy_labels: str | None, noise_seed: int, image_size: int | None,
                  crop_pct: float | None) -> tuple[str, float, str | None]:
    """(spec, val split, noise or None) once every argument is in range: refused before any
    file is read."""
    if not isinstance(spec, str) or not spec.strip():
        raise LabelenhError(f"empty dataset spec: choose one of {', '.join(list_datasets())}")
    try:
        vs = float(val_split)
    except (TypeError, ValueError):
        vs = math.nan
    if not 0.0 <= vs < 1.0:
        raise LabelenhError(f"val split must be a fraction in [0, 1), got {val_split}")
    if image_size is not None:
        B.IMAGE_SIZE.check(image_size, "--image-size")
    if crop_pct is not None:
        B.CROP_PCT.check(crop_pct, "--crop-pct")
    B.SEED.check(split_seed, "--split-seed")
    B.SEED.check(noise_seed, "--noise-seed")
    noise = None if noise is None or noise.strip().lower() in ("", "none") else noise.strip()
    if noise is not None and noisy_labels:
        raise LabelenhError("give either synthetic noise (--noise) or a noisy-label file, not both")
    return spec.strip(), vs, noise


def _read(spec: str, data_root: str | Path | None, image_size: int | None,
          crop_pct: float | None) -> tuple[str, Loaded]:
    """(kind, both splits as read) of a dataset spec, at the evaluation crop asked for, its
    labels checked against its classes."""
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind not in DATASETS:
        raise LabelenhError(f"unknown dataset '{spec}': choose one of {', '.join(list_datasets())}")
    root = None if data_root is None else Path(data_root).expanduser()
    loaded = DATASETS[kind][0](arg, root, image_size)
    if crop_pct is not None:
        if kind not in CROP_KINDS:
            raise LabelenhError(f"--crop-pct is the evaluation crop of image folders ({', '.join(CROP_KINDS)}), "
                                f"not of {kind}")
        loaded = replace(loaded, train=loaded.train.with_crop_pct(crop_pct),
                         test=loaded.test.with_crop_pct(crop_pct))
    k = len(loaded.classes)
    B.NUM_CLASSES.check(k, f"{spec}: the class count")
    for split, src in (("train", loaded.train), ("test", loaded.test)):
        if len(src) and int(src.labels.max()) >= k:
            raise LabelenhError(
                f"{spec}: {split} label {int(src.labels.max())} but only {k} classes"
            )
    return kind, loaded


def _with_noise(train: ImageSource, noise: str | None, noisy_labels: str | None, noise_seed: int,
                k: int) -> tuple[ImageSource, dict[str, Any] | None]:
    """The full train split with its noisy labels (synthetic or from a file) and what the run
    records of them; unchanged, and None, without noise."""
    if noise is None and not noisy_labels:
        return train, None
    n_full = len(train)
    clean = train.labels.cpu()
    if noise is not None:
        noisy = apply_noise(clean, noise, k, noise_seed)
        noise_meta: dict[str, Any] = {"spec": noise, "seed": int(noise_seed)}
    else:
        noisy, record = load_noisy_labels(noisy_labels, n_full, k)
        noise_meta = {"spec": f"file:{noisy_labels}", **record}
    noise_meta["rate"] = float((noisy != clean).double().mean()) if n_full else 0.0
    return train.with_labels(noisy, clean), noise_meta


def _meta(spec: str, kind: str, loaded: Loaded, train: ImageSource, val: ImageSource | None,
          vs: float, split_seed: int, noise_meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a bundle records of how it was made (runs and stores keep it)."""
    meta = {
        "dataset": spec,
        "root": loaded.root,
        "num_classes": len(loaded.classes),
        "image_shape": list(train.image_shape),
        "num_samples": {
            "train": len(train),
            "val": 0 if val is None else len(val),
            "test": len(loaded.test),
        },
        "full_train": len(loaded.train),
        "val_split": vs,
        "split_seed": int(split_seed),
        "noise": noise_meta,
    }
    if kind in CROP_KINDS:
        meta["crop_pct"] = loaded.train.crop_pct
    return meta
