"""`ricap` (Takahashi et al.'s reference): four patches of four images.

Boundary w = round(W Beta(beta, beta)), h = round(H Beta(beta, beta)) (streams 80, 81; round
half to even, as np.round); patch sizes (w, h), (W-w, h), (w, H-h), (W-w, H-h) laid out
top-left, top-right, bottom-left, bottom-right; patch k is cut from source k's base view at an
offset uniform in [0, H - h_k] x [0, W - w_k] (streams 96 + 2k, 96 + 2k + 1). Source 0 is the
sample itself (the reference draws a permutation for every patch; here the store keys rows by
sample, so the sample contributes patch 0), sources 1..3 are partners. The reference names
tensor dim 2 "x"; here w runs along the width. Label weights = patch areas / (H W). Unmixed
views have the boundary (W, H) and zero offsets. Record: partners u4[3], wh u2[2],
offsets u2[4, 2] (oy, ox), the base's fields, flags.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops._mix import MIX_PROB, MIXED, draw_mix, select
from labelenh.views.ops._rows import Rows
from labelenh.views.ops.base import Draw, Field, Op, Param, positive, register_op

_S_W, _S_H = 80, 81
_S_OFF = 96  # + 2 * patch + {0: oy, 1: ox}


def patch_sizes(wh: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(widths, heights) int64 [B, 4] of the patches TL, TR, BL, BR for boundaries [B, 2] = (w, h)."""
    H, W = image_size
    w, h = wh[:, 0:1], wh[:, 1:2]
    return torch.cat([w, W - w, w, W - w], 1), torch.cat([h, h, H - h, H - h], 1)


@register_op
class Ricap(Op):
    name = "ricap"
    summary = "four patches of four images; weights = patch areas"
    params = (
        Param("beta", 0.3, "boundary (w, h) ~ (W, H) * Beta(beta, beta)", check=positive,
              flag="--ricap-beta", alias="ricap_beta"),
        MIX_PROB,
    )
    num_sources = 4
    takes_base = True
    mixes = True
    streams = range(80, 104)
    order = 50

    def fields(self, spec, num_sources):
        return (Field("wh", shape=(2,), record="<u2"), Field("offsets", shape=(4, 2), record="<u2"), MIXED)

    def sample(self, spec, d: Draw):
        H, W = d.image_size
        mixed, partners = draw_mix(spec, d)
        w = np.rint(W * d.rng.beta(_S_W, spec.beta, spec.beta)).astype(np.int64)
        h = np.rint(H * d.rng.beta(_S_H, spec.beta, spec.beta)).astype(np.int64)
        w, h = np.where(mixed, w, W), np.where(mixed, h, H)
        wk = np.stack([w, W - w, w, W - w], axis=1)  # [B, 4] patch widths
        hk = np.stack([h, h, H - h, H - h], axis=1)  # [B, 4] patch heights
        off = np.zeros((d.size, 4, 2), dtype=np.int64)
        for k in range(4):
            off[:, k, 0] = d.rng.integers(_S_OFF + 2 * k, 0, H - hk[:, k] + 1)
            off[:, k, 1] = d.rng.integers(_S_OFF + 2 * k + 1, 0, W - wk[:, k] + 1)
        return {"wh": np.stack([w, h], axis=1), "offsets": off, "mixed": mixed, "partners": partners}

    def check_records(self, spec, data, image_size):
        H, W = image_size
        wh, off = data["wh"], data["offsets"]
        if not wh.numel():
            return ""
        wk, hk = patch_sizes(wh, image_size)
        ok = bool(((wh[:, 0] <= W) & (wh[:, 1] <= H)).all()
                  and ((off[:, :, 0] <= H - hk) & (off[:, :, 1] <= W - wk)).all())
        return "" if ok else f"RICAP patch outside the {H}x{W} image"

    def render(self, spec, views, r):
        # Row y takes its left patch from source 0 (top) or 2 (bottom), its right patch from
        # source 1 or 3; patch k shows source k's base view from offset (oy_k, ox_k). Each side
        # is one whole-row read; a per-pixel select joins them.
        B, S, C, H, W = views.shape
        dev = views.device
        wh, off = r.wh.to(dev), r.offsets.to(dev)
        w, h = wh[:, 0].view(B, 1), wh[:, 1].view(B, 1)
        rows = Rows(views, 0, need_flip=False)
        yy = torch.arange(H, device=dev).view(1, H).expand(B, H)
        bottom = (yy >= h).to(torch.int64)  # [B, H]
        k_left = 2 * bottom
        k_right = k_left + 1
        oy, ox = off[:, :, 0], off[:, :, 1]  # [B, 4]
        y_in = yy - bottom * h  # row inside the patch
        a = rows.read(k_left, torch.gather(oy, 1, k_left) + y_in, torch.gather(ox, 1, k_left))
        b = rows.read(k_right, torch.gather(oy, 1, k_right) + y_in, torch.gather(ox, 1, k_right) - w)
        right = torch.arange(W, device=dev).view(1, 1, 1, W) >= w.view(B, 1, 1, 1)  # [B, 1, 1, W]
        return select(a, b, right).to(torch.float32)

    def weights(self, spec, r):
        H, W = r.image_size
        wk, hk = patch_sizes(r.wh, r.image_size)
        return (wk * hk).to(torch.float32) / float(H * W)
