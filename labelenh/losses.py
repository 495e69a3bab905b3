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
ENSEMBLE_RULES = ("prob-mean", "logit-mean", "confidence")
STAND_EPS = 1e-7  # the CVPR 2024 logit-standardisation code's epsilon under the std


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


def standardize(logits: Tensor) -> Tensor:
    """Z-score over the classes (last dim): (z − mean) / (std + 1e-7), std unbiased (N − 1).

    The logit standardisation of Sun et al. (CVPR 2024), as their `normalize`. A row whose
    values are all equal has std 0 and becomes all zeros (a uniform softmax), never NaN; torch
    gives the std a zero gradient there, so the row's gradient is finite, though large (the
    change of (z − mean) is divided by 1e-7).
    """
    z = upcast(logits)
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + STAND_EPS)


def confidence_weights(teacher_logits: Tensor, hard: Tensor) -> Tensor:
    """Per-sample teacher weights [B, M] in the manner of CA-MKD (Zhang et al., ICASSP 2022).

    w_m = (1 − softmax_m(CE_m)) / (M − 1), CE_m = −Σ_c hard_c · log softmax(z_m)_c at T = 1:
    a teacher whose cross-entropy on the (possibly mixed) label is lower weighs more; each row
    sums to 1. One teacher gets weight 1.
    """
    z = upcast(teacher_logits)  # [B, M, C]
    M = z.shape[1]
    if M == 1:
        return torch.ones(z.shape[:2], dtype=z.dtype, device=z.device)
    ce = -(upcast(hard).to(z.dtype).unsqueeze(1) * F.log_softmax(z, dim=-1)).sum(dim=-1)  # [B, M]
    return (1.0 - F.softmax(ce, dim=1)) / (M - 1)


def _teacher_logits_3d(teacher_logits: Tensor) -> Tensor:
    z = upcast(teacher_logits)  # stores may hold float16 logits
    if z.ndim == 2:
        z = z.unsqueeze(1)  # [B, 1, C]
    if z.ndim != 3:
        raise LabelenhError(
            f"teacher logits must be [B, M, C] or [B, C], got shape {tuple(teacher_logits.shape)}"
        )
    return z


def _check_rule(rule: str, hard: Tensor | None) -> None:
    if rule not in ENSEMBLE_RULES:
        raise LabelenhError(
            f"unknown ensemble rule {rule!r}; choose one of: {', '.join(ENSEMBLE_RULES)}"
        )
    if rule == "confidence" and hard is None:
        raise LabelenhError("ensemble rule 'confidence' weighs teachers by their CE on the label: pass hard")


def ensemble_probs(
    teacher_logits: Tensor,
    T: float = 1.0,
    rule: str = "prob-mean",
    hard: Tensor | None = None,
    standardized: bool = False,
) -> Tensor:
    """Teacher distribution at temperature T from M teachers' logits.

    teacher_logits [B, M, C] (or [B, C] for one teacher) -> [B, C].
    prob-mean:  mean_m softmax(z_m / T)   (labelenh default; the OLS repo's ensemble convention)
    logit-mean: softmax(mean_m z_m / T)
    confidence: Σ_m w_m · softmax(z_m / T), w = `confidence_weights(z, hard)` per sample
    For M = 1 every rule gives softmax(z / T). `standardized` z-scores each teacher's logits
    first (logit standardisation); the confidence weights always come from the raw logits.
    """
    T = check_temperature(T)
    _check_rule(rule, hard)
    raw = _teacher_logits_3d(teacher_logits)  # [B, M, C]
    z = standardize(raw) if standardized else raw
    if rule == "prob-mean":
        return F.softmax(z / T, dim=-1).mean(dim=1)  # [B, C]
    if rule == "logit-mean":
        return F.softmax(z.mean(dim=1) / T, dim=-1)  # [B, C]
    w = confidence_weights(raw, hard)  # [B, M]
    return (w.unsqueeze(-1) * F.softmax(z / T, dim=-1)).sum(dim=1)  # [B, C]


def ensemble_log_probs(
    teacher_logits: Tensor,
    T: float = 1.0,
    rule: str = "prob-mean",
    hard: Tensor | None = None,
    standardized: bool = False,
) -> Tensor:
    """log of `ensemble_probs`, computed in log space [B, C]: finite even where a saturated
    teacher's probabilities underflow to 0 (DKD renormalises over the non-target classes)."""
    T = check_temperature(T)
    _check_rule(rule, hard)
    raw = _teacher_logits_3d(teacher_logits)
    z = standardize(raw) if standardized else raw
    if rule == "logit-mean":
        return F.log_softmax(z.mean(dim=1) / T, dim=-1)
    logp = F.log_softmax(z / T, dim=-1)  # [B, M, C]
    if rule == "prob-mean":
        w = torch.full(raw.shape[:2], 1.0 / raw.shape[1], dtype=logp.dtype, device=logp.device)
    else:
        w = confidence_weights(raw, hard)
    # log Σ_m w_m p_m; a zero weight contributes log 0 = −inf, which logsumexp ignores
    return torch.logsumexp(logp + w.clamp_min(0).log().unsqueeze(-1), dim=1)  # [B, C]
