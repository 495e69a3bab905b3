"""Datasets: every kind read from small files written in its on-disk format."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from labelenh.data import (
    DatasetBundle,
    FolderImages,
    ImageSource,
    TensorImages,
    list_datasets,
    load_dataset,
    normalize,
)
from labelenh.data.registry import resize_images
from labelenh.errors import LabelenhError

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def rng_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- writers (torchvision layouts)


def write_cifar10(
    root: Path, per_batch: int = 3, str_keys: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py with 5 train batches + test batch; returns (train data [N, 3072], labels).

    The official files are Python 2 pickles whose keys read back as str under latin1 (what
    torchvision sees); loaders that read with encoding="bytes" see b'data'. Batch 1 always
    uses str keys, the others bytes keys unless `str_keys`.
    """
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data, labels = [], []
    for b in range(1, 6):
        x = rng_images(b, (per_batch, 3072))
        y = [(b * 3 + i) % 10 for i in range(per_batch)]
        data.append(x)
        labels += y
        # str keys, protocol 2: what Python 2 pickles look like once decoded
        if b == 1 or str_keys:
            obj, proto = {"data": x, "labels": y, "batch_label": "training batch 1 of 5"}, 2
        else:  # bytes keys, as many hand-written loaders expect
            obj, proto = {b"data": x, b"labels": y, b"batch_label": b"training batch"}, 4
        (d / f"data_batch_{b}").write_bytes(pickle.dumps(obj, protocol=proto))
    xt = rng_images(9, (2, 3072))
    key = str if str_keys else str.encode
    (d / "test_batch").write_bytes(pickle.dumps({key("data"): xt, key("labels"): [7, 3]}))
    meta = {key("label_names"): [key(n) for n in CIFAR10_NAMES], key("num_vis"): 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta))
    return np.concatenate(data), np.array(labels)


def write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray]:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    x = rng_images(1, (4, 3072))
    y = [99, 0, 42, 7]
    train = {
        b"data": x,
        b"fine_labels": y,
        b"coarse_labels": [19, 0, 1, 2],
        b"filenames": [b"a.png"] * 4,
    }
    (d / "train").write_bytes(pickle.dumps(train))
    # test and meta with str keys, as the official files read under latin1 (and torchvision needs)
    (d / "test").write_bytes(
        pickle.dumps({"data": rng_images(2, (2, 3072)), "fine_labels": [5, 6]}, 2)
    )
    names = [f"c{i:02d}" for i in range(100)]
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": []}, 2))
    return x, np.array(y)


