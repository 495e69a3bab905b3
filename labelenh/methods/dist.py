"""DIST (Huang et al., NeurIPS 2022): distillation by Pearson correlation of the predictions.

With Y_s, Y_t [B, C] the student's and the teacher's softmax at T:
- inter-class relation = 1 − mean_i ρ(Y_s[i, :], Y_t[i, :]) (each sample's class ranking),
- intra-class relation = 1 − mean_c ρ(Y_s[:, c], Y_t[:, c]) (each class across the batch),
- loss = w_ce·CE(hard) + T²·(β·inter + γ·intra),
with ρ the Pearson correlation, written as the authors' code does: the cosine of the centred
vectors with 1e-8 added to the product of norms.

Defaults β = γ = 1, T = 1 are the authors' `DIST(beta=1, gamma=1, tau=1)`, which their
ImageNet runs use; their CIFAR-100 runs change them (read the paper for the values).

The intra-class term is a statistic of the batch, so the loss depends on who shares the
batch: under torchrun each rank correlates its own per-rank batch (as the authors' code
does on each GPU), and small batches make it noisy. A batch of 1 has no spread along the
batch: every centred column is 0, ρ = 0 and the intra term is the constant 1 (no gradient).
A batch of 2 gives ρ = ±1 or 0 per class. A row or column whose values are all equal
(a uniform softmax) has ρ = 0 in the same way. Everything stays finite.

The CE part uses the (possibly mixed) hard target; the relations use the teachers' ensemble
distribution at T.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from labelenh.losses import ensemble_probs, soft_cross_entropy, upcast
from labelenh.methods.base import (
    ENSEMBLE_PARAM,
    T_PARAM,
    Method,
    MethodContext,
    MethodInputs,
    Param,
    register,
)

PEARSON_EPS = 1e-8  # the authors' epsilon under the product of norms


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of matching rows of a and b [N, K] -> [N]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


@register("dist")
class DIST(Method):
    """w_ce·CE + T²·(β·inter-class + γ·intra-class Pearson relation) against the teacher."""

    teacher = "store"
    has_target = False
    summary = "DIST: CE + T^2 * (beta*inter-class + gamma*intra-class Pearson relation)"
    formula = (
        "w_ce*CE(hard) + T^2*(beta*(1 - mean_i rho(Ys[i,:], Yt[i,:])) + gamma*(1 - mean_c rho(Ys[:,c], Yt[:,c])))\n"
        "Y = softmax(z/T) over the batch, rho = Pearson correlation (batch statistics: per rank under torchrun)"
    )
    example = "--method dist --teacher RUN --temperature 4 --beta 2 --intra-weight 2  (or --store STORE.h5)"
    params = {
        "beta": Param(float, 1.0, "weight of the inter-class relation (authors' default, also "
                      "ImageNet)", 0.0, math.inf, lo_open=True),
        # --gamma already names the learning-rate decay factor
        "gamma": Param(float, 1.0, "weight of the intra-class relation (authors' default, also "
                       "ImageNet)", 0.0, math.inf, flag="intra-weight"),
        "T": T_PARAM._replace(help="softmax temperature (authors' default and ImageNet: 1)"),
        "w_ce": Param(float, 1.0, "weight of CE against the hard label", 0.0, math.inf),
        "ensemble": ENSEMBLE_PARAM,
    }

    def setup(self) -> None:
        h = self.hparams
        self.beta, self.gamma, self.T = float(h["beta"]), float(h["gamma"]), float(h["T"])
        self.w_ce, self.rule = float(h["w_ce"]), h["ensemble"]

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        ys = F.softmax(upcast(logits) / self.T, dim=-1)  # [B, C]
        yt = ensemble_probs(self.teacher_logits(inp), self.T, self.rule, hard=inp.hard).to(ys.dtype)
        inter = 1.0 - pearson_rows(ys, yt).mean()
        intra = 1.0 - pearson_rows(ys.t(), yt.t()).mean()  # [C, B]: each class over the batch
        T2 = self.T**2
        return {
            "ce": self.w_ce * soft_cross_entropy(logits, inp.hard),
            "inter": T2 * self.beta * inter,
            "intra": T2 * self.gamma * intra,
        }
