"""Image folders (ImageNet, `folder:<path>`): a lazy source that decodes files on demand.

Layout as torchvision's ImageFolder: `<root>/<split>/<class>/<image>`, classes are the sorted
folder names of the train split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from labelenh.data.base import (
    FINGERPRINT_VERSION,
    LEGACY_CROP_PCT,
    as_index,
    check_labels,
    resize_geometry,
)
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


def open_rgb(path: Path):
    """The file decoded at full resolution as an RGB PIL image (greyscale, CMYK, palette and
    alpha images converted); one line naming the file when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads the pixels: the file can close
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LabelenhError(f"cannot decode image {path}: {e}; fix or remove the file") from e


def fit(im, size: int, crop_pct: float = 1.0) -> np.ndarray:
    """RGB uint8 [3, size, size] of an RGB PIL image: resize the short side to
    floor(size / crop_pct), then centre-crop (PIL antialiases when shrinking)."""
    from PIL import Image

    w, h = im.size
    nh, nw, top, left = resize_geometry(h, w, size, crop_pct)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)  # [H, W, 3]
    return arr.transpose(2, 0, 1)


def resized_crops(im, boxes: np.ndarray, size: tuple[int, int], what: str,
                  flips: np.ndarray | None = None) -> np.ndarray:
    """uint8 [K, 3, H, W]: each box (top, left, h, w) of the RGB PIL image `im` cut out and
    resized to `size` = (H, W) with PIL's antialiased bilinear filter, then mirrored where
    `flips` [K] (bool) is set: torchvision's RandomResizedCrop + flip on PIL images (crop, then
    resize), in PIL's C code, a few ms per view where a tensor resize of the full-resolution
    file took tens."""
    from PIL import Image

    H, W = size
    flips = np.zeros(len(boxes), dtype=bool) if flips is None else np.asarray(flips, dtype=bool)
    out = np.empty((len(boxes), 3, H, W), dtype=np.uint8)
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64).tolist()):
        if top < 0 or left < 0 or top + h > im.height or left + w > im.width:
            raise LabelenhError(f"rrc crop box {(top, left, h, w)} reaches beyond {what} ({im.height}x{im.width}): "
                                "the dataset changed since the recipes were drawn")
        crop = im.crop((left, top, left + w, top + h))
        if (h, w) != (H, W):
            crop = crop.resize((W, H), Image.BILINEAR)
        if flips[k]:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[k] = np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)
    return out


def decode(path: Path, size: int, crop_pct: float = 1.0) -> np.ndarray:
    """RGB uint8 [3, size, size]: the file resized (short side to floor(size / crop_pct)) and
    centre-cropped."""
    return fit(open_rgb(path), size, crop_pct)


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
    """One split of an image folder, decoded lazily with PIL to uint8 [3, S, S]: the standard
    evaluation geometry, the short side resized to floor(S / crop_pct) then a centre crop
    (crop_pct 0.875: 256 -> 224). Training views crop the original files (`rrc`).

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
        crop_pct: float = LEGACY_CROP_PCT,
    ) -> None:
        if not 0.0 < crop_pct <= 1.0:
            raise LabelenhError(f"crop_pct must lie in (0, 1], got {crop_pct!r}")
        self.crop_pct = float(crop_pct)
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
            out[j] = decode(self.root / self.paths[i], self.image_size, self.crop_pct)
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
        im = open_rgb(self.root / self.paths[int(index)])
        arr = np.asarray(im, dtype=np.uint8)  # [H, W, 3]
        self._sizes[int(index)] = (arr.shape[0], arr.shape[1])
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def resized_crops(self, index: int, boxes: np.ndarray, size: tuple[int, int],
                      flips: np.ndarray | None = None) -> torch.Tensor:
        """uint8 [K, 3, H, W]: boxes [K, 4] (top, left, h, w) of file `index` at its own size,
        each resized to `size` and mirrored where `flips` [K] (one decode for all of them)."""
        path = self.root / self.paths[int(index)]
        return torch.from_numpy(resized_crops(open_rgb(path), boxes, size, f"image {path}", flips))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(FINGERPRINT_VERSION)
            # the crop fraction decides the clean images: stores made with another differ. The
            # geometry of stores and runs made before it was an option hashes as it always did.
            shape = (("folder", len(self), self.image_shape) if self.crop_pct == LEGACY_CROP_PCT
                     else ("folder", len(self), self.image_shape, self.crop_pct))
            h.update(repr(shape).encode())
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
            crop_pct=self.crop_pct,
        )

    def with_crop_pct(self, crop_pct: float) -> FolderImages:
        """The same files and labels with another evaluation crop fraction."""
        return FolderImages(self.root, self.paths, self.labels, self.sizes, self.image_size,
                            clean_labels=self.clean_labels, crop_pct=crop_pct)

    def with_labels(self, labels: torch.Tensor, clean_labels: torch.Tensor | None) -> FolderImages:
        return FolderImages(
            self.root, self.paths, labels, self.sizes, self.image_size, clean_labels=clean_labels,
            crop_pct=self.crop_pct,
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
