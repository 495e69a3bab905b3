"""`rrc`: RandomResizedCrop + horizontal flip, with torchvision's semantics (the ImageNet recipe).

Per source k, `get_params` as torchvision's `RandomResizedCrop.get_params` on the source image
(H x W, the original image, not a pre-cropped one): up to 10 tries of an area fraction
s ~ U(scale) (float32, stream 128 + 32k + t) and a log aspect ratio r ~ U(log ratio) (float32,
stream 128 + 32k + 10 + t); w = round(sqrt(H W s e^r)), h = round(sqrt(H W s / e^r)); the first
try with 0 < w <= W and 0 < h <= H wins, its top-left corner uniform over the valid positions
(streams 128 + 32k + 20, + 21); with no valid try, torchvision's centre-crop fallback. The crop is
resized to the output size (H x W) with antialiased bilinear interpolation (torchvision's
`resized_crop(..., antialias=True)`), then flipped with probability 0.5 (stream 128 + 32k + 22)
when `flip`. As the base of mixup/cutmix/ricap/cutout, every source gets its own crop.

Record: crop_box u2[S, 4] = (top, left, height, width) in source pixels + one flag bit per
source: 9 bytes for a single view. Pixels, not FKD's normalised floats: exact, and smaller.

Rendering runs batched on the device: per (view, source) separable filter taps (PIL's / torch's
antialias weights), gathered rows then columns, accumulated one materialised multiply and add
per tap in a fixed order, so every pixel depends on its own recipe only; then rounded to uint8
like torchvision's uint8 output. Against torchvision's `resized_crop` on uint8 the result
differs by at most 1 grey level (its uint8 kernel uses fixed-point weights).
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.views.ops.base import Draw, Field, Op, Param, register_op

TRIES = 10  # torchvision's
_S_RRC = 128  # + 32 * source + {0..9: area, 10..19: log ratio, 20: top, 21: left, 22: flip}


def _scale_ok(v: list[float]) -> str:
    return "" if 0.0 < v[0] and v[1] <= 1.0 else "must lie in (0, 1]"


def _ratio_ok(v: list[float]) -> str:
    return "" if v[0] > 0.0 else "must be positive"


def log_ratio_bounds(ratio: tuple[float, float]) -> tuple[float, float]:
    """log(ratio) in float32, as torchvision computes it (torch.log of a float32 tensor)."""
    lr = torch.log(torch.tensor([float(ratio[0]), float(ratio[1])]))
    return float(lr[0]), float(lr[1])


def get_params(height, width, scale: tuple[float, float], ratio: tuple[float, float],
               area: np.ndarray, log_ratio: np.ndarray, top_u: np.ndarray, left_u: np.ndarray
               ) -> np.ndarray:
    """int64 [B, 4] boxes (top, left, h, w), torchvision's `RandomResizedCrop.get_params` given
    its draws: `area` [B, 10] the values of `uniform_(*scale)`, `log_ratio` [B, 10] those of
    `uniform_(*log(ratio))` (float32 both), `top_u`, `left_u` [B] uniforms in [0, 1) that pick
    `randint(0, H - h + 1)` and `randint(0, W - w + 1)` as floor(u * n). `height`, `width`: the
    image's size, one for all or int [B] per element."""
    b = area.shape[0]
    height = np.broadcast_to(np.asarray(height, dtype=np.int64), (b,))
    width = np.broadcast_to(np.asarray(width, dtype=np.int64), (b,))
    total = (height * width).astype(np.float64)
    h = np.zeros(b, dtype=np.int64)
    w = np.zeros(b, dtype=np.int64)
    found = np.zeros(b, dtype=bool)
    for t in range(TRIES):
        target = total * area[:, t].astype(np.float32).astype(np.float64)
        # torch.exp of the float32 draw, as torchvision: float32 exp, then used as a double
        aspect = torch.exp(torch.from_numpy(np.ascontiguousarray(log_ratio[:, t], dtype=np.float32))).double().numpy()
        ww = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # Python round(): half to even
        hh = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        ok = ~found & (ww > 0) & (ww <= width) & (hh > 0) & (hh <= height)
        w = np.where(ok, ww, w)
        h = np.where(ok, hh, h)
        found |= ok
    in_ratio = width / height  # the fallback: a centre crop of the allowed ratio
    lo_r, hi_r = min(ratio), max(ratio)
    narrow, wide = in_ratio < lo_r, in_ratio > hi_r
    fw = np.where(wide, np.rint(height * hi_r).astype(np.int64), width)
    fh = np.where(narrow, np.rint(width / lo_r).astype(np.int64), height)
    w = np.where(found, w, fw)
    h = np.where(found, h, fh)
    top = np.where(found, np.floor(top_u * (height - h + 1)).astype(np.int64), (height - fh) // 2)
    left = np.where(found, np.floor(left_u * (width - w + 1)).astype(np.int64), (width - fw) // 2)
    return np.stack([top, left, h, w], axis=1)


def _taps(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased bilinear taps for resizing [start, start + length) to `out` pixels, per row
    of `start`/`length` [M]: (indices int64 [M, out, K], weights float32 [M, out, K]), PIL's and
    torch's `_upsample_bilinear2d_aa` weights (triangle filter widened by the scale when
    shrinking, clipped to the crop, normalised). Unused taps have weight 0."""
    length = length.astype(np.float64)
    scale = length / out  # [M]
    support = np.where(scale >= 1.0, scale, 1.0)
    inv = np.where(scale >= 1.0, 1.0 / scale, 1.0)
    centre = scale[:, None] * (np.arange(out) + 0.5)  # [M, out], crop coordinates
    lo = np.maximum(np.trunc(centre - support[:, None] + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centre + support[:, None] + 0.5), length[:, None]).astype(np.int64)
    k = int((hi - lo).max())
    j = np.arange(k)
    wgt = np.clip(1.0 - np.abs((j + lo[..., None] - centre[..., None] + 0.5) * inv[:, None, None]), 0.0, None)
    wgt = np.where(j < (hi - lo)[..., None], wgt, 0.0)
    wgt = wgt / wgt.sum(-1, keepdims=True)
    idx = start[:, None, None] + np.minimum(lo[..., None] + j, hi[..., None] - 1)
    return idx, wgt.astype(np.float32)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 [M, C, Hi, Wi] images, int [M, 4] boxes (top, left, h, w) -> uint8 [M, C, H, W]:
    each box resized to `size` = (H, W) (default: the images' size; antialiased bilinear),
    rounded half to even."""
    m, c, Hi, Wi = images.shape
    H, W = size if size is not None else (Hi, Wi)
    dev = images.device
    bx = boxes.cpu().numpy().astype(np.int64)
    iy, wy = _taps(bx[:, 0], bx[:, 2], H)  # [M, H, Ky]
    ix, wx = _taps(bx[:, 1], bx[:, 3], W)  # [M, W, Kx]
    iy_t, wy_t = torch.from_numpy(iy).to(dev), torch.from_numpy(wy).to(dev)
    ix_t, wx_t = torch.from_numpy(ix).to(dev), torch.from_numpy(wx).to(dev)
    rows = None  # [M, C, H, W]: the vertical pass over whole source rows
    for t in range(iy.shape[2]):
        g = images.gather(2, iy_t[:, None, :, t, None].expand(m, c, H, Wi)).to(torch.float32)
        term = g.mul_(wy_t[:, None, :, t, None])
        rows = term if rows is None else rows.add_(term)
    out = None
    for t in range(ix.shape[2]):
        term = rows.gather(3, ix_t[:, None, None, :, t].expand(m, c, H, W)).mul_(wx_t[:, None, None, :, t])
        out = term if out is None else out.add_(term)
    return out.round_().clamp_(0, 255).to(torch.uint8)


@register_op
class RandomResizedCrop(Op):
    name = "rrc"
    summary = "RandomResizedCrop + flip of the original image (ImageNet; torchvision's semantics)"
    params = (
        Param("scale", [0.08, 1.0], "area fraction range LO,HI of the crop, in (0, 1]", kind="pair",
              check=_scale_ok, flag="--rrc-scale"),
        Param("ratio", [3 / 4, 4 / 3], "aspect ratio (w/h) range LO,HI of the crop", kind="pair",
              check=_ratio_ok, flag="--rrc-ratio"),
        Param("flip", True, "flip horizontally with probability 0.5", kind="bool", flag="--flip"),
    )
    is_base = True
    streams = range(_S_RRC, _S_RRC + 32 * 4)
    order = 20

    def fields(self, spec, num_sources):
        return (Field("crop_box", shape=(4,), per_source=True, record="<u2"),
                Field("flip", "bool", per_source=True, bit=0, default=False))

    def sample(self, spec, d: Draw):
        b, s = d.size, d.num_sources
        (s0, s1), lr = spec.scale, log_ratio_bounds(spec.ratio)
        boxes = np.zeros((b, s, 4), dtype=np.int64)
        flip = np.zeros((b, s), dtype=bool)
        for k in range(s):
            base = _S_RRC + 32 * k
            # the float32 values torch's uniform_(lo, hi) would return for these uniforms
            area = np.stack([s0 + (s1 - s0) * d.rng.uniform(base + t) for t in range(TRIES)], 1).astype(np.float32)
            logr = np.stack([lr[0] + (lr[1] - lr[0]) * d.rng.uniform(base + 10 + t) for t in range(TRIES)],
                            1).astype(np.float32)
            ids = d.sample if k == 0 else d.partners[:, k - 1]
            hw = d.source_sizes(ids)  # the original image's size: crops are drawn on it
            boxes[:, k] = get_params(hw[:, 0], hw[:, 1], spec.scale, spec.ratio, area, logr,
                                     d.rng.uniform(base + 20), d.rng.uniform(base + 21))
            if spec.flip:
                flip[:, k] = d.rng.uniform(base + 22) < 0.5
        return {"crop_box": boxes, "flip": flip}

    def check_records(self, spec, data, image_size):
        # boxes lie in the original images, which may be larger than the output (image folders):
        # only what holds for any image is checked here, the bounds when rendering
        bx = data["crop_box"]
        ok = not bx.numel() or bool(((bx[..., 2] >= 1) & (bx[..., 3] >= 1)).all())
        return "" if ok else "empty crop box"

    def render_base(self, spec, sources, r):
        B, S, C, H, W = sources.shape
        bx = r.crop_box.reshape(B * S, 4)
        if bool(((bx[:, 0] + bx[:, 2] > H) | (bx[:, 1] + bx[:, 3] > W)).any()):
            raise LabelenhError(f"rrc crop boxes reach beyond the {H}x{W} images: they were drawn on larger "
                                "originals (an image folder's files); render them from that dataset")
        out = resized_crop(sources.reshape(B * S, C, H, W), bx).view(B, S, C, H, W)
        return _flip(out, r.flip.to(sources.device))

    def render_from_source(self, spec, source, r):
        """Image folders: every crop is cut from the decoded file at its own size (each file
        decoded once per call), then resized to the image size, as torchvision does: with PIL
        (its RandomResizedCrop on PIL images, exactly) when the source offers `resized_crops`."""
        crops = getattr(source, "resized_crops", None)
        load = getattr(source, "load_original", None)
        if crops is None and load is None:
            return None
        B, S = r.crop_box.shape[:2]
        C, H, W = source.image_shape
        ids = r.sources().reshape(-1).tolist()
        boxes = r.crop_box.reshape(B * S, 4)
        if crops is not None:
            out = torch.empty((B * S, C, H, W), dtype=torch.uint8)
            rows: dict[int, list[int]] = {}
            for j, i in enumerate(ids):
                rows.setdefault(i, []).append(j)
            bx, fl = boxes.cpu().numpy(), r.flip.reshape(B * S).cpu().numpy()
            for i, js in rows.items():  # every file once, all its boxes from that decode
                out[js] = crops(i, bx[js], (H, W), fl[js])
            return out.view(B, S, C, H, W)
        files: dict[int, torch.Tensor] = {}
        out = torch.empty((B * S, C, H, W), dtype=torch.uint8)
        for j, i in enumerate(ids):
            if i not in files:
                files[i] = load(i)
            img = files[i]
            top, left, h, w = (int(v) for v in boxes[j])
            if top + h > img.shape[1] or left + w > img.shape[2]:
                raise LabelenhError(f"rrc crop box {(top, left, h, w)} reaches beyond image {i} "
                                    f"({img.shape[1]}x{img.shape[2]}): the dataset changed since the recipes were drawn")
            out[j] = resized_crop(img[None], boxes[j : j + 1], (H, W))[0]
        return _flip(out.view(B, S, C, H, W), r.flip)


def _flip(views: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, C, H, W] with the sources where flip [B, S] mirrored (a select: exact)."""
    B, S = flip.shape
    return torch.where(flip.view(B, S, 1, 1, 1), views.flip(-1), views)
