"""`load_dataset`: dataset spec -> DatasetBundle (noise applied, validation split taken).

Adding a dataset is one `@register_dataset` function here (plus a reader in formats.py if it
has a new on-disk format).

Normalisation statistics are the standard per-dataset training-set values (pixel std over
the whole train set, e.g. CIFAR-10 std 0.247, not the often-copied 0.2023). The "label
enhancement" seeds normalise CIFAR-10 with CIFAR-100's statistics (means differ by ~0.016,
stds by ~8%); labelenh uses each dataset's own. Datasets without published values (npz,
synthetic) use statistics computed from their train images; image folders use ImageNet's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from labelenh import bounds as B
from labelenh.data import formats
from labelenh.data.base import CROP_PCT, DatasetBundle, TensorImages, channel_stats, resize_geometry
from labelenh.data.folder import FolderImages, read_folder
from labelenh.data.noise import apply_noise, load_noisy_labels
from labelenh.data.synthetic import make_synthetic
from labelenh.errors import LabelenhError

Stats = tuple[tuple[float, ...], tuple[float, ...]]
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
STL10_STATS: Stats = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
FASHIONMNIST_STATS: Stats = ((0.2860,), (0.3530,))
MNIST_STATS: Stats = ((0.1307,), (0.3081,))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FOLDER_IMAGE_SIZE = 224  # default for ImageNet and image folders


@dataclass
class Loaded:
    """What a dataset loader returns, before noise and the validation split."""

    train: TensorImages | FolderImages
    test: TensorImages | FolderImages
    classes: list[str]
    stats: Stats
    root: str | None = None


# (text after "kind:", data_root, image_size) -> Loaded
Loader = Callable[[str, "Path | None", "int | None"], Loaded]
DATASETS: dict[str, tuple[Loader, str]] = {}


def register_dataset(kind: str, usage: str) -> Callable[[Loader], Loader]:
    """Decorator: make `load_dataset("<kind>[:arg]")` call the decorated loader."""

    def deco(fn: Loader) -> Loader:
        DATASETS[kind] = (fn, usage)
        return fn

    return deco


def list_datasets() -> list[str]:
    """Usage strings of every dataset kind, e.g. 'cifar10', 'npz:<path>'."""
    return [usage for _, usage in DATASETS.values()]


def default_crop_pad(size: int) -> int:
    """Random-crop padding: 4 at CIFAR's 32 px, 2 at MNIST's 28 px, else an eighth of the side."""
    return {32: 4, 28: 2}.get(size, max(1, size // 8))


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, C, size, size]: short side to `size`, then centre crop.

    The same geometry as image folders; bilinear with antialiasing, in chunks to bound memory.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    nh, nw, top, left = resize_geometry(h, w, size)
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], 1024):
        chunk = F.interpolate(
            x[i : i + 1024].float(),
            size=(nh, nw),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out[i : i + 1024] = (
            chunk[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
        )
    return out


def _in_memory(
    arrays: formats.Arrays, stats: Stats | None, image_size: int | None, root: object
) -> Loaded:
    x_train, x_test = torch.from_numpy(arrays.x_train), torch.from_numpy(arrays.x_test)
    if image_size is not None:
        x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
    train = TensorImages(x_train, torch.from_numpy(arrays.y_train))
    test = TensorImages(x_test, torch.from_numpy(arrays.y_test))
    if stats is None:
        stats = channel_stats(train.images)
    return Loaded(train, test, list(arrays.classes), stats, None if root is None else str(root))


def _no_arg(kind: str, arg: str) -> None:
    if arg:
        raise LabelenhError(
            f"dataset '{kind}' takes no ':{arg}' suffix; the data root comes from --data-root"
        )


@register_dataset("cifar10", "cifar10")
def _cifar10(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("cifar10", arg)
    return _in_memory(formats.read_cifar(root, hundred=False), CIFAR10_STATS, image_size, root)


@register_dataset("cifar100", "cifar100")
def _cifar100(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("cifar100", arg)
    return _in_memory(formats.read_cifar(root, hundred=True), CIFAR100_STATS, image_size, root)


@register_dataset("stl10", "stl10")
def _stl10(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("stl10", arg)
    return _in_memory(formats.read_stl10(root), STL10_STATS, image_size, root)


@register_dataset("fashionmnist", "fashionmnist")
def _fashionmnist(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("fashionmnist", arg)
    arrays = formats.read_mnist_like(
        root, kind="fashionmnist", folder="FashionMNIST", classes=formats.FASHIONMNIST_CLASSES
    )
    return _in_memory(arrays, FASHIONMNIST_STATS, image_size, root)


@register_dataset("mnist", "mnist")
def _mnist(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("mnist", arg)
    arrays = formats.read_mnist_like(
        root, kind="mnist", folder="MNIST", classes=[str(i) for i in range(10)]
    )
    return _in_memory(arrays, MNIST_STATS, image_size, root)


@register_dataset("cifar10-mini", "cifar10-mini")
def _cifar10_mini(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    """The bundled real CIFAR-10 subset (5,085 train / 1,017 test images); needs no data root."""
    _no_arg("cifar10-mini", arg)
    with resources.as_file(resources.files("labelenh.data") / "cifar10_mini.npz") as path:
        arrays = formats.read_npz(path)
    return _in_memory(arrays, CIFAR10_STATS, image_size, None)


def _resolve(path: str, root: Path | None, usage: str) -> Path:
    """A path from a spec: as given (relative to the working directory), else under data_root."""
    if not path:
        raise LabelenhError(f"dataset spec needs a path: {usage}")
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and root is not None and (root / p).exists():
        return root / p
    return p


@register_dataset("npz", "npz:<path>")
def _npz(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    """x_train, y_train, x_test, y_test (HWC or NHW uint8), optional classes; stats from x_train."""
    path = _resolve(arg, root, "npz:<path to .npz>")
    return _in_memory(formats.read_npz(path), None, image_size, path)


@register_dataset("synthetic", "synthetic[:<classes>[:<train per class>]]")
def _synthetic(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    """Tiny learnable data: 10 classes x 50 train / 10 test images, 32x32 RGB by default."""
    parts = arg.split(":") if arg else []
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if (
        len(parts) > 2
        or len(nums) != len(parts)
        or (nums and nums[0] < 2)
        or (len(nums) > 1 and nums[1] < 1)
    ):
        raise LabelenhError(
            f"bad synthetic spec 'synthetic:{arg}': use synthetic[:K[:N]] with K >= 2, N >= 1"
        )
    k = nums[0] if nums else 10
    per_class = nums[1] if len(nums) > 1 else 50
    size = image_size if image_size is not None else 32
    B.NUM_CLASSES.check(k, f"synthetic:{arg}: the class count")
    B.SYNTHETIC_TRAIN_VALUES.check(k * per_class * 3 * size * size,
                                   f"synthetic:{arg} at {size}x{size}: its train values (samples x 3 x size^2)")
    x_train, y_train, x_test, y_test = make_synthetic(k, size, per_class)
    train, test = TensorImages(x_train, y_train), TensorImages(x_test, y_test)
    return Loaded(train, test, [f"class{i}" for i in range(k)], channel_stats(x_train))


def _folder(kind: str, root: Path, image_size: int | None, desc: str, stats: Stats) -> Loaded:
    train, test, classes = read_folder(kind, root, image_size or FOLDER_IMAGE_SIZE, desc)
    return Loaded(train, test, classes, stats, str(root))


@register_dataset("imagenet", "imagenet")
def _imagenet(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    _no_arg("imagenet", arg)
    desc = "ImageNet as image folders 'train/<wnid>/*.JPEG' and 'val/<wnid>/*.JPEG'"
    if root is None:
        raise LabelenhError(f"imagenet needs a data root (--data-root): a folder holding {desc}")
    if not root.is_dir():
        raise LabelenhError(f"imagenet: data root {root} is not a folder: put {desc} there")
    return _folder("imagenet", root, image_size, desc, IMAGENET_STATS)


@register_dataset("folder", "folder:<path>")
def _image_folder(arg: str, root: Path | None, image_size: int | None) -> Loaded:
    """An ImageFolder with train/ and val/; ImageNet statistics (a lazy source is not scanned)."""
    path = _resolve(arg, root, "folder:<path with train/ and val/>")
    desc = "image folders 'train/<class>/<image>' and 'val/<class>/<image>'"
    if not path.is_dir():
        raise LabelenhError(f"folder: {path} is not a folder: create it with {desc}")
    return _folder("folder", path, image_size, desc, IMAGENET_STATS)


CROP_KINDS = ("imagenet", "folder")  # the datasets whose evaluation images are crops of files


def resolve_crop_pct(spec: str, given: float | None,
                     record: Callable[[], dict[str, Any] | None]) -> float | None:
    """The crop fraction a run or an export uses: the one `given`, else the one `record()`
    holds (the data options of the run being resumed or of the store it reads; None for a new
    run), where a record that does not name one was made with 1.0 and keeps it; a new run of an
    image folder gets the standard CROP_PCT, any other dataset None (it has no such geometry).
    `record` is called only for image folders."""
    if given is not None:
        return float(given)
    if spec.partition(":")[0].strip().lower() not in CROP_KINDS:
        return None
    rec = record()
    if rec is not None:
        return rec.get("crop_pct")  # None: made before crop_pct was recorded, i.e. 1.0
    return CROP_PCT


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
    if not isinstance(spec, str) or not spec.strip():
        raise LabelenhError(f"empty dataset spec: choose one of {', '.join(list_datasets())}")
    spec = spec.strip()
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

    classes, train = loaded.classes, loaded.train
    k = len(classes)
    B.NUM_CLASSES.check(k, f"{spec}: the class count")
    for split, src in (("train", loaded.train), ("test", loaded.test)):
        if len(src) and int(src.labels.max()) >= k:
            raise LabelenhError(
                f"{spec}: {split} label {int(src.labels.max())} but only {k} classes"
            )
    n_full = len(train)

    noise_meta = None
    if noise is not None or noisy_labels:
        clean = train.labels.cpu()
        if noise is not None:
            noisy = apply_noise(clean, noise, k, noise_seed)
            noise_meta = {"spec": noise, "seed": int(noise_seed)}
        else:
            noisy, record = load_noisy_labels(noisy_labels, n_full, k)
            noise_meta = {"spec": f"file:{noisy_labels}", **record}
        noise_meta["rate"] = float((noisy != clean).double().mean()) if n_full else 0.0
        train = train.with_labels(noisy, clean)

    train_idx, val_idx = _split_indices(n_full, vs, split_seed)
    val = None if val_idx is None else train.subset(val_idx)
    if val_idx is not None:
        train = train.subset(train_idx)

    c, h, w = train.image_shape
    meta = {
        "dataset": spec,
        "root": loaded.root,
        "num_classes": k,
        "image_shape": [c, h, w],
        "num_samples": {
            "train": len(train),
            "val": 0 if val is None else len(val),
            "test": len(loaded.test),
        },
        "full_train": n_full,
        "val_split": vs,
        "split_seed": int(split_seed),
        "noise": noise_meta,
    }
    if kind in CROP_KINDS:
        meta["crop_pct"] = loaded.train.crop_pct
    mean, std = loaded.stats
    return DatasetBundle(
        name=spec,
        num_classes=k,
        classes=classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        crop_pad=default_crop_pad(h),
        train=train,
        val=val,
        test=loaded.test,
        meta=meta,
    )
