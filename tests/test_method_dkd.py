"""`dkd` against mdistiller's DKD, written out here as the reference.

Reference: megvii-research/mdistiller, `mdistiller/distillers/DKD.py::dkd_loss` and
`DKD.forward_train` (loss_ce = ce_loss_weight·CE; loss_dkd = min(epoch / warmup, 1)·dkd_loss,
with mdistiller's epochs counted from 1).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labelenh.errors import LabelenhError
from labelenh.methods import MethodContext, MethodInputs, build_method

C = 6


# --- the reference, transcribed from mdistiller ------------------------------------------------

def _gt_mask(logits, target):
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 1).bool()


def _other_mask(logits, target):
    return torch.ones_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def ref_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _gt_mask(logits_student, target)
    other_mask = _other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
                 * (temperature**2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature**2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


def ref_forward_train(zs, zt, y, epoch_1based, *, alpha=1.0, beta=8.0, T=4.0, warmup=20, ce=1.0):
    loss_ce = ce * F.cross_entropy(zs, y)
    loss_dkd = min(epoch_1based / warmup, 1.0) * ref_dkd_loss(zs, zt, y, alpha, beta, T)
    return loss_ce, loss_dkd


# --- fixtures -------------------------------------------------------------------------------

def batch(B=8, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    zs = (scale * torch.randn(B, C, generator=g)).double()
    zt = (scale * torch.randn(B, C, generator=g)).double()
    return zs, zt, y


def inputs(zt, y, hard=None):
    hard = F.one_hot(y, C).double() if hard is None else hard
    t = zt.unsqueeze(1) if zt.ndim == 2 else zt
    return MethodInputs(labels=y, hard=hard, teacher_logits=t)


def kd_part(terms):
    return terms["tckd"] + terms["nckd"]


# --- golden values ----------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.5, 7.0)])
def test_matches_mdistiller_dkd_loss(alpha, beta, T):
    zs, zt, y = batch()
    m = build_method("dkd", C, alpha=alpha, beta=beta, T=T, warmup=0)
    terms = m.loss(zs, inputs(zt, y), MethodContext(epoch=100))
    want = ref_dkd_loss(zs, zt, y, alpha, beta, T)
    assert torch.allclose(kd_part(terms), want, rtol=1e-9, atol=1e-12)
    assert torch.allclose(terms["ce"], F.cross_entropy(zs, y))
    # the two parts separately: TCKD alone (β → tiny) and NCKD alone (α = 0)
    only_n = build_method("dkd", C, alpha=0.0, beta=beta, T=T, warmup=0).loss(zs, inputs(zt, y))
    assert torch.allclose(only_n["nckd"], ref_dkd_loss(zs, zt, y, 0.0, beta, T), rtol=1e-9)
    assert only_n["tckd"].item() == 0.0


@pytest.mark.parametrize("epoch", [0, 10, 30])
def test_warmup_factor_matches_mdistiller(epoch):
    """labelenh's epoch e (from 0) is mdistiller's epoch e + 1 (from 1): factor min((e + 1)/20, 1)."""
    zs, zt, y = batch(seed=1)
    m = build_method("dkd", C)  # alpha 1, beta 8, T 4, warmup 20, w_ce 1
    terms = m.loss(zs, inputs(zt, y), MethodContext(epoch=epoch))
    ce, kd = ref_forward_train(zs, zt, y, epoch + 1)
    assert torch.allclose(terms["ce"], ce)
    assert torch.allclose(kd_part(terms), kd, rtol=1e-9)
    factor = {0: 1 / 20, 10: 11 / 20, 30: 1.0}[epoch]
    full = ref_dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    assert kd_part(terms).item() == pytest.approx(factor * full.item(), rel=1e-9)


def test_the_factor_at_mdistiller_epochs_0_10_30():
    """mdistiller's own numbers, min(epoch / 20, 1) at its epochs 0, 10 and 30: labelenh's
    epochs -1 (never trained), 9 and 29."""
    zs, zt, y = batch(seed=2)
    m = build_method("dkd", C)
    full = ref_dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    for md_epoch, factor in ((10, 0.5), (30, 1.0)):
        got = kd_part(m.loss(zs, inputs(zt, y), MethodContext(epoch=md_epoch - 1)))
        assert got.item() == pytest.approx(factor * full.item(), rel=1e-9)
    assert m.ramp(MethodContext(epoch=-1)) == 0.0  # mdistiller epoch 0: the KD terms are off


def test_warmup_zero_means_no_ramp_and_a_missing_context_is_named():
    zs, zt, y = batch(seed=3)
    terms = build_method("dkd", C, warmup=0).loss(zs, inputs(zt, y))  # no context needed
    assert torch.allclose(kd_part(terms), ref_dkd_loss(zs, zt, y, 1.0, 8.0, 4.0))
    with pytest.raises(LabelenhError, match="MethodContext"):
        build_method("dkd", C).loss(zs, inputs(zt, y))


def test_weights_and_ce_weight():
    zs, zt, y = batch(seed=4)
    m = build_method("dkd", C, w_ce=0.25, warmup=0)
    assert torch.allclose(m.loss(zs, inputs(zt, y))["ce"], 0.25 * F.cross_entropy(zs, y))


# --- degenerate inputs -----------------------------------------------------------------------

def test_teacher_with_all_its_mass_on_a_wrong_class_stays_finite():
    zs, _, y = batch(B=4, seed=5, scale=1.0)
    zt = torch.zeros(4, C, dtype=torch.float64)
    wrong = (y + 1) % C
    zt[torch.arange(4), wrong] = 1000.0  # softmax is exactly one-hot on a wrong class
    zs = zs.clone().requires_grad_(True)
    m = build_method("dkd", C, warmup=0)
    terms = m.loss(zs, inputs(zt, y))
    total = sum(terms.values())
    (g,) = torch.autograd.grad(total, zs)
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(g).all()
    assert torch.allclose(kd_part(terms), ref_dkd_loss(zs, zt, y, 1.0, 8.0, 4.0), rtol=1e-6)
    # TCKD with b_t = [0, 1] is −log(1 − p_s(y))·T²: the student is pushed off the label
    p = F.softmax(zs.detach() / 4.0, dim=1)[torch.arange(4), y]
    assert terms["tckd"].item() == pytest.approx((-torch.log1p(-p)).mean().item() * 16, rel=1e-9)


def test_saturated_teacher_and_student_stay_finite_where_the_reference_does_not():
    y = torch.tensor([0, 1])
    zt = torch.tensor([[1e4, 0, 0, 0, 0, 0], [0, 1e4, 0, 0, 0, 0]], dtype=torch.float32)
    zs = torch.tensor([[-1e4, 0, 0, 0, 0, 0], [0, 2e4, 0, 0, 0, 0]], dtype=torch.float32)
    zs.requires_grad_(True)
    terms = build_method("dkd", C, warmup=0).loss(zs, inputs(zt, y, F.one_hot(y, C).float()))
    total = sum(terms.values())
    (g,) = torch.autograd.grad(total, zs)
    assert torch.isfinite(total) and torch.isfinite(g).all()
    ref = ref_dkd_loss(zs.detach(), zt, y, 1.0, 8.0, 4.0)  # log(0) in the binary split
    assert not torch.isfinite(ref)


# --- mixed labels, ensembles, logit standardisation -----------------------------------------

def test_mixed_label_is_the_label_weighted_sum():
    zs, zt, _ = batch(B=2, seed=6)
    hard = torch.zeros(2, C, dtype=torch.float64)
    hard[0, 1], hard[0, 4] = 0.7, 0.3
    hard[1, 2] = 1.0
    m = build_method("dkd", C, warmup=0)
    terms = m.loss(zs, MethodInputs(labels=torch.tensor([1, 2]), hard=hard, teacher_logits=zt.unsqueeze(1)))
    # per sample: Σ_c w_c·DKD(c); the reference is a batch mean, so rebuild it row by row
    rows = []
    for i, parts in enumerate([[(1, 0.7), (4, 0.3)], [(2, 1.0)]]):
        rows.append(sum(w * ref_dkd_loss(zs[i:i + 1], zt[i:i + 1], torch.tensor([c]), 1.0, 8.0, 4.0)
                        for c, w in parts))
    assert torch.allclose(kd_part(terms), torch.stack(rows).mean(), rtol=1e-9)
    want_ce = -(hard * F.log_softmax(zs, 1)).sum(1).mean()
    assert torch.allclose(terms["ce"], want_ce)


def test_ensemble_teacher_uses_the_ensemble_distribution():
    zs, _, y = batch(B=5, seed=7)
    zt = 3.0 * torch.randn(5, 3, C, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    m = build_method("dkd", C, warmup=0, ensemble="logit-mean")
    got = kd_part(m.loss(zs, inputs(zt, y)))
    assert torch.allclose(got, ref_dkd_loss(zs, zt.mean(1), y, 1.0, 8.0, 4.0), rtol=1e-9)
    # prob-mean: log of the mean softmax at T is a valid "logit" for the reference
    pm = kd_part(build_method("dkd", C, warmup=0).loss(zs, inputs(zt, y)))
    logit = 4.0 * torch.log(F.softmax(zt / 4.0, -1).mean(1))
    assert torch.allclose(pm, ref_dkd_loss(zs, logit, y, 1.0, 8.0, 4.0), rtol=1e-9)


def ref_normalize(logit):
    """sunshangquan/logit-standardization-KD, `normalize` (DKD.py / KD.py)."""
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def test_logit_standardisation_matches_the_cvpr2024_dkd():
    """Their dkd_loss(logit_stand=True) normalises both logits, then runs mdistiller's formula."""
    zs, zt, y = batch(seed=9)
    m = build_method("dkd", C, warmup=0, T=2.0, alpha=9.0, beta=72.0, logit_stand=True)
    got = kd_part(m.loss(zs, inputs(zt, y)))
    want = ref_dkd_loss(ref_normalize(zs), ref_normalize(zt), y, 9.0, 72.0, 2.0)
    assert torch.allclose(got, want, rtol=1e-7)
    assert torch.allclose(m.loss(zs, inputs(zt, y))["ce"], F.cross_entropy(zs, y))  # CE on raw logits


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("params,word", [
    ({"beta": 0.0}, r"beta must be in \(0, inf\]"),
    ({"beta": -1.0}, "beta"),
    ({"warmup": -1}, r"warmup must be in \[0, 1e6\]"),
    ({"warmup": 2.5}, "warmup must be a int"),
    ({"T": 0.0}, "T must be in"),
    ({"T": -4.0}, "T must be in"),
    ({"alpha": -0.5}, "alpha"),
    ({"w_ce": float("nan")}, "w_ce"),
    ({"gamma": 1.0}, "has no parameter 'gamma'"),
    ({"ensemble": "vote"}, "ensemble must be one of"),
    ({"logit_stand": "maybe"}, "logit_stand must be a bool"),
])
def test_bad_parameters_are_one_line(params, word):
    with pytest.raises(LabelenhError, match=word) as e:
        build_method("dkd", C, **params)
    assert "\n" not in str(e.value) and "dkd" in str(e.value)


def test_a_float_teacher_in_float16_is_read_as_float32():
    zs, zt, y = batch(seed=10)
    m = build_method("dkd", C, warmup=0)
    a = kd_part(m.loss(zs.float(), inputs(zt.half(), y, F.one_hot(y, C).float())))
    b = ref_dkd_loss(zs.float(), zt.half().float(), y, 1.0, 8.0, 4.0)
    assert a.dtype == torch.float32 and math.isclose(a.item(), b.item(), rel_tol=1e-5)
