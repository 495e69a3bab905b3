"""`apply_views`: the one function that turns source images + recipes into view images and
mixed label weights. Export and student training both call it; nothing else mixes.

Batched on the tensors' device, no Python loop over samples. Each output row (b, c, y) is a run
of W pixels read from one row of one source image at a column shift — the base crop offset, the
RICAP patch offset — so whole rows are copied with one `index_select` from an overlapping
"window" view of a flat buffer holding every source row (and a row-reversed copy for flips).
Mixed layouts (cutmix box, RICAP left/right patches) read one row set per side and pick per
pixel with 0/1 masks that also zero the crop padding. Mixup blends two images with separate
elementwise ops (`a * lam`, `b * (1 - lam)`, then `+`), each materialised: every output element
depends on its own inputs only, so results are bit-identical however the recipes are batched.
"""

from __future__ import annotations

from typing import Protocol

import torch

from labelenh.errors import LabelenhError
from labelenh.views.recipes import Recipes


class _Source(Protocol):
    labels: torch.Tensor

    def load(self, indices: torch.Tensor) -> torch.Tensor: ...


class _Rows:
    """Every source row, zero-padded by `pad` on both sides, in one flat uint8 buffer that is
    read as W-wide windows at any offset.

    buf [R, L]: R = 1 (plain) or 2 (plain, then every padded row reversed, for flips). Each half
    is [zeros (3W + 2p) | rows of width W + 2p | zeros (W)], so any window of a view pixel that
    lies in the crop padding reads a zero, and a row outside the image reads the leading zeros:
    no masks are needed. Windows of unused pixels (outside a RICAP patch) may read anything.
    """

    def __init__(self, sources: torch.Tensor, pad: int, need_flip: bool) -> None:
        B, S, C, H, W = sources.shape
        p = self.pad = pad
        self.shape = (B, S, C, H, W)
        self.wp = wp = W + 2 * p  # padded row width
        self.front = front = 3 * W + 2 * p  # zeros before the first row
        nrows = B * S * C * H
        half = front + nrows * wp + W
        buf = torch.zeros((2 if need_flip else 1, half), dtype=torch.uint8, device=sources.device)
        rows = sources.reshape(nrows, W)
        buf[0, front : front + nrows * wp].view(nrows, wp)[:, p : p + W] = rows
        if need_flip:
            buf[1, front : front + nrows * wp].view(nrows, wp)[:, p : p + W] = rows.flip(-1)
        self.half = half
        # overlapping view: window i = buf.flat[i : i + W]
        self.windows = buf.view(-1).as_strided((buf.numel() - W + 1, W), (1, 1))

    def read(self, r: Recipes, k: torch.Tensor, u: torch.Tensor, vshift: torch.Tensor):
        """uint8 [B, C, H, W]: output row (b, c, y) comes from view-frame row u[b, y] of source
        k[b, y] (after that source's crop/flip), output column x from view-frame column
        x + vshift[b, y]. k, u, vshift: int64 [B, H]. Pixels in the crop padding are 0.
        """
        B, S, C, H, W = self.shape
        dev = k.device
        dy = torch.gather(r.crop[:, :, 0], 1, k)  # [B, H]
        dx = torch.gather(r.crop[:, :, 1], 1, k)
        fl = torch.gather(r.flip, 1, k)
        raw_row = u + dy  # the crop window starts dy rows below the image top
        # output x reads padded column p + x + shift, in the reversed rows when flipped
        # (the flip is applied to the cropped window: raw col = W-1-(x+vshift) + dx)
        shift = (vshift + torch.where(fl, -dx, dx)).clamp(-W - self.pad, W + self.pad)
        img = torch.arange(B, device=dev).view(B, 1, 1) * S + k.view(B, 1, H)  # source image id
        chan = torch.arange(C, device=dev).view(1, C, 1)
        row = (img * C + chan) * H + raw_row.clamp(0, H - 1).view(B, 1, H)  # [B, C, H]
        inside = ((raw_row >= 0) & (raw_row < H)).view(B, 1, H)
        row_start = torch.where(inside, self.front + row * self.wp, W)  # else: the zero row
        start = row_start + (self.pad + shift + fl.to(torch.int64) * self.half).view(B, 1, H)
        return self.windows.index_select(0, start.reshape(-1)).view(B, C, H, W)


def _select(a: torch.Tensor, b: torch.Tensor, take_b: torch.Tensor) -> torch.Tensor:
    """uint8: b where take_b else a (both overwritten). take_b broadcasts to a's shape. Exact in
    uint8's modulo-256 arithmetic, and much faster than torch.where on uint8 on CPU."""
    return a.add_(b.sub_(a).mul_(take_b.to(torch.uint8)))


def _render(sources: torch.Tensor, r: Recipes) -> torch.Tensor:
    """float32 [B, C, H, W] view images (0..255)."""
    B, S, C, H, W = sources.shape
    op = r.spec.op
    if op == "none":
        return sources[:, 0].to(torch.float32)
    dev = sources.device
    pad = int(r.crop.abs().max()) if r.crop.numel() else 0  # = spec.pad unless hand-made
    rows = _Rows(sources, pad, need_flip=bool(r.flip.any()))
    yy = torch.arange(H, device=dev).view(1, H).expand(B, H)  # [B, H]
    zero = torch.zeros(B, H, dtype=torch.int64, device=dev)
    if op == "crop-flip":
        return rows.read(r, zero, yy, zero).to(torch.float32)
    if op in ("mixup", "cutmix"):
        a = rows.read(r, zero, yy, zero)  # the sample's own base view
        b = rows.read(r, zero + 1, yy, zero)  # the partner's base view
        if op == "mixup":
            lam = r.lam.view(B, 1, 1, 1)
            xa = a.to(torch.float32).mul_(lam)  # materialised one by one:
            xb = b.to(torch.float32).mul_(1.0 - lam)  # no fused multiply-add
            return xa.add_(xb)
        y0, y1, x0, x1 = (r.box[:, i].view(B, 1, 1, 1) for i in range(4))
        ys = torch.arange(H, device=dev).view(1, 1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, 1, W)
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # [B, 1, H, W]
        return _select(a, b, inside).to(torch.float32)
    # ricap: row y takes its left patch from source 0 (top) or 2 (bottom), its right patch from
    # source 1 or 3; patch k shows source k's view frame from offset (oy_k, ox_k)
    w = r.ricap_wh[:, 0].view(B, 1)
    h = r.ricap_wh[:, 1].view(B, 1)
    bottom = (yy >= h).to(torch.int64)  # [B, H]
    k_left = 2 * bottom
    k_right = k_left + 1
    oy, ox = r.ricap_off[:, :, 0], r.ricap_off[:, :, 1]  # [B, 4]
    y_in = yy - bottom * h  # row inside the patch
    a = rows.read(r, k_left, torch.gather(oy, 1, k_left) + y_in, torch.gather(ox, 1, k_left))
    b = rows.read(r, k_right, torch.gather(oy, 1, k_right) + y_in,
                  torch.gather(ox, 1, k_right) - w)
    right = torch.arange(W, device=dev).view(1, 1, 1, W) >= w.view(B, 1, 1, 1)  # [B, 1, 1, W]
    return _select(a, b, right).to(torch.float32)


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
    return _render(sources.contiguous(), r), _label_weights(r, source_labels, num_classes)


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
