"""`apply_views`: the one function that turns source images + recipes into view images and
mixed label weights. Export and student training both call it; nothing else mixes.

Batched on the tensors' device with index arithmetic, no Python loop over samples. Every output
pixel is one element of one source image (or a zero from the crop padding), found by composing
the op's layout (cutmix box, RICAP quadrant + offset) with the base crop/flip of that source, and
read with a single gather. Mixup blends two such images with separate elementwise ops
(`a * lam`, `b * (1 - lam)`, then `+`), each materialised: every output element then depends on
its own inputs only, so results are bit-identical however the recipes are batched or ordered.
"""

from __future__ import annotations

from typing import Protocol

import torch

from labelenh.errors import LabelenhError
from labelenh.views.recipes import Recipes


class _Source(Protocol):
    labels: torch.Tensor

    def load(self, indices: torch.Tensor) -> torch.Tensor: ...


def _per_source(t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """t [B, S] indexed by source ids k [B, ...] -> t[b, k[b, ...]], shaped like k."""
    return torch.gather(t, 1, k.reshape(k.shape[0], -1)).view(k.shape)


def _base_coords(r: Recipes, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor, hw):
    """Map view-frame pixel (u, v) of source k (after its crop/flip) to the raw source image.

    k is [B, H, W] or [B, 1, 1]; u, v broadcast against it. Returns (row, col, valid), each
    broadcastable to [B, H, W]; invalid pixels fall in the crop padding and read as zero.
    """
    H, W = hw
    dy = _per_source(r.crop[:, :, 0], k)
    dx = _per_source(r.crop[:, :, 1], k)
    fl = _per_source(r.flip, k)
    row = u + dy  # the crop window starts dy rows below the image top
    col = torch.where(fl, (W - 1) - v, v) + dx  # flip is applied to the cropped window
    valid = (row >= 0) & (row < H) & (col >= 0) & (col < W)
    return row, col, valid


def _read(sources: torch.Tensor, k: torch.Tensor, row, col, valid) -> torch.Tensor:
    """uint8 [B, C, H, W]: out[b, c, y, x] = sources[b, k, c, row, col], 0 where not valid."""
    B, S, C, H, W = sources.shape
    HW = H * W
    pix = row.clamp(0, H - 1) * W + col.clamp(0, W - 1)  # [B, H, W] pixel in its image
    base = (k * (C * HW) + pix).expand(B, H, W).reshape(B, 1, HW)  # offset in [S, C, HW]
    chan = torch.arange(C, device=sources.device).view(1, C, 1) * HW
    out = torch.gather(sources.reshape(B, S * C * HW), 1, (base + chan).reshape(B, C * HW))
    return out.view(B, C, H, W) * valid.expand(B, H, W).view(B, 1, H, W).to(torch.uint8)


def _layout(r: Recipes, hw, device):
    """Which source and which view-frame pixel feed each output pixel, per op.

    Returns k [B, H, W] (or [B, 1, 1]), u, v (broadcastable to [B, H, W]).
    """
    H, W = hw
    B = len(r)
    yy = torch.arange(H, device=device).view(1, H, 1)
    xx = torch.arange(W, device=device).view(1, 1, W)
    op = r.spec.op
    if op == "cutmix":
        y0, y1, x0, x1 = (r.box[:, i].view(B, 1, 1) for i in range(4))
        inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)  # [B, H, W]
        return inside.to(torch.int64), yy, xx
    if op == "ricap":
        w = r.ricap_wh[:, 0].view(B, 1, 1)
        h = r.ricap_wh[:, 1].view(B, 1, 1)
        bottom = (yy >= h).to(torch.int64)  # [B, H, 1]
        right = (xx >= w).to(torch.int64)  # [B, 1, W]
        k = 2 * bottom + right  # [B, H, W] patch index = source index
        oy = torch.gather(r.ricap_off[:, :, 0], 1, k.view(B, -1)).view(B, H, W)
        ox = torch.gather(r.ricap_off[:, :, 1], 1, k.view(B, -1)).view(B, H, W)
        return k, oy + (yy - bottom * h), ox + (xx - right * w)
    zero = torch.zeros(B, 1, 1, dtype=torch.int64, device=device)
    return zero, yy, xx


