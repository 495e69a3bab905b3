"""Image folders (ImageNet, `folder:<path>`): a lazy source that decodes files on demand.

Layout as torchvision's ImageFolder: `<root>/<split>/<class>/<image>`, classes are the sorted
folder names of the train split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from labelenh.data.base import FINGERPRINT_VERSION, as_index, check_labels, resize_geometry
from labelenh.errors import LabelenhError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_split(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int], list[int]]:
    """(relative paths, labels, file sizes) of every image under `split_dir`, in sorted order."""
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    for cls in find_classes(split_dir):
        if cls not in index:
            raise LabelenhError(
                f"{split_dir}: class folder '{cls}' is not among the train split's classes; "
                "give every split the same class folders"
            )
        for p in sorted((split_dir / cls).rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                paths.append(p.relative_to(split_dir).as_posix())
                labels.append(index[cls])
                sizes.append(p.stat().st_size)
    return paths, labels, sizes


def decode(path: Path, size: int) -> np.ndarray:
    """RGB uint8 [3, size, size]: resize the short side to `size`, then centre-crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            nh, nw, top, left = resize_geometry(h, w, size)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)  # PIL antialiases when shrinking
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)  # [H, W, 3]
    except (OSError, ValueError) as e:
        raise LabelenhError(f"cannot decode image {path}: {e}") from e
    return arr.transpose(2, 0, 1)


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as e:
        raise LabelenhError(f"cannot read image {path}: {e}") from e
    return h, w


class FolderImages:
    """One split of an image folder, decoded lazily with PIL to uint8 [3, S, S].

    The fingerprint is sha256 over the image size, labels, relative paths and file sizes:
    hashing every byte of ImageNet (~150 GB) would take far too long, and a changed file
    almost always changes its size or name.
    """

    def __init__(
        self,
        root: Path,
        paths: list[str],
        labels: torch.Tensor | list[int],
        sizes: list[int],
        image_size: int,
        *,
        clean_labels: torch.Tensor | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.sizes = list(sizes)
        self.labels = check_labels(torch.as_tensor(labels, dtype=torch.int64), len(self.paths))
        self.clean_labels = (
            None if clean_labels is None else check_labels(clean_labels, len(self.paths))
        )
        self.image_size = int(image_size)
        self.image_shape: tuple[int, int, int] = (3, self.image_size, self.image_size)
        self._fingerprint: str | None = None
        self._sizes: dict[int, tuple[int, int]] = {}  # original (H, W) of the files read so far

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FolderImages(root={str(self.root)!r}, n={len(self)}, size={self.image_size})"

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        idx = as_index(indices, len(self)).tolist()
        out = np.empty((len(idx), *self.image_shape), dtype=np.uint8)  # [B, 3, S, S]
        for j, i in enumerate(idx):
            out[j] = decode(self.root / self.paths[i], self.image_size)
        return torch.from_numpy(out)

    def original_sizes(self, indices: torch.Tensor | np.ndarray) -> np.ndarray:
        """int64 [B, 2]: (height, width) of the files themselves (their headers, read once each),
        for augmentations that crop the original image (RandomResizedCrop)."""
        idx = as_index(torch.as_tensor(np.asarray(indices)), len(self)).tolist()
        out = np.empty((len(idx), 2), dtype=np.int64)
        for j, i in enumerate(idx):
            if i not in self._sizes:
                self._sizes[i] = _header_size(self.root / self.paths[i])
            out[j] = self._sizes[i]
        return out

    def load_original(self, index: int) -> torch.Tensor:
        """uint8 [3, H, W]: one file decoded at its own size (RGB)."""
        from PIL import Image

        path = self.root / self.paths[int(index)]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
        except (OSError, ValueError) as e:
            raise LabelenhError(f"cannot decode image {path}: {e}") from e
        self._sizes[int(index)] = (arr.shape[0], arr.shape[1])
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(FINGERPRINT_VERSION)
            h.update(repr(("folder", len(self), self.image_shape)).encode())
            h.update(self.labels.numpy().astype("<i8").tobytes())
            for p, s in zip(self.paths, self.sizes, strict=True):
                h.update(f"{p}\0{s}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices: torch.Tensor) -> FolderImages:
        idx = as_index(indices, len(self))
        il = idx.tolist()
        return FolderImages(
            self.root,
            [self.paths[i] for i in il],
            self.labels[idx],
            [self.sizes[i] for i in il],
            self.image_size,
            clean_labels=None if self.clean_labels is None else self.clean_labels[idx],
        )

    def with_labels(self, labels: torch.Tensor, clean_labels: torch.Tensor | None) -> FolderImages:
        return FolderImages(
            self.root, self.paths, labels, self.sizes, self.image_size, clean_labels=clean_labels
        )


def read_folder(
    kind: str, root: Path, image_size: int, desc: str
) -> tuple[FolderImages, FolderImages, list[str]]:
    """(train, test) sources and class names of an ImageFolder with `train/` and `val/`."""
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise LabelenhError(f"{kind}: {root} lacks {'/, '.join(missing)}/: put {desc} there")
    classes = find_classes(root / "train")
    if not classes:
        raise LabelenhError(f"{kind}: {root / 'train'} has no class folders: put {desc} there")
    splits = []
    for s in ("train", "val"):
        paths, labels, sizes = scan_split(root / s, classes)
        if not paths:
            raise LabelenhError(f"{kind}: no images ({', '.join(IMG_EXTENSIONS)}) under {root / s}")
        splits.append(FolderImages(root / s, paths, labels, sizes, image_size))
    return splits[0], splits[1], classes
