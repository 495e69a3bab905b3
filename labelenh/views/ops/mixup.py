"""`mixup`: x = λ x_i + (1 - λ) x_j, λ ~ Beta(alpha, alpha) (stream 64), one partner j.

Each source is first the base view (crop-flip unless `base` says otherwise). The blend is
`a * λ`, `b * (1 - λ)`, then `+`, each materialised, so no fused multiply-add makes the result
depend on the batch. Record: partners u4[1], lam f4, the base's fields, flags.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops._mix import MIX_PROB, MIXED, S_LAM, draw_mix
from labelenh.views.ops.base import Draw, Field, Op, Param, positive, register_op


@register_op
class Mixup(Op):
    name = "mixup"
    summary = "blend with a partner: λ x_i + (1 - λ) x_j, λ ~ Beta(alpha, alpha)"
    params = (
        Param("alpha", 1.0, "λ ~ Beta(alpha, alpha)", check=positive, flag="--mixup-alpha", alias="mixup_alpha"),
        MIX_PROB,
    )
    num_sources = 2
    takes_base = True
    mixes = True
    order = 30

    def fields(self, spec, num_sources):
        return (Field("lam", "float32", record="<f4"), MIXED)

    def sample(self, spec, d: Draw):
        mixed, partners = draw_mix(spec, d)
        lam = np.where(mixed, d.rng.beta(S_LAM, spec.alpha, spec.alpha), 1.0).astype(np.float32)
        return {"lam": lam, "mixed": mixed, "partners": partners}

    def check_records(self, spec, data, image_size):
        lam = data["lam"]
        ok = not lam.numel() or bool(((lam >= 0) & (lam <= 1)).all())
        return "" if ok else "mixup lambda outside [0, 1]"

    def render(self, spec, views, r):
        lam = r.lam.to(views.device).view(-1, 1, 1, 1)
        xa = views[:, 0].to(torch.float32).mul_(lam)  # materialised one by one:
        xb = views[:, 1].to(torch.float32).mul_(1.0 - lam)  # no fused multiply-add
        return xa.add_(xb)

    def weights(self, spec, r):
        return torch.stack([r.lam, 1.0 - r.lam], dim=1)
