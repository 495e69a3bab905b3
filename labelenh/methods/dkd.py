"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller's `DKD`.

With p_s, p_t the student's and the teacher's softmax at T and y the label:
- TCKD = KL(b_t ‖ b_s), b = [p(y), 1 − p(y)]: does the student match how sure the teacher is;
- NCKD = KL(n_t ‖ n_s), n(j) = p(j) / Σ_{k≠y} p(k) over j ≠ y: the teacher's ranking of the
  wrong classes (mdistiller's softmax(z/T − 1000·gt_mask), without the 1000);
- loss = w_ce·CE(hard) + min((epoch + 1) / warmup, 1)·T²·(α·TCKD + β·NCKD), each KL summed
  over its classes and averaged over the batch.

mdistiller counts epochs from 1 and scales by min(epoch / warmup, 1), so its first epoch
already gets 1/warmup; labelenh counts from 0, hence epoch + 1. warmup = 0 switches the ramp
off. Without the ramp a short run diverges: NCKD's β = 8 at T = 4 outweighs CE at the start.

Everything is in log space (log-softmax, logsumexp over the non-target classes), so a
teacher that puts all its mass on a wrong class (p_t(y) = 0), or on the label (no mass left
for NCKD), gives finite terms and gradients; mdistiller's log(p) of the binary split is −inf
for a saturated student.

Under a mixing view `hard` holds weights w_c over a few source classes; the KD terms are the
label-weighted sum Σ_c w_c·DKD(c), as mixup mixes CE, so a one-hot row gives exactly DKD(y).
With M teachers the teacher distribution is their ensemble (`ensemble`); `logit_stand`
z-scores both logits first (the CVPR 2024 logit standardisation; its code scales α and β by
9 with T = 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labelenh.errors import LabelenhError
from labelenh.losses import ensemble_log_probs, soft_cross_entropy, standardize, upcast
from labelenh.methods.base import (
    ENSEMBLE_PARAM,
    STAND_PARAM,
    T_PARAM,
    Method,
    MethodContext,
    MethodInputs,
    Param,
    register,
)


def _kl_rows(log_q: Tensor, log_p: Tensor, keep: Tensor) -> Tensor:
    """Σ over the kept entries of q·(log q − log p), with 0·log 0 = 0; [..., K] -> [...].

    The dropped entries are replaced before any arithmetic, not only masked after it: an
    entry such as the label's log n(y) can be huge, and exp(huge)·0 in the backward pass of
    a masked-out branch is NaN.
    """
    log_q = torch.where(keep, log_q, torch.full_like(log_q, -math.inf))
    q = log_q.exp()  # 0 where dropped or underflowed
    live = q > 0
    diff = torch.where(live, log_q, torch.zeros_like(log_q)) - torch.where(keep, log_p, torch.zeros_like(log_p))
    return torch.where(live, q * diff, torch.zeros_like(q)).sum(dim=-1)


def dkd_terms(log_ps: Tensor, log_pt: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD for each source class.

    log_ps, log_pt [B, C]: student and teacher log-probabilities at T; src [B, S] class indices.
    Returns (tckd, nckd), each [B, S].
    """
    C = log_ps.shape[-1]
    gt = F.one_hot(src, C).bool()  # [B, S, C]
    ls, lt = log_ps.unsqueeze(1), log_pt.unsqueeze(1)  # [B, 1, C]
    neg_inf = torch.tensor(-math.inf, dtype=log_ps.dtype, device=log_ps.device)
    # log Σ_{k≠c} p(k): the mass off the source class, without the cancellation of 1 − p(c)
    rest_s = torch.logsumexp(torch.where(gt, neg_inf, ls), dim=-1)  # [B, S]
    rest_t = torch.logsumexp(torch.where(gt, neg_inf, lt), dim=-1)
    on_s, on_t = log_ps.gather(-1, src), log_pt.gather(-1, src)  # [B, S]
    b_s = torch.stack([on_s, rest_s], dim=-1)  # [B, S, 2] log of the binary split
    b_t = torch.stack([on_t, rest_t], dim=-1)
    tckd = _kl_rows(b_t, b_s, torch.ones_like(b_t, dtype=torch.bool))
    n_s = ls - rest_s.unsqueeze(-1)  # [B, S, C] log n(j); entry c is unused
    n_t = lt - rest_t.unsqueeze(-1)
    nckd = _kl_rows(n_t, n_s, ~gt)
    return tckd, nckd


def source_classes(hard: Tensor) -> tuple[Tensor, Tensor]:
    """The nonzero classes of each (mixed) hard row: indices [B, S] and weights [B, S]."""
    S = max(int((hard != 0).sum(dim=-1).max().item()), 1)  # one host sync per batch
    idx = hard.abs().topk(S, dim=-1).indices
    return idx, hard.gather(-1, idx)


@register("dkd")
class DecoupledKD(Method):
    """w_ce·CE + warm-up·T²·(α·TCKD + β·NCKD) against the stored (or online) teacher."""

    teacher = "store"
    has_target = False
    summary = "decoupled KD: CE + warm-up * T^2 * (alpha*TCKD + beta*NCKD)"
    formula = (
        "w_ce*CE(hard) + min((epoch+1)/warmup, 1)*T^2*(alpha*KL(b_t || b_s) + beta*KL(n_t || n_s))\n"
        "b = [p(y), 1-p(y)], n = p over the classes != y renormalised, p = softmax(z/T)"
    )
    example = "--method dkd --store STORE.h5 --aug ricap --warmup 20  (or --teacher RUN for online)"
    params = {
        "alpha": Param(float, 1.0, "weight of TCKD (target-class KD)", 0.0, math.inf),
        "beta": Param(float, 8.0, "weight of NCKD (non-target-class KD); mdistiller's CIFAR-100 "
                      "value, 0.5-2 on ImageNet", 0.0, math.inf, lo_open=True),
        "T": T_PARAM._replace(default=4.0, help="distillation temperature"),
        "warmup": Param(int, 20, "epochs over which the KD terms ramp up linearly; 0 = no ramp",
                        0, 1e6),
        "w_ce": Param(float, 1.0, "weight of CE against the hard label", 0.0, math.inf),
        "ensemble": ENSEMBLE_PARAM,
        "logit_stand": STAND_PARAM,
    }

    def setup(self) -> None:
        h = self.hparams
        self.alpha, self.beta, self.T = float(h["alpha"]), float(h["beta"]), float(h["T"])
        self.warmup, self.w_ce = int(h["warmup"]), float(h["w_ce"])
        self.rule, self.stand = h["ensemble"], bool(h["logit_stand"])

    def ramp(self, ctx: MethodContext | None) -> float:
        """min((epoch + 1) / warmup, 1): mdistiller's min(epoch / warmup, 1) with its 1-based epoch."""
        if self.warmup == 0:
            return 1.0
        if ctx is None:
            raise LabelenhError(
                "method 'dkd' ramps its KD terms up over the first epochs: pass "
                "loss(logits, inp, MethodContext(epoch=...)), or warmup=0"
            )
        return min((ctx.epoch + 1) / self.warmup, 1.0)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        z = upcast(logits)
        zs = standardize(z) if self.stand else z
        log_ps = F.log_softmax(zs / self.T, dim=-1)  # [B, C]
        log_pt = ensemble_log_probs(self.teacher_logits(inp), self.T, self.rule, hard=inp.hard,
                                    standardized=self.stand).to(log_ps.dtype)  # [B, C]
        src, w = source_classes(upcast(inp.hard))  # [B, S]
        tckd, nckd = dkd_terms(log_ps, log_pt, src)
        w = w.to(log_ps.dtype)
        scale = self.ramp(ctx) * self.T**2
        return {
            "ce": self.w_ce * soft_cross_entropy(logits, inp.hard),
            "tckd": scale * self.alpha * (w * tckd).sum(dim=-1).mean(),
            "nckd": scale * self.beta * (w * nckd).sum(dim=-1).mean(),
        }
