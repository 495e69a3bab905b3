"""Adaptive, class-wise and RMS calibration error against direct and independent
computations (and torchmetrics where it defines the same quantity); temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from labelenh.errors import LabelenhError
from labelenh.metrics import (
    METRIC_KEYS,
    adaptive_ece,
    check_bins,
    classification_metrics,
    classwise_ece,
)
from labelenh.temperature import (
    T_MAX,
    T_MIN,
    TS_KEYS,
    fit_temperature,
    nll_at,
    scaled_metrics,
)


def _data(seed: int, n: int, c: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.6
    return z, torch.where(agree, z.argmax(1), y)


def _calibrated(seed: int, n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution: y ~ Categorical(softmax(z))."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z, y


# ------------------------------------------------------------------ reference implementations
def _adaptive_ece_direct(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Equal-mass bins by slicing the sorted samples, one bin at a time."""
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], correct[order].astype(float)
    n, total = len(conf), 0.0
    for b in range(n_bins):
        lo, hi = (b * n) // n_bins, ((b + 1) * n) // n_bins
        if hi > lo:
            total += (hi - lo) / n * abs(correct[lo:hi].mean() - conf[lo:hi].mean())
    return total


def _classwise_ece_loops(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Kull et al. 2019, written with Python loops and np.digitize (not torch.bucketize)."""
    n, c = p.shape
    edges = np.linspace(0, 1, n_bins + 1)
    per_class = []
    for k in range(c):
        pk, hit = p[:, k], (y == k).astype(float)
        b = np.clip(np.digitize(pk, edges[1:-1], right=False), 0, n_bins - 1)
        e = 0.0
        for j in range(n_bins):
            m = b == j
            if m.any():
                e += m.sum() / n * abs(hit[m].mean() - pk[m].mean())
        per_class.append(e)
    return float(np.mean(per_class))


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("seed,n,c,n_bins", [(0, 500, 10, 15), (1, 301, 100, 10), (2, 97, 3, 7),
                                             (3, 10, 4, 15), (4, 2000, 10, 2)])
def test_adaptive_ece_equals_a_direct_equal_mass_computation(seed, n, c, n_bins) -> None:
    z, y = _data(seed, n, c)
    conf, pred = z.softmax(1).max(1)
    ours = adaptive_ece(conf, pred.eq(y), n_bins)
    assert ours == pytest.approx(_adaptive_ece_direct(conf.numpy(), pred.eq(y).numpy(), n_bins),
                                 abs=1e-12)
    assert classification_metrics(z, y, n_bins)["adaece"] == pytest.approx(ours, abs=1e-15)


def test_adaptive_ece_by_hand_and_equal_to_ece_when_bins_coincide() -> None:
    # 4 samples, 2 equal-mass bins: {0.3 wrong, 0.4 right} and {0.8 right, 0.9 right}
    conf = torch.tensor([0.9, 0.3, 0.8, 0.4], dtype=torch.float64)
    correct = torch.tensor([True, False, True, True])
    assert adaptive_ece(conf, correct, 2) == pytest.approx(0.5 * abs(0.5 - 0.35) + 0.5 * abs(1 - 0.85))
    # confidences at the centres of 5 equal-width bins, 40 samples each: the equal-mass bins
    # are the equal-width bins, so the two ECEs agree
    gen = np.random.default_rng(0)
    centres = np.repeat(np.arange(5) * 0.2 + 0.1, 40)
    correct = torch.from_numpy(gen.random(200) < 0.5)
    conf = torch.from_numpy(centres)
    from labelenh.metrics import _bins_from_confidence

    assert adaptive_ece(conf, correct, 5) == pytest.approx(
        _bins_from_confidence(conf, correct, 5).ece(), abs=1e-12)


@pytest.mark.parametrize("seed,n,c,n_bins", [(0, 400, 10, 15), (1, 300, 100, 15), (2, 200, 2, 5),
                                             (5, 50, 7, 20)])
def test_classwise_ece_equals_an_independent_implementation(seed, n, c, n_bins) -> None:
    z, y = _data(seed, n, c)
    p = z.softmax(1)
    ours = classification_metrics(z, y, n_bins)["cwece"]
    assert ours == pytest.approx(_classwise_ece_loops(p.numpy(), y.numpy(), n_bins), abs=1e-12)
    assert classwise_ece(p, y, n_bins) == pytest.approx(ours, abs=1e-15)


def test_classwise_ece_by_hand_over_all_classes() -> None:
    # 2 samples, 3 classes, 2 bins [0, .5) [.5, 1]
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    # class 0: {0.2 (y=0)} in bin 0, {0.6 (y=0)} in bin 1 -> 0.5*|1-.2| + 0.5*|1-.6| = 0.6
    # class 1: both in bin 0, mean p .25, share of class 1 0 -> 0.25
    # class 2: 0.1 in bin 0 (gap .1), 0.6 in bin 1 (gap .6) -> 0.5*.1 + 0.5*.6 = 0.35
    assert classwise_ece(p, y, 2) == pytest.approx((0.6 + 0.25 + 0.35) / 3)
    # the per-true-class variant would ignore classes 1 and 2 (no sample has those labels)


@pytest.mark.parametrize("seed,n,c,n_bins", [(0, 500, 10, 15), (1, 300, 100, 10), (2, 400, 3, 4)])
def test_rms_calibration_error_equals_torchmetrics_l2(seed, n, c, n_bins) -> None:
    z, y = _data(seed, n, c)
    ref = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="l2")(z, y)
    assert classification_metrics(z, y, n_bins)["rmsce"] == pytest.approx(float(ref), abs=2e-6)


def test_metric_order_ece_rms_mce() -> None:
    z, y = _data(7, 500, 10)
    m = classification_metrics(z, y)
    assert set(METRIC_KEYS) <= set(m)
    # the weighted L1 <= weighted L2 <= max norms of the same bin gaps
    assert m["ece"] <= m["rmsce"] + 1e-12 <= m["mce"] + 2e-12


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "15", None, 10**4 + 1])
def test_fewer_than_two_bins_is_a_labelenh_error(bad) -> None:
    with pytest.raises(LabelenhError, match=r"\[2, 1e4\]"):
        check_bins(bad)
    z, y = _data(0, 20, 3)
    with pytest.raises(LabelenhError):
        classification_metrics(z, y, n_bins=bad)


# ------------------------------------------------------------------ temperature scaling
@pytest.mark.parametrize("multiple", [0.5, 2.5, 4.0])
def test_ts_recovers_the_multiple_of_calibrated_logits(multiple: float) -> None:
    z, y = _calibrated(0, 20_000, 10)
    t = fit_temperature(z * multiple, y)
    # the MLE of T from 20k samples: a few tenths of a percent of spread
    assert t == pytest.approx(multiple, rel=0.03)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("seed", range(8))
def test_ts_never_worsens_nll_and_beats_a_dense_grid(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(20, 400, (1,), generator=gen)), int(torch.randint(2, 30, (1,), generator=gen))
    z, y = _data(seed, n, c, scale=float(torch.rand(1, generator=gen)) * 8 + 0.1)
    t = fit_temperature(z, y)
    assert T_MIN <= t <= T_MAX
    assert nll_at(z, y, t) <= nll_at(z, y, 1.0)
    grid = np.exp(np.linspace(math.log(T_MIN), math.log(T_MAX), 2001))
    assert nll_at(z, y, t) <= min(nll_at(z, y, float(g)) for g in grid) + 1e-9


def test_ts_bounds_and_degenerate_inputs() -> None:
    # every sample right with a margin: sharper is always better, T stops at the lower bound
    z = torch.eye(4, dtype=torch.float64).repeat(10, 1) * 3
    y = torch.arange(4).repeat(10)
    assert fit_temperature(z, y) == pytest.approx(T_MIN, rel=1e-5)
    # the same logits, every label wrong: flatter is always better, T stops at the upper bound
    assert fit_temperature(z, (y + 1) % 4) == pytest.approx(T_MAX, rel=1e-5)
    # all-equal logits: NLL does not depend on T, and T = 1 is kept
    assert fit_temperature(torch.zeros(5, 3), torch.tensor([0, 1, 2, 0, 1])) == 1.0
    bad = z.clone()
    bad[0, 0] = float("inf")
    assert math.isnan(fit_temperature(bad, y))
    m = scaled_metrics(bad, y, math.nan)
    assert math.isnan(m["temperature"]) and all(math.isnan(m[f"{k}_ts"]) for k in TS_KEYS)


def test_metrics_after_ts_are_the_metrics_of_scaled_logits() -> None:
    z, y = _data(3, 600, 10, scale=5.0)
    t = fit_temperature(z, y)
    assert t > 1.5  # over-confident random logits: TS must soften them
    after = scaled_metrics(z, y, t, n_bins=12)
    direct = classification_metrics(z / t, y, n_bins=12)
    for k in TS_KEYS:
        assert after[f"{k}_ts"] == direct[k]
    assert after["temperature"] == t
    before = classification_metrics(z, y, n_bins=12)
    assert direct["acc1"] == before["acc1"] and direct["acc5"] == before["acc5"]
    # TS minimises NLL; ECE usually falls with it but need not (it does not here)
    assert after["nll_ts"] < before["nll"]
