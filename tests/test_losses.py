"""Golden-value tests for the pure losses, against hand numbers, numpy and torch's own losses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelenh.errors import LabelenhError
from labelenh.losses import ensemble_probs, kd_kl, soft_cross_entropy


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_soft_cross_entropy_hand_case():
    # p = softmax([0, ln 4]) = [0.2, 0.8]; target [0.3, 0.7]
    logits = torch.tensor([[0.0, math.log(4.0)]])
    target = torch.tensor([[0.3, 0.7]])
    want = -(0.3 * math.log(0.2) + 0.7 * math.log(0.8))
    assert soft_cross_entropy(logits, target).item() == pytest.approx(want, rel=1e-6)


def test_soft_cross_entropy_matches_torch_and_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 3, 1])
    onehot = F.one_hot(y, 7).double()
    # one-hot target == integer-label CE; probability target == torch's soft-target CE
    assert torch.allclose(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, y))
    q = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    assert torch.allclose(soft_cross_entropy(logits, q), F.cross_entropy(logits, q))
    # a negative-mass target (NLS) is taken as it is, not renormalised or clipped
    neg = 1.5 * onehot - 0.5 / 7
    want = -(neg.numpy() * np_log_softmax(logits.numpy())).sum(-1).mean()
    assert soft_cross_entropy(logits, neg).item() == pytest.approx(want, rel=1e-12)


def test_soft_cross_entropy_half_precision_logits_are_upcast():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[0.1, 0.2, 0.7]])
    out = soft_cross_entropy(logits.half(), target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(soft_cross_entropy(logits, target).item(), rel=1e-3)


def test_soft_cross_entropy_shape_mismatch():
    with pytest.raises(LabelenhError, match="same"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


def test_kd_kl_hand_case_and_torch_batchmean():
    T = 2.0
    zs = torch.tensor([[0.0, 2.0 * math.log(4.0)], [1.0, 1.0]])  # at T = 2: [0.2, 0.8], [0.5, 0.5]
    pt = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    kl0 = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    kl1 = 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5)
    want = T * T * (kl0 + kl1) / 2  # sum over classes, mean over the batch of 2
    assert kd_kl(zs, pt, T).item() == pytest.approx(want, rel=1e-6)
    ref = F.kl_div(F.log_softmax(zs / T, -1), pt, reduction="batchmean") * T * T
    assert torch.allclose(kd_kl(zs, pt, T), ref)


def test_kd_kl_elementwise_mean_is_batchmean_over_C():
    g = torch.Generator().manual_seed(1)
    C = 10
    zs = torch.randn(6, C, generator=g)
    pt = torch.softmax(torch.randn(6, C, generator=g) / 3, -1)
    bm = kd_kl(zs, pt, 3.0)
    em = kd_kl(zs, pt, 3.0, reduction="elementwise-mean")
    assert torch.allclose(em * C, bm, rtol=1e-5)
    # the quirk: torch's (pre-2.x-change) default KLDivLoss() mean over all B·C elements
    p, lq = pt.double().numpy(), np_log_softmax(zs.numpy() / 3)
    ref = 9 * (p * (np.log(p) - lq)).mean()
    assert em.item() == pytest.approx(ref, rel=1e-5)


def test_kd_kl_zero_at_match_and_gradient_formula():
    T, B = 4.0, 3
    g = torch.Generator().manual_seed(2)
    zt = torch.randn(B, 5, generator=g, dtype=torch.float64)
    pt = torch.softmax(zt / T, -1)
    assert kd_kl(zt, pt, T).item() == pytest.approx(0.0, abs=1e-12)
    # d/dz_s [T² · batchmean KL] = T · (softmax(z_s/T) − p_t) / B
    zs = torch.randn(B, 5, generator=g, dtype=torch.float64, requires_grad=True)
    kd_kl(zs, pt, T).backward()
    want = T * (torch.softmax(zs.detach() / T, -1) - pt) / B
    assert torch.allclose(zs.grad, want)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_kd_kl_bad_temperature(T):
    with pytest.raises(LabelenhError, match="T must be"):
        kd_kl(torch.zeros(1, 2), torch.full((1, 2), 0.5), T)


def test_kd_kl_unknown_reduction():
    with pytest.raises(LabelenhError, match="batchmean"):
        kd_kl(torch.zeros(1, 2), torch.full((1, 2), 0.5), 1.0, reduction="mean")


def test_ensemble_probs_hand_case():
    # teacher 1: softmax([0, 0]) = [0.5, 0.5]; teacher 2: softmax([0, ln 9]) = [0.1, 0.9]
    z = torch.tensor([[[0.0, 0.0], [0.0, math.log(9.0)]]])  # [1, 2, 2]
    assert torch.allclose(ensemble_probs(z, 1.0, "prob-mean"), torch.tensor([[0.3, 0.7]]))
    # mean logits [0, ln 3] -> [0.25, 0.75]
    assert torch.allclose(ensemble_probs(z, 1.0, "logit-mean"), torch.tensor([[0.25, 0.75]]))
    # T = 2: teacher 2 -> softmax([0, ln 3]) = [0.25, 0.75]; prob-mean [0.375, 0.625]
    assert torch.allclose(ensemble_probs(z, 2.0), torch.tensor([[0.375, 0.625]]))
    # logit-mean at T = 2: softmax([0, ln 9 / 4]) = [1, √3] / (1 + √3)
    s3 = math.sqrt(3.0)
    want = torch.tensor([[1 / (1 + s3), s3 / (1 + s3)]])
    assert torch.allclose(ensemble_probs(z, 2.0, "logit-mean"), want)


def test_ensemble_probs_single_teacher_and_2d_input():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, generator=g)
    want = torch.softmax(z / 2.5, -1)
    for rule in ("prob-mean", "logit-mean"):
        assert torch.allclose(ensemble_probs(z.unsqueeze(1), 2.5, rule), want)
        assert torch.allclose(ensemble_probs(z, 2.5, rule), want)
    assert ensemble_probs(z.half(), 1.0).dtype == torch.float32


def test_ensemble_probs_bad_input():
    z = torch.zeros(2, 3, 4)
    with pytest.raises(LabelenhError, match="ensemble rule"):
        ensemble_probs(z, 1.0, "median")
    with pytest.raises(LabelenhError, match="T must be"):
        ensemble_probs(z, 0.0)
    with pytest.raises(LabelenhError, match=r"\[B, M, C\]"):
        ensemble_probs(torch.zeros(2, 3, 4, 5), 1.0)
