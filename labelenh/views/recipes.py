"""`Recipes`: a batch of view recipes as plain numbers, and their compact HDF5 record form.

A recipe says exactly how one (sample, view) image was made, so applying it again gives the same
tensor bit for bit. Source 0 of every recipe is the sample itself (the store keys rows by sample
index); sources 1.. are partner samples named by absolute dataset index.

Compact record (`to_struct`, numpy structured dtype, packed) — only what the op needs. The sample
index is not stored: it is the row the record sits in.

| op        | fields                                                            | bytes |
|-----------|-------------------------------------------------------------------|-------|
| none      | flags u1                                                          | 1     |
| crop-flip | crop i1[1,2], flags u1                                            | 3     |
| mixup     | partners u4[1], lam f4, crop i1[2,2], flags u1                    | 13    |
| cutmix    | partners u4[1], box u2[4], crop i1[2,2], flags u1                 | 17    |
| ricap     | partners u4[3], wh u2[2], offsets u2[4,2], crop i1[4,2], flags u1 | 41    |

flags: bit k (k < 4) = source k is flipped; bit 7 = the mix was applied (a mix op drawn with
probability `mix_prob`; when not applied, partners repeat the sample and the view equals the
base crop/flip). crop = (dy, dx) per source. box = (y0, y1, x0, x1), half-open. wh = (w, h),
the RICAP boundary; offsets = (oy, ox) per patch. The cutmix lambda (1 - box area / (H*W)) and
the RICAP weights (patch areas / (H*W)) are recomputed from the integers, identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.views.spec import ViewSpec

_MIXED_BIT = 7
TENSOR_FIELDS = ("sample", "view", "mixed", "crop", "flip", "partners", "lam", "box", "ricap_wh",
                 "ricap_off")


def recipe_dtype(spec: ViewSpec) -> np.dtype:
    """Packed numpy structured dtype of one stored recipe for `spec` (sizes in the module doc)."""
    s = spec.num_sources
    parts: list[tuple] = []
    if s > 1:
        parts.append(("partners", "<u4", (s - 1,)))
    if spec.op == "mixup":
        parts.append(("lam", "<f4"))
    elif spec.op == "cutmix":
        parts.append(("box", "<u2", (4,)))
    elif spec.op == "ricap":
        parts += [("wh", "<u2", (2,)), ("offsets", "<u2", (4, 2))]
    if spec.op != "none":
        parts.append(("crop", "i1", (s, 2)))
    parts.append(("flags", "u1"))
    return np.dtype(parts)


def cutmix_lam(box: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """float32 [B]: 1 - box area / (H*W) for int boxes [B, 4] = (y0, y1, x0, x1)."""
    h, w = image_size
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    return (1.0 - area.to(torch.float64) / float(h * w)).to(torch.float32)


def ricap_areas(wh: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """int64 [B, 4]: patch areas for boundaries [B, 2] = (w, h); patches TL, TR, BL, BR."""
    H, W = image_size
    w, h = wh[:, 0], wh[:, 1]
    return torch.stack([w * h, (W - w) * h, w * (H - h), (W - w) * (H - h)], dim=1)


@dataclass
class Recipes:
    """A batch of view recipes: torch tensors sharing one leading dim [B].

    spec        the ViewSpec they were drawn for; S = spec.num_sources
    image_size  (H, W) of the images they apply to
    sample      int64 [B]       absolute index of the sample = source 0
    view        int64 [B]       view index (-1 when unknown, e.g. rebuilt without view ids)
    mixed       bool  [B]       the mix op was applied (False for none / crop-flip)
    crop        int64 [B, S, 2] base crop offsets (dy, dx) in [-pad, pad] per source
    flip        bool  [B, S]    base horizontal flip per source
    partners    int64 [B, S-1]  absolute indices of sources 1..S-1
    lam         float32 [B]     weight on the sample's own label (mixup/cutmix: lambda;
                                ricap: patch-0 area fraction; otherwise 1)
    box         int64 [B, 4]    cutmix box (y0, y1, x0, x1), half-open; zeros for other ops
    ricap_wh    int64 [B, 2]    RICAP boundary (w, h); zeros for other ops
    ricap_off   int64 [B, 4, 2] RICAP per-patch offsets (oy, ox); zeros for other ops
    """

    spec: ViewSpec
    image_size: tuple[int, int]
    sample: torch.Tensor
    view: torch.Tensor
    mixed: torch.Tensor
    crop: torch.Tensor
    flip: torch.Tensor
    partners: torch.Tensor
    lam: torch.Tensor
    box: torch.Tensor
    ricap_wh: torch.Tensor
    ricap_off: torch.Tensor

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    def __getitem__(self, idx) -> Recipes:
        """Select rows by int, slice, bool mask or index tensor; an int keeps the leading dim."""
        if isinstance(idx, (int, np.integer)):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"recipe index {idx} out of range for {n} recipes")
            idx = slice(int(idx) % n, int(idx) % n + 1)
        elif isinstance(idx, (list, np.ndarray)):
            idx = torch.as_tensor(np.asarray(idx))
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.sample.device)
        return self._map(lambda t: t[idx])

    @property
    def device(self) -> torch.device:
        return self.sample.device

    def to(self, device: torch.device | str) -> Recipes:
        return self._map(lambda t: t.to(device))

    def _map(self, fn) -> Recipes:
        return replace(self, **{f: fn(getattr(self, f)) for f in TENSOR_FIELDS})

    def sources(self) -> torch.Tensor:
        """int64 [B, S]: absolute sample index of every source image; column 0 = the sample."""
        return torch.cat([self.sample[:, None], self.partners], dim=1)

    def source_weights(self) -> torch.Tensor:
        """float32 [B, S]: label weight of each source (rows sum to 1 up to float rounding)."""
        op = self.spec.op
        if op in ("mixup", "cutmix"):
            return torch.stack([self.lam, 1.0 - self.lam], dim=1)
        if op == "ricap":
            H, W = self.image_size
            return ricap_areas(self.ricap_wh, self.image_size).to(torch.float32) / float(H * W)
        return torch.ones(len(self), 1, device=self.device)

    def equal(self, other: Recipes) -> bool:
        """Exact equality of spec, image size and every tensor."""
        return (
            self.spec == other.spec
            and tuple(self.image_size) == tuple(other.image_size)
            and all(torch.equal(getattr(self, f), getattr(other, f)) for f in TENSOR_FIELDS)
        )

    @classmethod
    def cat(cls, parts: Sequence[Recipes]) -> Recipes:
        """Concatenate recipe batches drawn for the same spec and image size."""
        if not parts:
            raise LabelenhError("Recipes.cat needs at least one batch")
        first = parts[0]
        for p in parts[1:]:
            if p.spec != first.spec or tuple(p.image_size) != tuple(first.image_size):
                raise LabelenhError("cannot concatenate recipes of different specs or image sizes")
        return replace(
            first, **{f: torch.cat([getattr(p, f) for p in parts]) for f in TENSOR_FIELDS}
        )

    # ---- compact record form -------------------------------------------------------------

    def to_struct(self, spec: ViewSpec | None = None) -> np.ndarray:
        """Structured numpy array [B] of `recipe_dtype(spec)` (see the module doc for sizes)."""
        spec = self.spec if spec is None else spec
        if spec != self.spec:
            raise LabelenhError(f"recipes were drawn for {self.spec.describe()}, not {spec.describe()}")
        r = self.to("cpu")
        out = np.zeros(len(r), dtype=recipe_dtype(spec))
        flip_bits = (r.flip.to(torch.int64) << torch.arange(spec.num_sources)).sum(dim=1)
        out["flags"] = (flip_bits | (r.mixed.to(torch.int64) << _MIXED_BIT)).numpy()
        if spec.num_sources > 1:
            out["partners"] = r.partners.numpy()
        if spec.op != "none":
            out["crop"] = r.crop.numpy()
        if spec.op == "mixup":
            out["lam"] = r.lam.numpy()
        elif spec.op == "cutmix":
            out["box"] = r.box.numpy()
        elif spec.op == "ricap":
            out["wh"] = r.ricap_wh.numpy()
            out["offsets"] = r.ricap_off.numpy()
        return out

    @classmethod
    def from_struct(
        cls,
        arr: np.ndarray,
        spec: ViewSpec,
        image_size: tuple[int, int],
        *,
        samples: torch.Tensor | np.ndarray | None = None,
        views: torch.Tensor | np.ndarray | None = None,
        num_samples: int | None = None,
    ) -> Recipes:
        """Rebuild recipes from records written by `to_struct`.

        `arr` of shape [N, V] (the whole store table) needs no ids: row = sample, column = view.
        Any other shape is flattened and needs `samples` (the row each record was read from, as
        the sample index is implicit in the row); `views` is optional (-1 when absent).
        `num_samples`, when given, bounds the partner indices.
        """
        arr = np.asarray(arr)
        want = recipe_dtype(spec)
        if arr.dtype.names != want.names or any(
            arr.dtype[n].shape != want[n].shape or arr.dtype[n].base.kind != want[n].base.kind
            for n in want.names
        ):
            raise LabelenhError(
                f"recipe records have dtype {arr.dtype}, expected {want} for {spec.describe()}"
            )
        if samples is None:
            if arr.ndim != 2:
                raise LabelenhError("pass samples= for recipe records that are not an [N, V] table")
            n, v = arr.shape
            samples = np.repeat(np.arange(n), v)
            views = np.tile(np.arange(v), n) if views is None else views
        flat = arr.reshape(-1)
        b = flat.shape[0]
        sample = torch.as_tensor(np.asarray(samples), dtype=torch.int64).reshape(-1)
        view = (torch.full((b,), -1, dtype=torch.int64) if views is None
                else torch.as_tensor(np.asarray(views), dtype=torch.int64).reshape(-1))
        if sample.shape[0] != b or view.shape[0] != b:
            raise LabelenhError(f"{b} recipe records but {sample.shape[0]} samples / {view.shape[0]} views")
        s = spec.num_sources
        flags = torch.as_tensor(flat["flags"].astype(np.int64))
        flip = ((flags[:, None] >> torch.arange(s)) & 1).bool()
        mixed = ((flags >> _MIXED_BIT) & 1).bool()
        partners = (torch.as_tensor(flat["partners"].astype(np.int64)) if s > 1
                    else torch.zeros(b, 0, dtype=torch.int64))
        if num_samples is not None and partners.numel() and int(partners.max()) >= num_samples:
            raise LabelenhError(f"recipe partner index {int(partners.max())} >= {num_samples} samples")
        crop = (torch.as_tensor(flat["crop"].astype(np.int64)) if spec.op != "none"
                else torch.zeros(b, 1, 2, dtype=torch.int64))
        box = torch.zeros(b, 4, dtype=torch.int64)
        wh = torch.zeros(b, 2, dtype=torch.int64)
        off = torch.zeros(b, 4, 2, dtype=torch.int64)
        lam = torch.ones(b, dtype=torch.float32)
        if spec.op == "mixup":
            lam = torch.as_tensor(flat["lam"].astype(np.float32))
        elif spec.op == "cutmix":
            box = torch.as_tensor(flat["box"].astype(np.int64))
            lam = cutmix_lam(box, image_size)
        elif spec.op == "ricap":
            wh = torch.as_tensor(flat["wh"].astype(np.int64))
            off = torch.as_tensor(flat["offsets"].astype(np.int64))
            H, W = image_size
            lam = ricap_areas(wh, image_size)[:, 0].to(torch.float32) / float(H * W)
        _check_geometry(spec, image_size, crop, box, wh, off, lam)
        return cls(spec=spec, image_size=(int(image_size[0]), int(image_size[1])), sample=sample,
                   view=view, mixed=mixed, crop=crop, flip=flip, partners=partners, lam=lam,
                   box=box, ricap_wh=wh, ricap_off=off)


def _check_geometry(spec: ViewSpec, image_size, crop, box, wh, off, lam) -> None:
    """Refuse records that cannot come from `spec` on images of `image_size` (a damaged file,
    or records read with the wrong spec / image size)."""
    H, W = (int(v) for v in image_size)
    bad = ""
    if crop.numel() and int(crop.abs().max()) > spec.pad:
        bad = f"crop offset {int(crop.abs().max())} exceeds pad {spec.pad}"
    elif spec.op == "mixup" and lam.numel() and not bool(((lam >= 0) & (lam <= 1)).all()):
        bad = "mixup lambda outside [0, 1]"
    elif spec.op == "cutmix" and box.numel() and not bool(
        ((box[:, 0] <= box[:, 1]) & (box[:, 1] <= H) & (box[:, 2] <= box[:, 3]) & (box[:, 3] <= W)).all()
    ):
        bad = f"cutmix box outside the {H}x{W} image"
    elif spec.op == "ricap" and wh.numel():
        w, h = wh[:, 0:1], wh[:, 1:2]
        wk = torch.cat([w, W - w, w, W - w], 1)
        hk = torch.cat([h, h, H - h, H - h], 1)
        if not bool(((w <= W) & (h <= H)).all() and ((off[:, :, 0] <= H - hk) & (off[:, :, 1] <= W - wk)).all()):
            bad = f"RICAP patch outside the {H}x{W} image"
    if bad:
        raise LabelenhError(f"recipe records do not fit {spec.describe()} on {H}x{W} images ({bad}): "
                            "the file is damaged or read with the wrong view spec")
