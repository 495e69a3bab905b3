"""`cutout` (DeVries & Taylor 2017): the base view with one square of side `size` set to zero.

Centre (cy, cx) uniform over the pixels (streams 300, 301); the square covers rows
[clip(cy - size // 2), clip(cy + size // 2)) and likewise columns, clipped at the border, as
the reference code (`util/cutout.py`, n_holes = 1). The reference zeroes the *normalised* image
(the dataset's mean colour); here pixels are zeroed before normalisation, so the square is
black. The label stays the sample's own (weight 1). Record: centre u2[2] (cy, cx), the base's
fields, flags: 7 bytes with crop-flip.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops.base import Draw, Field, Op, Param, int_range, register_op

_S_CY, _S_CX = 300, 301


@register_op
class Cutout(Op):
    name = "cutout"
    summary = "a zero square of side --cutout-size on the base view (DeVries & Taylor)"
    params = (Param("size", 16, "side of the square (16 for 32x32)", kind="int", check=int_range(1, 65535),
                    flag="--cutout-size"),)
    takes_base = True
    streams = range(_S_CY, _S_CX + 1)
    order = 60

    def fields(self, spec, num_sources):
        return (Field("centre", shape=(2,), record="<u2"),)

    def sample(self, spec, d: Draw):
        H, W = d.image_size
        cy = d.rng.integers(_S_CY, 0, H)
        cx = d.rng.integers(_S_CX, 0, W)
        return {"centre": np.stack([cy, cx], axis=1)}

    def check_records(self, spec, data, image_size):
        H, W = image_size
        c = data["centre"]
        ok = not c.numel() or bool(((c[:, 0] < H) & (c[:, 1] < W)).all())
        return "" if ok else f"cutout centre outside the {H}x{W} image"

    def render(self, spec, views, r):
        B, _, _, H, W = views.shape
        dev = views.device
        half = spec.size // 2
        c = r.centre.to(dev)
        y0, y1 = (c[:, 0] - half).clamp(0, H), (c[:, 0] + half).clamp(0, H)
        x0, x1 = (c[:, 1] - half).clamp(0, W), (c[:, 1] + half).clamp(0, W)
        ys = torch.arange(H, device=dev).view(1, 1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, 1, W)
        v = lambda t: t.view(B, 1, 1, 1)  # noqa: E731
        inside = (ys >= v(y0)) & (ys < v(y1)) & (xs >= v(x0)) & (xs < v(x1))  # [B, 1, H, W]
        return views[:, 0].masked_fill(inside, 0).to(torch.float32)
