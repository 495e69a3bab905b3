"""`crop-flip`: random crop of the zero-padded image + horizontal flip (the CIFAR recipe).

Per source k: offsets dy, dx uniform in [-pad, pad] into the image zero-padded by `pad` on every
side (torchvision RandomCrop(size, padding=pad)), streams 16 + 4k (dy), 16 + 4k + 1 (dx); then a
horizontal flip of the cropped window with probability 0.5 (stream 16 + 4k + 2) when `flip`.
Record: crop i1[S, 2] + one flag bit per source.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops._rows import Rows
from labelenh.views.ops.base import Draw, Field, Op, Param, int_range, register_op

MAX_PAD = 127  # offsets are stored as int8
_S_CROP = 16  # + 4 * source + {0: dy, 1: dx, 2: flip}


@register_op
class CropFlip(Op):
    name = "crop-flip"
    summary = "random crop of the zero-padded image + horizontal flip (CIFAR)"
    aliases = ("crop_flip", "cropflip")
    params = (
        Param("pad", 4, "crop padding: offsets in [-pad, pad] (4 for 32x32)", kind="int",
              check=int_range(0, MAX_PAD)),
        Param("flip", True, "flip horizontally with probability 0.5", kind="bool", flag="--flip"),
    )
    is_base = True
    default_base = True
    streams = range(16, 32)
    order = 10

    def fields(self, spec, num_sources):
        return (Field("crop", shape=(2,), per_source=True, record="i1", default=0),
                Field("flip", "bool", per_source=True, bit=0, default=False))

    def sample(self, spec, d: Draw):
        b, s, p = d.size, d.num_sources, spec.pad
        crop = np.zeros((b, s, 2), dtype=np.int64)
        flip = np.zeros((b, s), dtype=bool)
        for k in range(s):
            crop[:, k, 0] = d.rng.integers(_S_CROP + 4 * k, -p, p + 1)
            crop[:, k, 1] = d.rng.integers(_S_CROP + 4 * k + 1, -p, p + 1)
            if spec.flip:
                flip[:, k] = d.rng.uniform(_S_CROP + 4 * k + 2) < 0.5
        return {"crop": crop, "flip": flip}

    def check_records(self, spec, data, image_size):
        crop = data["crop"]
        if crop.numel() and int(crop.abs().max()) > spec.pad:
            return f"crop offset {int(crop.abs().max())} exceeds pad {spec.pad}"
        return ""

    def render_base(self, spec, sources, r):
        # Output pixel (y, x) of source k is image pixel (y + dy, x + dx) of the zero-padded
        # source, or (y + dy, W - 1 - x + dx) when flipped (the flip mirrors the cropped window).
        B, S, C, H, W = sources.shape
        dev = sources.device
        crop, flip = r.crop.to(dev), r.flip.to(dev)
        rows = Rows(sources, spec.pad, need_flip=bool(flip.any()))
        yy = torch.arange(H, device=dev).view(1, H).expand(B, H)
        out = []
        for k in range(S):
            fl = flip[:, k : k + 1].expand(B, H)
            dy, dx = crop[:, k, 0:1].expand(B, H), crop[:, k, 1:2].expand(B, H)
            out.append(rows.read(torch.full_like(yy, k), yy + dy, torch.where(fl, -dx, dx), fl))
        return out[0].unsqueeze(1) if S == 1 else torch.stack(out, dim=1)  # [B, S, C, H, W]
