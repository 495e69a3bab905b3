"""Pure loss functions shared by every target method.

All targets in labelenh are dense [B, C] tensors, so one soft cross-entropy serves hard,
smoothed, mixed and teacher targets alike. Two traps this module exists to avoid:

- KD's KL term is `batchmean` (sum over classes, mean over the batch) times T². torch's default
  `reduction="mean"` averages over B·C elements and silently divides the KD term by C; it is
  offered only under the explicit name `"elementwise-mean"`, to reproduce older code.
- A soft target must go through `soft_cross_entropy`, never through
  `F.cross_entropy(..., label_smoothing>0)`, which would smooth it a second time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelenh.errors import LabelenhError

KL_REDUCTIONS = ("batchmean", "elementwise-mean")
ENSEMBLE_RULES = ("prob-mean", "logit-mean")


def upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (AMP logits, float16 stores); float32/float64 kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """mean_i −Σ_c target_ic · log softmax(logits)_ic.

    logits [B, C], target [B, C]. The target need not be a distribution: negative entries (NLS)
    and rows summing to other than 1 (OLS in its first epoch) are taken as they are.
    """
    if logits.shape != target.shape:
        raise LabelenhError(
            f"soft_cross_entropy: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
            "must have the same [B, C] shape"
        )
    # at least float32 log-probabilities under AMP: half precision loses the tail.
    logp = F.log_softmax(upcast(logits), dim=-1)  # [B, C]
    return -(target.to(logp.dtype) * logp).sum(dim=-1).mean()


def check_temperature(T: float, where: str = "T") -> float:
    T = float(T)
    if not (T > 0 and T < float("inf")):
        raise LabelenhError(f"{where} must be a finite number > 0, got {T}")
    return T


def kd_kl(
    student_logits: Tensor,
    teacher_probs_T: Tensor,
    T: float,
    reduction: str = "batchmean",
) -> Tensor:
    """T² · KL(p_t^T ‖ softmax(z_s / T)), the Hinton KD term.

    student_logits [B, C]; teacher_probs_T [B, C], the teacher distribution already at
    temperature T (e.g. `ensemble_probs(teacher_logits, T)`).
    reduction: "batchmean" (sum over classes, mean over batch — the correct KL, as RepDistiller's
    DistillKL) or "elementwise-mean" (torch's default `KLDivLoss()` that the CVPR/ILS seeds used:
    divided by B·C, i.e. the batchmean value / C).
    """
    T = check_temperature(T)
    if reduction not in KL_REDUCTIONS:
        raise LabelenhError(
            f"unknown KL reduction {reduction!r}; choose one of: {', '.join(KL_REDUCTIONS)}"
        )
    log_ps = F.log_softmax(upcast(student_logits) / T, dim=-1)  # [B, C]
    pt = teacher_probs_T.to(log_ps.dtype)
    if reduction == "batchmean":
        kl = F.kl_div(log_ps, pt, reduction="batchmean")
    else:
        # spelled out: torch has announced that its "mean" will turn into "batchmean"
        kl = F.kl_div(log_ps, pt, reduction="sum") / log_ps.numel()
    return kl * (T * T)


def ensemble_probs(teacher_logits: Tensor, T: float = 1.0, rule: str = "prob-mean") -> Tensor:
    """Teacher distribution at temperature T from M teachers' logits.

    teacher_logits [B, M, C] (or [B, C] for one teacher) -> [B, C].
    prob-mean:  mean_m softmax(z_m / T)   (labelenh default; the OLS repo's ensemble convention)
    logit-mean: softmax(mean_m z_m / T)
    For M = 1 both rules give softmax(z / T).
    """
    T = check_temperature(T)
    if rule not in ENSEMBLE_RULES:
        raise LabelenhError(
            f"unknown ensemble rule {rule!r}; choose one of: {', '.join(ENSEMBLE_RULES)}"
        )
    z = upcast(teacher_logits)  # stores may hold float16 logits
    if z.ndim == 2:
        z = z.unsqueeze(1)  # [B, 1, C]
    if z.ndim != 3:
        raise LabelenhError(
            f"teacher logits must be [B, M, C] or [B, C], got shape {tuple(teacher_logits.shape)}"
        )
    if rule == "prob-mean":
        return F.softmax(z / T, dim=-1).mean(dim=1)  # [B, C]
    return F.softmax(z.mean(dim=1) / T, dim=-1)  # [B, C]
