"""What every dataset hands out: image sources (one split each), the bundle, normalisation.

A source returns uint8 images [B, C, H, W] for any batch of indices; in-memory sources keep
the whole split as one uint8 tensor (CIFAR-sized data fits, and can live on the GPU), lazy
sources (image folders) decode files on demand. Every source has a fingerprint that names
its labels and its samples, so a soft-label store can refuse the wrong dataset.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from labelenh.errors import LabelenhError

FINGERPRINT_VERSION = b"labelenh.images.v1"


@runtime_checkable
class ImageSource(Protocol):
    """One split of a dataset."""

    labels: torch.Tensor  # int64 [N]
    image_shape: tuple[int, int, int]  # (C, H, W)

    def __len__(self) -> int: ...

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] for `indices` (any order, repeats allowed)."""
        ...

    def fingerprint(self) -> str:
        """sha256 hex over labels and sample contents (cached)."""
        ...


def as_index(indices: torch.Tensor | np.ndarray | list[int], n: int) -> torch.Tensor:
    """Indices as a CPU int64 tensor [B], range-checked against a split of size `n`."""
    idx = torch.as_tensor(indices).reshape(-1)
    if idx.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise LabelenhError(f"sample indices must be integers, got dtype {idx.dtype}")
    idx = idx.to(device="cpu", dtype=torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise LabelenhError(
            f"sample index out of range: got [{int(idx.min())}, {int(idx.max())}] for {n} samples"
        )
    return idx


def check_labels(labels: torch.Tensor | np.ndarray, n: int, what: str = "labels") -> torch.Tensor:
    """Labels as int64 CPU [N]; refuses wrong length, non-integers and negatives."""
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    lab = lab.reshape(-1)
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise LabelenhError(f"{what} must be integers, got dtype {lab.dtype}")
    if lab.numel() != n:
        raise LabelenhError(f"{what}: got {lab.numel()} labels for {n} samples")
    lab = lab.to(device="cpu", dtype=torch.int64)
    if lab.numel() and int(lab.min()) < 0:
        raise LabelenhError(f"{what}: negative label {int(lab.min())}")
    return lab


class TensorImages:
    """An in-memory split: `images` uint8 [N, C, H, W] and `labels` int64 [N].

    `clean_labels` (int64 [N] or None) holds the labels before synthetic/human noise was
    applied, for analysis only; training sees `labels`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        clean_labels: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = (
                getattr(images, "dtype", type(images).__name__),
                tuple(getattr(images, "shape", ())),
            )
            raise LabelenhError(f"images must be a uint8 tensor [N, C, H, W], got {got}")
        self.images = images  # [N, C, H, W] uint8
        self.labels = check_labels(labels, images.shape[0]).to(images.device)  # [N]
        self.clean_labels = (
            None
            if clean_labels is None
            else check_labels(clean_labels, images.shape[0], "clean labels").to(images.device)
        )
        self.image_shape: tuple[int, int, int] = tuple(images.shape[1:])  # type: ignore[assignment]
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"TensorImages(n={len(self)}, shape={self.image_shape}, device={self.images.device})"

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        idx = as_index(indices, len(self)).to(self.images.device)
        return self.images[idx]  # [B, C, H, W] uint8

    def fingerprint(self) -> str:
        """sha256 over a format tag, the shape, the int64 labels and every image byte."""
        if self._fingerprint is None:
            h = hashlib.sha256(FINGERPRINT_VERSION)
            h.update(repr(("tensor", len(self), self.image_shape)).encode())
            h.update(self.labels.cpu().numpy().astype("<i8").tobytes())
            images = self.images.cpu().contiguous()
            # Hash in slices so no second full-size copy is made.
            step = max(1, (64 << 20) // max(1, images[0].numel()))
            for i in range(0, len(self), step):
                h.update(images[i : i + step].numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def to(self, device: torch.device | str) -> TensorImages:
        """The same split on `device` (fingerprint carried over, not recomputed)."""
        out = TensorImages(
            self.images.to(device),
            self.labels.to(device),
            clean_labels=None if self.clean_labels is None else self.clean_labels.to(device),
        )
        out._fingerprint = self._fingerprint
        return out

    def subset(self, indices: torch.Tensor) -> TensorImages:
        """Rows `indices` as a new split (used for the validation split)."""
        idx = as_index(indices, len(self)).to(self.images.device)
        return TensorImages(
            self.images[idx],
            self.labels[idx],
            clean_labels=None if self.clean_labels is None else self.clean_labels[idx],
        )

    def with_labels(self, labels: torch.Tensor, clean_labels: torch.Tensor | None) -> TensorImages:
        """Same images, new labels (noisy labels), keeping the originals as `clean_labels`."""
        return TensorImages(self.images, labels, clean_labels=clean_labels)


@dataclass
class DatasetBundle:
    """A dataset ready for training: three splits plus what the pipeline needs to know."""

    name: str  # e.g. "cifar10-mini", "cifar10", "npz:/path/x.npz"
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    crop_pad: int  # random-crop padding for train augmentation (4 for 32x32)
    train: ImageSource  # val rows removed; noisy labels applied
    val: ImageSource | None
    test: ImageSource
    meta: dict = field(default_factory=dict)  # JSON-able


def normalize(
    x: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor
) -> torch.Tensor:
    """(x / 255 - mean) / std per channel; x is [B, C, H, W] or [C, H, W] in 0..255.

    uint8 input is converted to float32; float input keeps its dtype (fp16/bf16 included).
    """
    if not x.is_floating_point():
        x = x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # [C, 1, 1]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    if m.shape[0] != x.shape[-3] or s.shape[0] != x.shape[-3]:
        raise LabelenhError(
            f"normalize: {m.shape[0]} means / {s.shape[0]} stds for {x.shape[-3]} channels"
        )
    return (x / 255.0 - m) / s


CROP_PCT = 0.875  # evaluation crops this fraction of the resized short side (224 of 256), as timm
# The geometry of image-folder stores and runs that do not record a crop fraction: the short
# side resized to the image size, then centre-cropped.
LEGACY_CROP_PCT = 1.0


def resize_geometry(h: int, w: int, size: int, crop_pct: float = 1.0) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) for "short side to floor(size / crop_pct), then centre-crop
    size x size" (crop_pct 1: the short side to `size`).

    Rounds as timm's eval transform and torchvision's Resize(floor(size / crop_pct)) +
    CenterCrop(size) do, so results match theirs.
    """
    short_to = int(math.floor(size / crop_pct)) if crop_pct != 1.0 else size
    short, long = min(h, w), max(h, w)
    new_long = int(short_to * long / short)
    nh, nw = (short_to, new_long) if h <= w else (new_long, short_to)
    return nh, nw, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W], in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    for chunk in images.split(4096):  # bounded float64 temporaries
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    mean = total / max(count, 1)
    var = (total_sq / max(count, 1) - mean * mean).clamp_min(0)
    std = var.sqrt().clamp_min(1e-3)  # a constant channel must not divide by zero
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