def write_stl10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    x = rng_images(3, (3, 3, 96, 96))  # CHW
    x[0, 1, 5, 70] = 255
    x[0, 1, 70, 5] = 0  # the transposed position must not be where the 255 lands
    y = np.array([1, 10, 4], dtype=np.uint8)  # 1-based
    # STL-10 stores each channel column-major.
    (d / "train_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
    (d / "train_y.bin").write_bytes(y.tobytes())
    (d / "test_X.bin").write_bytes(rng_images(4, (2, 3, 96, 96)).transpose(0, 1, 3, 2).tobytes())
    (d / "test_y.bin").write_bytes(np.array([2, 3], dtype=np.uint8).tobytes())
    return x, y


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fashionmnist(root: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    d = root / "FashionMNIST" / "raw"
    d.mkdir(parents=True)
    x = rng_images(5, (4, 28, 28))
    y = np.array([9, 0, 3, 3], dtype=np.uint8)
    files = {
        "train-images-idx3-ubyte": x,
        "train-labels-idx1-ubyte": y,
        "t10k-images-idx3-ubyte": rng_images(6, (2, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([1, 2], dtype=np.uint8),
    }
    for name, arr in files.items():
        if gz:
            with gzip.open(d / f"{name}.gz", "wb") as f:
                f.write(idx_bytes(arr))
        else:
            (d / name).write_bytes(idx_bytes(arr))
    return x, y


def write_folder(
    root: Path, sizes: dict[str, tuple[int, int]] | None = None
) -> dict[str, np.ndarray]:
    """train/{cat,dog}/..., val/{cat,dog}/... PNGs; returns relative path -> HWC array."""
    out = {}
    layout = {
        "train/cat": ["a.png", "b.png"],
        "train/dog": ["c.png"],
        "val/cat": ["d.png"],
        "val/dog": ["e.png"],
    }
    for i, (folder, names) in enumerate(sorted(layout.items())):
        (root / folder).mkdir(parents=True)
        for j, name in enumerate(names):
            w, h = (sizes or {}).get(name, (32, 32))
            arr = rng_images(10 * i + j, (h, w, 3))
            Image.fromarray(arr).save(root / folder / name)
            out[f"{folder}/{name}"] = arr
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return out


# ---------------------------------------------------------------- loaders, each against its files


def test_cifar10_pickles(tmp_path: Path) -> None:
    data, labels = write_cifar10(tmp_path)
    b = load_dataset("cifar10", tmp_path)
    assert isinstance(b, DatasetBundle) and isinstance(b.train, ImageSource)
    assert b.classes == CIFAR10_NAMES and b.num_classes == 10 and b.crop_pad == 4
    assert b.train.images.shape == (15, 3, 32, 32) and b.train.images.dtype == torch.uint8
    assert torch.equal(b.train.labels, torch.from_numpy(labels))
    # pixel (c=2, y=5, x=17) of row 4 is byte c*1024 + y*32 + x of that row
    assert int(b.train.images[4, 2, 5, 17]) == int(data[4, 2 * 1024 + 5 * 32 + 17])
    assert torch.equal(b.test.labels, torch.tensor([7, 3])) and len(b.test) == 2
    assert b.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    # the data root may also be the batches folder itself
    b2 = load_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    assert b2.train.fingerprint() == b.train.fingerprint()


def test_cifar10_matches_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path, str_keys=True)
    # torchvision checks the official md5 sums; bypass only that check.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ref = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    b = load_dataset("cifar10", tmp_path)
    assert torch.equal(b.train.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    assert b.train.labels.tolist() == ref.targets and b.classes == ref.classes


def test_cifar100_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, labels = write_cifar100(tmp_path)
    b = load_dataset("cifar100", tmp_path)
    assert b.num_classes == 100 and b.classes[42] == "c42"
    assert torch.equal(b.train.labels, torch.from_numpy(labels))
    assert torch.equal(b.train.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert b.mean == pytest.approx((0.5071, 0.4867, 0.4408))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ref = torchvision.datasets.CIFAR100(str(tmp_path), train=False, download=False)
    assert torch.equal(b.test.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(LabelenhError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_stl10_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = write_stl10(tmp_path)
    b = load_dataset("stl10", tmp_path)
    assert b.train.image_shape == (3, 96, 96) and b.crop_pad == 12
    assert torch.equal(b.train.images, torch.from_numpy(x))
    assert int(b.train.images[0, 1, 5, 70]) == 255 and int(b.train.images[0, 1, 70, 5]) == 0
    assert b.train.labels.tolist() == [0, 9, 3]
    assert b.classes[0] == "airplane" and b.classes[9] == "truck"
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    ref = torchvision.datasets.STL10(str(tmp_path), split="test", download=False)
    assert torch.equal(b.test.images, torch.from_numpy(ref.data))
    assert b.test.labels.tolist() == ref.labels.tolist()


@pytest.mark.parametrize("gz", [True, False])
def test_fashionmnist_idx(tmp_path: Path, gz: bool) -> None:
    x, y = write_fashionmnist(tmp_path, gz)
    b = load_dataset("fashionmnist", tmp_path)
    assert b.train.image_shape == (1, 28, 28) and len(b.mean) == 1 and b.crop_pad == 2
    assert torch.equal(b.train.images[:, 0], torch.from_numpy(x))
    assert b.train.labels.tolist() == y.tolist() and b.classes[9] == "Ankle boot"
    if not gz:  # torchvision reads only the uncompressed files
        ref = torchvision.datasets.FashionMNIST(str(tmp_path), train=True, download=False)
        assert torch.equal(b.train.images[:, 0], ref.data)
        assert torch.equal(b.train.labels, ref.targets)


def test_image_folder(tmp_path: Path) -> None:
    arrays = write_folder(tmp_path / "pets")
    b = load_dataset(f"folder:{tmp_path / 'pets'}", image_size=32, crop_pct=0.875)
    assert isinstance(b.train, FolderImages) and isinstance(b.train, ImageSource)
    assert b.classes == ["cat", "dog"] and b.num_classes == 2 and b.crop_pad == 4
    assert len(b.train) == 3 and len(b.test) == 2 and b.train.labels.tolist() == [0, 0, 1]
    imgs = b.train.load(torch.tensor([2, 0, 2]))  # any order, repeats allowed
    assert imgs.shape == (3, 3, 32, 32) and imgs.dtype == torch.uint8
    # the evaluation geometry: short side to floor(32 / 0.875) = 36, centre crop 32
    from PIL import Image
    from torchvision import transforms as T

    tv = T.Compose([T.Resize(36), T.CenterCrop(32), T.PILToTensor()])
    expect = tv(Image.fromarray(arrays["train/dog/c.png"]))
    assert torch.equal(imgs[0], expect) and torch.equal(imgs[2], expect)
    assert torch.equal(imgs[1], tv(Image.fromarray(arrays["train/cat/a.png"])))
    assert b.mean == pytest.approx((0.485, 0.456, 0.406))
    # default decode size for folders is 224
    assert load_dataset(f"folder:{tmp_path / 'pets'}").train.image_shape == (3, 224, 224)


def test_folder_resize_matches_torchvision(tmp_path: Path) -> None:
    arrays = write_folder(tmp_path, sizes={"a.png": (48, 40), "b.png": (37, 61)})
    b = load_dataset("imagenet", tmp_path, image_size=24, crop_pct=0.875)
    got = b.train.load(torch.tensor([0, 1]))  # [2, 3, 24, 24]
    for i, name in enumerate(["a.png", "b.png"]):
        im = Image.fromarray(arrays[f"train/cat/{name}"])
        # timm's eval geometry: short side to floor(24 / 0.875) = 27, centre crop 24
        ref = TF.center_crop(TF.resize(im, 27, interpolation=TF.InterpolationMode.BILINEAR), 24)
        assert torch.equal(got[i], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    assert b.train.image_shape == (3, 24, 24) and b.crop_pad == 3


def test_folder_fingerprint(tmp_path: Path) -> None:
    write_folder(tmp_path)
    fp = load_dataset("imagenet", tmp_path, image_size=32).train.fingerprint()
    assert fp == load_dataset("imagenet", tmp_path, image_size=32).train.fingerprint()
    assert fp != load_dataset("imagenet", tmp_path, image_size=16).train.fingerprint()
    with open(tmp_path / "train" / "dog" / "c.png", "ab") as f:
        f.write(b"\0")  # a changed file (size) changes the fingerprint
    assert fp != load_dataset("imagenet", tmp_path, image_size=32).train.fingerprint()


def test_folder_val_class_must_exist_in_train(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(LabelenhError, match="bird"):
        load_dataset("imagenet", tmp_path, image_size=32)


@pytest.mark.parametrize("layout", ["hwc", "nhw"])
def test_npz(tmp_path: Path, layout: str) -> None:
    shape = (5, 8, 6, 3) if layout == "hwc" else (5, 8, 6)
    x = rng_images(7, shape)
    arrays = {
        "x_train": x,
        "y_train": np.array([0, 1, 2, 1, 0]),
        "x_test": x[:2],
        "y_test": np.array([2, 2]),
    }
    if layout == "hwc":
        arrays["classes"] = np.array(["a", "b", "c"])
    np.savez(tmp_path / "d.npz", **arrays)
    b = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    c = 3 if layout == "hwc" else 1
    assert b.train.image_shape == (c, 8, 6) and b.name == f"npz:{tmp_path / 'd.npz'}"
    assert b.classes == (["a", "b", "c"] if layout == "hwc" else ["0", "1", "2"])
    if layout == "hwc":
        assert int(b.train.images[3, 2, 7, 5]) == int(x[3, 7, 5, 2])
    else:
        assert int(b.train.images[3, 0, 7, 5]) == int(x[3, 7, 5])
    # statistics come from the train images
    ref = torch.from_numpy(x).float().div(255).reshape(5, 8, 6, -1)
    assert b.mean == pytest.approx(tuple(ref.mean(dim=(0, 1, 2)).tolist()), abs=1e-4)
    assert b.std == pytest.approx(tuple(ref.std(dim=(0, 1, 2), correction=0).tolist()), abs=1e-4)
    # relative paths resolve under the data root too
    assert load_dataset("npz:d.npz", tmp_path).train.fingerprint() == b.train.fingerprint()


def test_cifar10_mini() -> None:
    b = load_dataset("cifar10-mini")
    assert (len(b.train), len(b.test), b.val) == (5085, 1017, None)
    assert b.train.image_shape == (3, 32, 32) and b.classes == CIFAR10_NAMES
    v = load_dataset("cifar10-mini", val_split=0.2, split_seed=3)
    assert (len(v.train), len(v.val), len(v.test)) == (4068, 1017, 1017)
    assert v.meta["num_samples"] == {"train": 4068, "val": 1017, "test": 1017}


def test_pinned_fingerprints() -> None:
    """The bundled subset and the synthetic generator must not drift: stores name them by hash."""
    mini, syn = load_dataset("cifar10-mini"), load_dataset("synthetic")
    assert mini.train.fingerprint() == (
        "f365c89e7ecd03c531b4faee2187bf65dc2e38aabe97ef9b89cd594edf5c2413"
    )
    assert syn.train.fingerprint() == (
        "d1c509b40ebe733643c4fd5417a462d5dd2bc29a5c283050603f1915da091484"
    )
    assert syn.test.fingerprint() == (
        "1843e5daa6feb8be03d961f580323dd31b8a64b68a3f23f6a07ccc0fcd2f2a52"
    )


def test_synthetic() -> None:
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert a.train.images.shape == (500, 3, 32, 32) and a.test.images.shape == (100, 3, 32, 32)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.fingerprint() == b.train.fingerprint()
    assert torch.bincount(a.train.labels).tolist() == [50] * 10
    assert torch.bincount(a.test.labels).tolist() == [10] * 10
    assert not torch.equal(a.train.labels[:10], a.train.labels[:10].sort().values)  # shuffled
    s = load_dataset("synthetic:4:20", image_size=16)
    assert s.num_classes == 4 and s.train.images.shape == (80, 3, 16, 16) and s.crop_pad == 2
    assert torch.bincount(s.test.labels).tolist() == [4] * 4
    # class colours differ: per-class mean colour is far apart from the next class's
    means = torch.stack(
        [a.train.images[a.train.labels == k].float().mean(dim=(0, 2, 3)) for k in range(10)]
    )
    assert torch.cdist(means, means).add(torch.eye(10) * 1e9).min() > 20
    for bad in ["synthetic:1", "synthetic:x", "synthetic:4:0", "synthetic:4:5:6"]:
        with pytest.raises(LabelenhError, match="synthetic"):
            load_dataset(bad)


def test_list_and_unknown() -> None:
    names = list_datasets()
    for kind in ["cifar10", "cifar100", "stl10", "fashionmnist", "imagenet", "cifar10-mini"]:
        assert kind in names
    assert "npz:<path>" in names and "folder:<path>" in names
    with pytest.raises(LabelenhError, match="unknown dataset"):
        load_dataset("mnistt")
    with pytest.raises(LabelenhError, match="takes no"):
        load_dataset("cifar10-mini:foo")


# ---------------------------------------------------------------- missing files name what to put where


@pytest.mark.parametrize(
    "spec,expect",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("stl10", "train_X.bin"),
        ("fashionmnist", "train-images-idx3-ubyte"),
        ("mnist", "MNIST/raw"),
        ("imagenet", "train/"),
    ],
)
def test_missing_data(tmp_path: Path, spec: str, expect: str) -> None:
    for root in (None, tmp_path, tmp_path / "nowhere"):
        with pytest.raises(LabelenhError) as e:
            load_dataset(spec, root)
        msg = str(e.value)
        assert expect in msg and "\n" not in msg
        if root is None:
            assert "data root" in msg


def test_missing_files_are_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(LabelenhError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(LabelenhError, match="test_y.bin"):
        load_dataset("stl10", tmp_path)
    with pytest.raises(LabelenhError, match="x_train"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    np.savez(tmp_path / "part.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(LabelenhError, match="y_train"):
        load_dataset(f"npz:{tmp_path / 'part.npz'}")
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    with pytest.raises(LabelenhError, match="val/"):
        load_dataset(f"folder:{tmp_path / 'f'}")


def test_corrupt_files(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(LabelenhError, match="train_X.bin"):
        load_dataset("stl10", tmp_path)
    write_fashionmnist(tmp_path, gz=False)
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(LabelenhError, match="t10k-labels"):
        load_dataset("fashionmnist", tmp_path)
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 4, 4), np.float32), y_train=[0, 1],
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=[0])  # fmt: skip
    with pytest.raises(LabelenhError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")


# ---------------------------------------------------------------- validation split


def indexed_npz(path: Path, n: int = 200) -> None:
    """Images whose first two pixels spell their row index, so split rows can be identified."""
    x = np.zeros((n, 4, 4), np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    np.savez(path, x_train=x, y_train=np.arange(n) % 5, x_test=x[:3], y_test=np.zeros(3, np.int64))


def row_ids(src: TensorImages) -> list[int]:
    img = src.images[:, 0, 0].long()
    return (img[:, 0] + 256 * img[:, 1]).tolist()


def test_val_split(tmp_path: Path) -> None:
    indexed_npz(tmp_path / "i.npz", 300)
    spec = f"npz:{tmp_path / 'i.npz'}"
    b = load_dataset(spec, val_split=0.25, split_seed=1)
    tr, va = row_ids(b.train), row_ids(b.val)
    assert len(va) == 75 and len(tr) == 225
    assert set(tr).isdisjoint(va) and sorted(tr + va) == list(range(300))
    assert tr == sorted(tr) and va == sorted(va)  # original order kept
    assert b.train.labels.tolist() == [i % 5 for i in tr]
    assert b.val.labels.tolist() == [i % 5 for i in va]
    assert row_ids(load_dataset(spec, val_split=0.25, split_seed=1).val) == va
    assert row_ids(load_dataset(spec, val_split=0.25, split_seed=2).val) != va
    assert b.meta["val_split"] == 0.25 and b.meta["split_seed"] == 1 and b.meta["full_train"] == 300
    assert load_dataset(spec, val_split=0).val is None
    for bad in (-0.1, 1.0, 1.5, float("nan"), 0.001):  # 0.001 of 300 rounds to no sample
        with pytest.raises(LabelenhError, match="val split"):
            load_dataset(spec, val_split=bad)


def test_noise_applied_before_split(tmp_path: Path) -> None:
    indexed_npz(tmp_path / "i.npz", 400)
    spec = f"npz:{tmp_path / 'i.npz'}"
    clean = load_dataset(spec, val_split=0.2, split_seed=0)
    noisy = load_dataset(spec, val_split=0.2, split_seed=0, noise="symmetric:0.5", noise_seed=4)
    full = load_dataset(spec, noise="symmetric:0.5", noise_seed=4)
    # the split is the same rows, and each row's noisy label is the one the full set got
    assert row_ids(noisy.val) == row_ids(clean.val)
    assert noisy.val.labels.tolist() == full.train.labels[row_ids(noisy.val)].tolist()
    assert noisy.train.labels.tolist() == full.train.labels[row_ids(noisy.train)].tolist()
    assert torch.equal(noisy.train.clean_labels, clean.train.labels)
    rate = (full.train.labels != full.train.clean_labels).double().mean().item()
    assert full.meta["noise"] == {"spec": "symmetric:0.5", "seed": 4, "rate": rate}
    assert 0.35 < rate < 0.65
    assert noisy.train.fingerprint() != clean.train.fingerprint()
    assert torch.equal(noisy.test.labels, clean.test.labels)  # test labels never noised
    assert json.loads(json.dumps(noisy.meta)) == noisy.meta
    with pytest.raises(LabelenhError, match="not both"):
        load_dataset(spec, noise="symmetric:0.1", noisy_labels="x.pt")


def test_noisy_label_file_through_load_dataset(tmp_path: Path) -> None:
    _, labels = write_cifar10(tmp_path)
    worse = (labels + np.array([0, 1] * 7 + [0])) % 10
    torch.save({"clean_label": labels, "worse_label": worse}, tmp_path / "CIFAR-10_human.pt")
    b = load_dataset("cifar10", tmp_path, noisy_labels=f"{tmp_path / 'CIFAR-10_human.pt'}:worst")
    assert b.train.labels.tolist() == worse.tolist()
    assert b.meta["noise"]["key"] == "worse_label"
    assert b.meta["noise"]["rate"] == pytest.approx(7 / 15)
    torch.save({"clean_label": labels[:5]}, tmp_path / "short.pt")
    with pytest.raises(LabelenhError, match="15 samples"):
        load_dataset("cifar10", tmp_path, noisy_labels=f"{tmp_path / 'short.pt'}:clean")


# ---------------------------------------------------------------- sources, fingerprints, normalize


def test_fingerprint_tracks_labels_and_pixels() -> None:
    x = torch.from_numpy(rng_images(0, (6, 3, 8, 8)))
    y = torch.arange(6) % 3
    fp = TensorImages(x, y).fingerprint()
    assert fp == TensorImages(x.clone(), y.clone()).fingerprint() and len(fp) == 64
    y2 = y.clone()
    y2[4] = 0
    assert TensorImages(x, y2).fingerprint() != fp
    x2 = x.clone()
    x2[5, 2, 7, 7] ^= 1
    assert TensorImages(x2, y).fingerprint() != fp
    assert TensorImages(x, y).to("cpu").fingerprint() == fp


def test_tensor_images_load_and_checks() -> None:
    x = torch.from_numpy(rng_images(1, (5, 3, 4, 4)))
    src = TensorImages(x, torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(src.load(torch.tensor([4, 0, 4])), x[[4, 0, 4]])
    assert torch.equal(src.load(np.array([1, 2])), x[[1, 2]])
    with pytest.raises(LabelenhError, match="out of range"):
        src.load(torch.tensor([5]))
    with pytest.raises(LabelenhError, match="uint8"):
        TensorImages(x.float(), torch.zeros(5, dtype=torch.long))
    with pytest.raises(LabelenhError, match="labels"):
        TensorImages(x, torch.zeros(4, dtype=torch.long))


def test_normalize_matches_torchvision() -> None:
    x = torch.from_numpy(rng_images(2, (2, 3, 5, 5)))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ref = TF.normalize(x.float() / 255, list(mean), list(std))
    torch.testing.assert_close(normalize(x, mean, std), ref)
    torch.testing.assert_close(normalize(x.float(), mean, std), ref)
    torch.testing.assert_close(normalize(x[0].float(), mean, std), ref[0])
    assert normalize(x.half(), mean, std).dtype == torch.float16
    with pytest.raises(LabelenhError, match="channels"):
        normalize(x, (0.5,) * 2, (0.5,) * 2)


def test_in_memory_resize() -> None:
    b = load_dataset("cifar10-mini", image_size=24)
    assert b.train.image_shape == (3, 24, 24) and b.crop_pad == 3
    x = torch.from_numpy(rng_images(3, (2, 3, 20, 30)))
    got = resize_images(x, 16)
    ref = TF.center_crop(TF.resize(x.float(), 16, antialias=True), 16).round().clamp(0, 255)
    assert got.shape == (2, 3, 16, 16)
    assert (got.float() - ref).abs().max() <= 1
