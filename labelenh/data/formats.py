"""Readers for the on-disk formats of the in-memory datasets (torchvision's layouts).

Each reader returns NumPy arrays: images uint8 [N, C, H, W], labels int64 [N], and the
class names. Nothing is ever downloaded: a missing file raises LabelenhError naming the
files to put where.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelenh import bounds as B
from labelenh.data.safepickle import load_numpy_pickle
from labelenh.errors import LabelenhError

STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
FASHIONMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class Arrays:
    """Both splits of an in-memory dataset, as read from disk."""

    x_train: np.ndarray  # uint8 [N, C, H, W]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray  # uint8 [M, C, H, W]
    y_test: np.ndarray  # int64 [M]
    classes: list[str]


def _need_root(kind: str, root: str | Path | None, what: str) -> Path:
    if root is None:
        raise LabelenhError(f"{kind} needs a data root (--data-root): a folder holding {what}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LabelenhError(
            f"{kind}: data root {path} is not a folder: create it and put {what} there"
        )
    return path


def _find_dir(root: Path, name: str, marker: str) -> Path | None:
    """`root/name` if it holds `marker`, else `root` itself if it does (root given one level deep)."""
    for cand in (root / name, root):
        if (cand / marker).exists():
            return cand
    return None


def _pickle_dict(path: Path) -> dict:
    obj = load_numpy_pickle(path)
    if not isinstance(obj, dict):
        raise LabelenhError(f"{path} is not a CIFAR batch (expected a pickled dict)")
    # Python 2 pickles read with latin1 give str keys, pickles written from Python 3 with
    # bytes keys (b'data') keep them: accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _as_text(v: object) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _pickle_dict(path)
    if "data" not in d or label_key not in d:
        raise LabelenhError(f"{path}: expected keys 'data' and '{label_key}', found {sorted(d)}")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise LabelenhError(f"{path}: 'data' must be [N, 3072] uint8, got {data.shape}")
    labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise LabelenhError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    # Each row is the R plane, then G, then B, each 32x32 row-major: a plain CHW reshape.
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(root: str | Path | None, *, hundred: bool) -> Arrays:
    """CIFAR-10 (`cifar-10-batches-py/`) or CIFAR-100 (`cifar-100-python/`), python pickles."""
    if hundred:
        kind, folder, label_key, meta_key = (
            "cifar100",
            "cifar-100-python",
            "fine_labels",
            "fine_label_names",
        )
        train_files, test_file, meta_file = ["train"], "test", "meta"
        desc = "the extracted 'cifar-100-python/' folder (torchvision's format: train, test, meta)"
    else:
        kind, folder, label_key, meta_key = (
            "cifar10",
            "cifar-10-batches-py",
            "labels",
            "label_names",
        )
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file = "test_batch", "batches.meta"
        desc = (
            "the extracted 'cifar-10-batches-py/' folder "
            "(torchvision's format: data_batch_1..5, test_batch, batches.meta)"
        )
    base = _need_root(kind, root, desc)
    d = _find_dir(base, folder, test_file)
    name = "CIFAR-100" if hundred else "CIFAR-10"
    if d is None:
        raise LabelenhError(f"{kind}: no {name} under {base}: put {desc} there")
    missing = [f for f in [*train_files, test_file, meta_file] if not (d / f).is_file()]
    if missing:
        raise LabelenhError(f"{kind}: {d} lacks {', '.join(missing)}: put {desc} there")
    xs, ys = zip(*(_cifar_batch(d / f, label_key) for f in train_files), strict=True)
    x_test, y_test = _cifar_batch(d / test_file, label_key)
    meta = _pickle_dict(d / meta_file)
    if meta_key not in meta:
        raise LabelenhError(f"{d / meta_file}: expected key '{meta_key}', found {sorted(meta)}")
    classes = [_as_text(c) for c in meta[meta_key]]
    return Arrays(np.concatenate(xs), np.concatenate(ys), x_test, y_test, classes)


def read_stl10(root: str | Path | None) -> Arrays:
    """STL-10's labelled splits from `stl10_binary/` (96x96, column-major, labels 1..10)."""
    desc = (
        "the extracted 'stl10_binary/' folder "
        "(torchvision's format: train_X.bin, train_y.bin, test_X.bin, test_y.bin)"
    )
    base = _need_root("stl10", root, desc)
    d = _find_dir(base, "stl10_binary", "test_X.bin")
    if d is None:
        raise LabelenhError(f"stl10: no STL-10 under {base}: put {desc} there")
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise LabelenhError(f"stl10: {d} lacks {', '.join(missing)}: put {desc} there")

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        raw = np.fromfile(d / f"{prefix}_X.bin", dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise LabelenhError(
                f"stl10: {d / (prefix + '_X.bin')} is not a whole number of 3x96x96 images"
            )
        # Stored column-major per channel (MATLAB order): swap H and W back.
        x = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
        y = np.fromfile(d / f"{prefix}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if y.shape[0] != x.shape[0]:
            raise LabelenhError(f"stl10: {prefix}: {x.shape[0]} images but {y.shape[0]} labels")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise LabelenhError(f"stl10: {d / (prefix + '_y.bin')} has labels outside 1..10")
        return np.ascontiguousarray(x), y

    x_train, y_train = split("train")
    x_test, y_test = split("test")
    names_file = d / "class_names.txt"
    classes = STL10_CLASSES
    if names_file.is_file():
        lines = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
        if len(lines) == 10:
            classes = lines
    return Arrays(x_train, y_train, x_test, y_test, list(classes))


def _read_idx(path: Path) -> np.ndarray:
    """An idx-ubyte file (MNIST format), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LabelenhError(f"cannot read {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LabelenhError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise LabelenhError(f"{path}: header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def read_mnist_like(
    root: str | Path | None, *, kind: str, folder: str, classes: list[str]
) -> Arrays:
    """MNIST-format idx files under `<root>/<folder>/raw/` (torchvision), 1 channel 28x28."""
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]  # fmt: skip
    desc = f"'{folder}/raw/' with {', '.join(stems)} (.gz or not; torchvision's format)"
    base = _need_root(kind, root, desc)
    d = None
    for cand in (base / folder / "raw", base / "raw", base):
        if any((cand / (stems[2] + ext)).is_file() for ext in ("", ".gz")):
            d = cand
            break
    if d is None:
        raise LabelenhError(f"{kind}: no {folder} under {base}: put {desc} there")
    paths = []
    for stem in stems:
        found = [d / (stem + ext) for ext in ("", ".gz") if (d / (stem + ext)).is_file()]
        if not found:
            raise LabelenhError(f"{kind}: {d} lacks {stem}[.gz]: put {desc} there")
        paths.append(found[0])
    x_train, y_train, x_test, y_test = (_read_idx(p) for p in paths)
    for x, y, p in ((x_train, y_train, paths[0]), (x_test, y_test, paths[2])):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise LabelenhError(f"{kind}: {p}: images {x.shape} do not match labels {y.shape}")
    return Arrays(
        x_train[:, None].copy(), y_train.astype(np.int64), x_test[:, None].copy(),
        y_test.astype(np.int64), list(classes),
    )  # fmt: skip


def to_nchw(x: np.ndarray, path: Path | str, key: str) -> np.ndarray:
    """HWC [N, H, W, C] (C in 1, 3, 4) or gray [N, H, W] uint8 -> [N, C, H, W]."""
    if x.dtype != np.uint8:
        raise LabelenhError(f"{path}: '{key}' must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        return x[:, None].copy()
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise LabelenhError(f"{path}: '{key}' must be [N, H, W, C] or [N, H, W], got shape {x.shape}")


def _npz_labels(y: np.ndarray, x: np.ndarray, p: Path, key: str) -> np.ndarray:
    """int64 labels [N] of the images x, refused unless N non-negative integers."""
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer) or y.shape[0] != x.shape[0]:
        raise LabelenhError(
            f"npz: {p}: '{key}' must be {x.shape[0]} integers, got {y.dtype} {y.shape}"
        )
    if y.size and y.min() < 0:
        raise LabelenhError(f"npz: {p}: '{key}' has a negative label")
    return y.astype(np.int64)


def read_npz(path: str | Path) -> Arrays:
    """An .npz with x_train, y_train, x_test, y_test (HWC or NHW uint8) and optional classes."""
    p = Path(path).expanduser()
    keys = ["x_train", "y_train", "x_test", "y_test"]
    if not p.is_file():
        raise LabelenhError(
            f"npz: no file {p}: write an .npz with arrays {', '.join(keys)} (optional classes)"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise LabelenhError(
                    f"npz: {p} lacks {', '.join(missing)} (has {', '.join(z.files)})"
                )
            arrs = {k: z[k] for k in [*keys, *(["classes"] if "classes" in z.files else [])]}
    except (OSError, ValueError) as e:
        # NumPy's message for a non-.npz file suggests allow_pickle=True, i.e. running the file's code
        why = "not a NumPy .npz archive" if "pickle" in str(e) else str(e).splitlines()[0]
        raise LabelenhError(
            f"npz: cannot read {p} ({why}): write it with numpy.savez(path, x_train=..., y_train=..., "
            "x_test=..., y_test=...)"
        ) from None
    x_train, x_test = to_nchw(arrs["x_train"], p, "x_train"), to_nchw(arrs["x_test"], p, "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise LabelenhError(
            f"npz: {p}: train images {x_train.shape[1:]} vs test {x_test.shape[1:]}"
        )
    ys = [_npz_labels(arrs[key], x, p, key) for key, x in (("y_train", x_train), ("y_test", x_test))]
    k = int(max(ys[0].max(initial=-1), ys[1].max(initial=-1))) + 1
    if k > B.NUM_CLASSES.hi:  # before a list of k class names or a k-way model is allocated
        raise LabelenhError(
            f"npz: {p}: label {k - 1} means {k} classes, more than {B.NUM_CLASSES.text()} allows; "
            "labels must be class indices 0..K-1"
        )
    if "classes" in arrs:
        classes = [_as_text(c) for c in arrs["classes"].reshape(-1)]
        if len(classes) < k:
            raise LabelenhError(f"npz: {p}: {len(classes)} class names but labels go up to {k - 1}")
    else:
        classes = [str(i) for i in range(k)]
    return Arrays(x_train, ys[0], x_test, ys[1], classes)
