"""`cutmix`: paste a box of the partner's view into the sample's.

λ ~ Beta(beta, beta) (stream 64); r = sqrt(1 - λ); cut_h = int(H r), cut_w = int(W r); centre
(cy, cx) uniform over the pixels (streams 65, 66); box rows [clip(cy - cut_h // 2),
clip(cy + cut_h // 2)) and likewise for columns (the CutMix reference's rounding; timm uses
(cut + 1) // 2 for the upper edge). The label weight is recomputed from the box:
λ = 1 - area / (H W). Unmixed views have an empty box. Record: partners u4[1], box u2[4]
(y0, y1, x0, x1), the base's fields, flags.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops._mix import MIX_PROB, MIXED, S_LAM, draw_mix, select
from labelenh.views.ops.base import Draw, Field, Op, Param, positive, register_op

_S_CY, _S_CX = 65, 66


def box_lam(box: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """float32 [B]: 1 - box area / (H*W) for int boxes [B, 4] = (y0, y1, x0, x1)."""
    h, w = image_size
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    return (1.0 - area.to(torch.float64) / float(h * w)).to(torch.float32)


@register_op
class CutMix(Op):
    name = "cutmix"
    summary = "paste a box of a partner; weights = areas"
    params = (
        Param("beta", 1.0, "λ ~ Beta(beta, beta) before the box correction", check=positive,
              flag="--cutmix-beta", alias="cutmix_beta"),
        MIX_PROB,
    )
    num_sources = 2
    takes_base = True
    mixes = True
    streams = range(65, 67)
    order = 40

    def fields(self, spec, num_sources):
        return (Field("box", shape=(4,), record="<u2"), MIXED)

    def sample(self, spec, d: Draw):
        H, W = d.image_size
        mixed, partners = draw_mix(spec, d)
        r = np.sqrt(1.0 - d.rng.beta(S_LAM, spec.beta, spec.beta))
        cut_h = np.floor(H * r).astype(np.int64)  # int() of a non-negative float
        cut_w = np.floor(W * r).astype(np.int64)
        cy = d.rng.integers(_S_CY, 0, H)
        cx = d.rng.integers(_S_CX, 0, W)
        box = np.stack([np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H),
                        np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)], axis=1)
        return {"box": np.where(mixed[:, None], box, 0), "mixed": mixed, "partners": partners}

    def check_records(self, spec, data, image_size):
        H, W = image_size
        box = data["box"]
        ok = not box.numel() or bool(((box[:, 0] <= box[:, 1]) & (box[:, 1] <= H)
                                      & (box[:, 2] <= box[:, 3]) & (box[:, 3] <= W)).all())
        return "" if ok else f"cutmix box outside the {H}x{W} image"

    def render(self, spec, views, r):
        B, _, _, H, W = views.shape
        dev = views.device
        y0, y1, x0, x1 = (r.box[:, i].to(dev).view(B, 1, 1, 1) for i in range(4))
        ys = torch.arange(H, device=dev).view(1, 1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, 1, W)
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # [B, 1, H, W]
        return select(views[:, 0].clone(), views[:, 1].clone(), inside).to(torch.float32)

    def weights(self, spec, r):
        lam = box_lam(r.box, r.image_size)
        return torch.stack([lam, 1.0 - lam], dim=1)
