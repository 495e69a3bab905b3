"""Accuracy and calibration metrics from logits: acc1, acc5, NLL, ECE, MCE, Brier.

Binning (ECE, MCE, reliability diagrams): `n_bins` equal-width bins over the top-1
confidence. As in torchmetrics (`torch.bucketize(..., right=True)`), a bin holds [lo, hi);
unlike torchmetrics, which gives a confidence of exactly 1.0 an extra (n_bins+1)-th bin of its
own, the last bin is closed, [lo, 1], so 1.0 belongs to it. The two agree whenever no
confidence is exactly 1.0. Everything is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from labelenh.errors import LabelenhError


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics of the top-1 confidence; all tensors are float64 [n_bins] on CPU."""

    edges: Tensor  # [n_bins + 1], 0 .. 1
    counts: Tensor  # samples per bin
    accuracy: Tensor  # mean correctness per bin (0 where the bin is empty)
    confidence: Tensor  # mean confidence per bin (0 where the bin is empty)

    @property
    def n(self) -> int:
        return int(self.counts.sum().item())

    @property
    def gaps(self) -> Tensor:
        return (self.accuracy - self.confidence).abs()  # [n_bins]

    def ece(self) -> float:
        """Σ_b (n_b / N) |acc_b − conf_b|."""
        return float((self.counts / self.counts.sum() * self.gaps).sum())

    def mce(self) -> float:
        """max over non-empty bins of |acc_b − conf_b|."""
        return float(self.gaps[self.counts > 0].max())


def _check(scores: Tensor, labels: Tensor, n_bins: int | None = None) -> None:
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise LabelenhError("metrics need torch tensors: logits [N, C] and labels [N]")
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise LabelenhError(
            f"metrics need logits [N, C] and labels [N], got {list(scores.shape)} and "
            f"{list(labels.shape)}"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise LabelenhError("metrics need at least one sample and one class")
    if not scores.is_floating_point():
        raise LabelenhError(f"logits must be floating point, got {scores.dtype}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise LabelenhError(f"labels must be integer class indices, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= scores.shape[1]:
        raise LabelenhError(
            f"labels must lie in [0, {scores.shape[1] - 1}] for {scores.shape[1]} classes, "
            f"got values in [{lo}, {hi}]"
        )
    if n_bins is not None and (
        not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1
    ):
        raise LabelenhError(f"n_bins must be a positive integer, got {n_bins!r}")


def _bins_from_confidence(conf: Tensor, correct: Tensor, n_bins: int) -> CalibrationBins:
    conf, correct = conf.cpu(), correct.cpu().to(torch.float64)  # [N], [N]
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize over the interior edges: [lo, hi) bins, and 1.0 lands in the last one
    idx = torch.bucketize(conf, edges[1:-1], right=True)  # [N] in 0 .. n_bins-1
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    denom = counts.clamp(min=1)
    return CalibrationBins(edges, counts, acc_sum / denom, conf_sum / denom)


def calibration_bins(
    scores: Tensor, labels: Tensor, n_bins: int = 15, *, from_logits: bool = True
) -> CalibrationBins:
    """Bin samples by top-1 confidence. `scores` are logits [N, C], or probabilities if
    `from_logits=False`. Ties in the top score go to the lowest class index (torch.max)."""
    _check(scores, labels, n_bins)
    scores = scores.detach().to(torch.float64)
    probs = scores.softmax(dim=1) if from_logits else scores  # [N, C]
    conf, pred = probs.max(dim=1)  # [N], [N]
    return _bins_from_confidence(conf, pred.eq(labels.to(pred.device)), n_bins)


def classification_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """acc1, acc5 (top-min(5, C)), nll, ece, mce, brier and n from logits [N, C], labels [N].

    Non-finite logits make every metric but `n` NaN (a diverged model should not crash an
    evaluation, and NaN is what its report should show).
    """
    _check(logits, labels, n_bins)
    n, c = logits.shape
    z = logits.detach().to(torch.float64)  # [N, C]
    y = labels.detach().to(z.device, torch.long)  # [N]
    if not bool(torch.isfinite(z).all()):
        nan = math.nan
        return {"acc1": nan, "acc5": nan, "nll": nan, "ece": nan, "mce": nan, "brier": nan, "n": n}
    logp = z.log_softmax(dim=1)  # [N, C]
    probs = logp.exp()  # [N, C]
    topk = z.topk(min(5, c), dim=1).indices  # [N, k]
    acc5 = topk.eq(y[:, None]).any(dim=1).to(torch.float64).mean()
    conf, pred = probs.max(dim=1)  # [N], [N]
    correct = pred.eq(y)  # [N]
    nll = -logp.gather(1, y[:, None]).mean()
    onehot = torch.zeros_like(probs).scatter_(1, y[:, None], 1.0)  # [N, C]
    brier = (probs - onehot).pow(2).sum(dim=1).mean()
    bins = _bins_from_confidence(conf, correct, n_bins)
    return {
        "acc1": float(correct.to(torch.float64).mean()),
        "acc5": float(acc5),
        "nll": float(nll),
        "ece": bins.ece(),
        "mce": bins.mce(),
        "brier": float(brier),
        "n": n,
    }
