"""Accuracy and calibration metrics from logits.

Keys of `classification_metrics` (fractions; `n` is the sample count):

acc1, acc5  top-1 / top-min(5, C) accuracy.
nll         mean negative log-likelihood of the true class.
brier       multiclass Brier score, mean over samples of Σ_k (p_k − 1[y = k])².
ece         top-label ECE, `n_bins` equal-width bins on the top-1 confidence (Guo et al. 2017):
            Σ_b (n_b / N) |acc_b − conf_b|.
mce         max over non-empty equal-width bins of |acc_b − conf_b|.
rmsce       top-label RMS calibration error, the same bins: sqrt(Σ_b (n_b / N)(acc_b − conf_b)²)
            (torchmetrics' `norm="l2"`).
adaece      adaptive (equal-mass) ECE: the top-1 confidences sorted (stable, ties keep sample
            order) and cut into `n_bins` runs of consecutive samples, bin b holding sorted
            positions [⌊bN/B⌋, ⌊(b+1)N/B⌋); then the ECE sum. Equal-width bins leave most bins
            nearly empty on a confident model; equal-mass bins give each bin N/B samples.
cwece       class-wise ECE of Kull et al. (2019) over all C classes: for each class k, the
            samples binned by p_k into `n_bins` equal-width bins, the gap between the share of
            samples of class k and the mean p_k per bin, weighted by n_bk / N; averaged over
            the C classes. (Not the per-true-class top-label variant some code calls
            "class-wise".)

Equal-width binning: as in torchmetrics (`torch.bucketize(..., right=True)`), a bin holds
[lo, hi); unlike torchmetrics, which gives a confidence of exactly 1.0 an extra (n_bins+1)-th
bin of its own, the last bin is closed, [lo, 1], so 1.0 belongs to it. The two agree whenever
no confidence is exactly 1.0. Everything is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from labelenh import bounds as B
from labelenh.errors import LabelenhError

DEFAULT_BINS = 15  # Guo et al. 2017 and the instance-based-LS code use 15

METRIC_KEYS = ("acc1", "acc5", "nll", "ece", "adaece", "cwece", "rmsce", "mce", "brier")


def check_bins(n_bins: int, flag: str = "--ece-bins") -> int:
    """`n_bins` when it lies in labelenh.bounds.ECE_BINS; else a LabelenhError naming `flag`.
    Fewer than two bins is no reliability curve: one bin measures |accuracy − mean confidence|
    only, which a model can zero while being miscalibrated everywhere."""
    B.ECE_BINS.check(n_bins, flag)
    return n_bins


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

    def rms(self) -> float:
        """sqrt(Σ_b (n_b / N) (acc_b − conf_b)²)."""
        return math.sqrt(float((self.counts / self.counts.sum() * self.gaps.pow(2)).sum()))


def check_scores(scores: Tensor, labels: Tensor) -> None:
    """Refuse what is not logits [N, C] with labels [N], in one line."""
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


def _equal_width_index(values: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """(edges [n_bins + 1], bin index of each value in 0 .. n_bins-1, same shape as `values`)."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize over the interior edges: [lo, hi) bins, and 1.0 lands in the last one
    return edges, torch.bucketize(values, edges[1:-1], right=True)


def _bin_sums(idx: Tensor, conf: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin sample counts, confidence sums and correctness sums (float64 [n_bins])."""
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return counts, conf_sum, acc_sum


def _bins_from_confidence(conf: Tensor, correct: Tensor, n_bins: int) -> CalibrationBins:
    conf, correct = conf.cpu(), correct.cpu().to(torch.float64)  # [N], [N]
    edges, idx = _equal_width_index(conf, n_bins)  # [N] in 0 .. n_bins-1
    counts, conf_sum, acc_sum = _bin_sums(idx, conf, correct, n_bins)
    denom = counts.clamp(min=1)
    return CalibrationBins(edges, counts, acc_sum / denom, conf_sum / denom)


def adaptive_ece(conf: Tensor, correct: Tensor, n_bins: int) -> float:
    """Equal-mass ECE of top-1 confidences `conf` [N] and correctness `correct` [N] (see the
    module docstring for the bins). With N < n_bins some bins are empty and weigh nothing."""
    conf, correct = conf.cpu().to(torch.float64), correct.cpu().to(torch.float64)
    n = conf.numel()
    order = torch.sort(conf, stable=True).indices  # [N]
    # sorted position p lies in bin b when ⌊bN/B⌋ <= p < ⌊(b+1)N/B⌋
    bounds = torch.tensor([b * n // n_bins for b in range(1, n_bins)], dtype=torch.long)
    idx = torch.bucketize(torch.arange(n), bounds, right=True)  # [N] by sorted position
    counts, conf_sum, acc_sum = _bin_sums(idx, conf[order], correct[order], n_bins)
    return float((conf_sum - acc_sum).abs().sum() / n)  # Σ_b (n_b/N)|acc_b − conf_b|


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int) -> float:
    """Class-wise ECE (Kull et al. 2019) of probabilities `probs` [N, C], labels [N]."""
    p = probs.detach().cpu().to(torch.float64)  # [N, C]
    n, c = p.shape
    _, idx = _equal_width_index(p, n_bins)  # [N, C]
    onehot = torch.zeros_like(p).scatter_(1, labels.cpu().long()[:, None], 1.0)  # [N, C]
    flat = (idx + n_bins * torch.arange(c)[None, :]).reshape(-1)  # [N*C]: class k's bins at k*B..
    _, conf_sum, hit_sum = _bin_sums(flat, p.reshape(-1), onehot.reshape(-1), n_bins * c)
    # Σ_b (n_bk/N)|freq_bk − conf_bk| = Σ_b |hits_bk − Σp_bk| / N, then the mean over classes
    return float((hit_sum - conf_sum).abs().sum() / (n * c))


def calibration_bins(
    scores: Tensor, labels: Tensor, n_bins: int = DEFAULT_BINS, *, from_logits: bool = True
) -> CalibrationBins:
    """Bin samples by top-1 confidence. `scores` are logits [N, C], or probabilities if
    `from_logits=False`. Ties in the top score go to the lowest class index (torch.max)."""
    check_scores(scores, labels)
    check_bins(n_bins, "n_bins")
    scores = scores.detach().to(torch.float64)
    probs = scores.softmax(dim=1) if from_logits else scores  # [N, C]
    conf, pred = probs.max(dim=1)  # [N], [N]
    return _bins_from_confidence(conf, pred.eq(labels.to(pred.device)), n_bins)


def classification_metrics(
    logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BINS
) -> dict[str, float]:
    """The METRIC_KEYS and n from logits [N, C] and labels [N] (see the module docstring).

    Non-finite logits make every metric but `n` NaN (a diverged model should not crash an
    evaluation, and NaN is what its report should show).
    """
    check_scores(logits, labels)
    check_bins(n_bins, "n_bins")
    n, c = logits.shape
    z = logits.detach().to(torch.float64)  # [N, C]
    y = labels.detach().to(z.device, torch.long)  # [N]
    if not bool(torch.isfinite(z).all()):
        return {**dict.fromkeys(METRIC_KEYS, math.nan), "n": n}
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
        "adaece": adaptive_ece(conf, correct, n_bins),
        "cwece": classwise_ece(probs, y, n_bins),
        "rmsce": bins.rms(),
        "mce": bins.mce(),
        "brier": float(brier),
        "n": n,
    }
