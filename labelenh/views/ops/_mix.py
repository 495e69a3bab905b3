"""What the mixing ops share: the `mix_prob` option, the "mixed" flag, partners and the λ stream.

Partners are absolute indices uniform over [0, num_samples) (the sample itself included), drawn
on stream 48 + slot. With probability 1 - mix_prob a view does not mix (stream 1): its partners
repeat the sample and the op's geometry is the neutral one, so the view is the base view of the
sample with weight 1 on its own label.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.views.ops.base import Draw, Field, Param, probability

# Streams every mixing op draws from (one op per view, so sharing them is safe).
S_MIX = 1
S_PARTNER = 48  # + partner slot (< 16)
S_LAM = 64  # λ ~ Beta: mixup's blend weight, cutmix's area before the box correction

MIX_PROB = Param("mix_prob", 1.0, "probability that a view mixes at all (else: the base view, own label)",
                 check=probability, flag="--mix-prob")
MIXED = Field("mixed", "bool", bit=7, default=True)  # the mix was applied


def draw_mix(spec, d: Draw) -> tuple[np.ndarray, np.ndarray]:
    """(mixed bool [B], partners int64 [B, S-1]); unmixed views name the sample again."""
    b = d.size
    mixed = d.rng.uniform(S_MIX) < spec.mix_prob if spec.mix_prob < 1.0 else np.ones(b, bool)
    partners = np.stack([d.rng.integers(S_PARTNER + k, 0, d.num_samples) for k in range(d.num_sources - 1)],
                        axis=1)
    return mixed, np.where(mixed[:, None], partners, d.sample[:, None])


def select(a: torch.Tensor, b: torch.Tensor, take_b: torch.Tensor) -> torch.Tensor:
    """uint8: b where take_b else a (both overwritten). take_b broadcasts to a's shape. Exact in
    uint8's modulo-256 arithmetic, and much faster than torch.where on uint8 on CPU."""
    return a.add_(b.sub_(a).mul_(take_b.to(torch.uint8)))