def _label_weights(r: Recipes, source_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 [B, K]: sum over sources of weight_s * onehot(label_s), one materialised add per
    source (S <= 4), so no reduction whose order could depend on the batch layout."""
    w = r.source_weights()  # [B, S]
    oh = torch.nn.functional.one_hot(source_labels, num_classes).to(torch.float32)  # [B, S, K]
    out = oh[:, 0] * w[:, 0:1]
    for s in range(1, w.shape[1]):
        out = out + oh[:, s] * w[:, s : s + 1]
    return out


def _check(sources: torch.Tensor, recipes: Recipes, source_labels: torch.Tensor, num_classes: int):
    if not isinstance(recipes, Recipes):
        raise LabelenhError(f"recipes must be Recipes, got {type(recipes).__name__}")
    S = recipes.spec.num_sources
    if sources.dtype != torch.uint8 or sources.dim() != 5:
        raise LabelenhError(f"sources must be uint8 [B, S, C, H, W], got {sources.dtype} {tuple(sources.shape)}")
    B, s, _, H, W = sources.shape
    if B != len(recipes) or s != S:
        raise LabelenhError(f"sources [B={B}, S={s}] do not match {len(recipes)} recipes with {S} sources")
    if (H, W) != tuple(recipes.image_size):
        raise LabelenhError(f"images are {H}x{W} but the recipes were drawn for {recipes.image_size}")
    if tuple(source_labels.shape) != (B, S):
        raise LabelenhError(f"source_labels must be [B, S] = [{B}, {S}], got {tuple(source_labels.shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LabelenhError(f"num_classes must be a positive integer, got {num_classes!r}")
    if source_labels.numel() and (int(source_labels.min()) < 0 or int(source_labels.max()) >= num_classes):
        raise LabelenhError(f"labels must lie in [0, {num_classes})")


def apply_views(
    sources: torch.Tensor, recipes: Recipes, source_labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the view images and their label weights.

    sources        uint8 [B, S, C, H, W]: the images named by `recipes.sources()`
    source_labels  int64 [B, S]: their labels
    returns        images float32 [B, C, H, W] in 0..255, weights float32 [B, num_classes]
                   (rows sum to 1 up to float rounding), on the sources' device.
    """
    _check(sources, recipes, source_labels, num_classes)
    device = sources.device
    r = recipes.to(device)
    source_labels = source_labels.to(device=device, dtype=torch.int64)
    B, S, C, H, W = sources.shape
    weights = _label_weights(r, source_labels, num_classes)
    op = r.spec.op
    if op == "none":
        return sources[:, 0].to(torch.float32), weights
    if op == "mixup":
        _, u, v = _layout(r, (H, W), device)
        imgs = []
        for k in (0, 1):
            kk = torch.full((B, 1, 1), k, dtype=torch.int64, device=device)
            imgs.append(_read(sources, kk, *_base_coords(r, kk, u, v, (H, W))).to(torch.float32))
        lam = r.lam.view(B, 1, 1, 1)
        a = imgs[0] * lam  # materialised one by one: no fused multiply-add
        b = imgs[1] * (1.0 - lam)
        return a + b, weights
    k, u, v = _layout(r, (H, W), device)
    return _read(sources, k, *_base_coords(r, k, u, v, (H, W))).to(torch.float32), weights


def gather_and_apply(
    source: _Source, recipes: Recipes, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the recipes' source images from `source` (`.load(idx) -> uint8 [n, C, H, W]`,
    `.labels` int64 [N]) and apply them; returns what `apply_views` returns."""
    idx = recipes.sources()  # [B, S]
    B, S = idx.shape
    imgs = source.load(idx.reshape(-1))  # [B*S, C, H, W]
    labels = source.labels[idx.reshape(-1).to(source.labels.device)].view(B, S)
    return apply_views(imgs.view(B, S, *imgs.shape[1:]), recipes, labels, num_classes)
