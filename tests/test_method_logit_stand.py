"""Logit standardisation (`logit_stand`) of the KD family against the CVPR 2024 code.

Reference: sunshangquan/logit-standardization-KD, `mdistiller/distillers/KD.py`: `normalize`
(z-score with the unbiased std and 1e-7) and `kd_loss(..., logit_stand=True)` (KL summed over
classes, averaged over the batch, times T²). Its training loss is CE_WEIGHT·CE(raw student
logits) + KD_WEIGHT·kd_loss. labelenh's kd/kd-sl write α·CE + (1 − α)·T²·KL.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelenh.losses import standardize
from labelenh.methods import METHODS, MethodContext, MethodInputs, build_method

C = 6
CTX = MethodContext(epoch=50)


def ref_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def ref_kd_loss(logits_student_in, logits_teacher_in, temperature, logit_stand):
    logits_student = ref_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = ref_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def batch(B=8, seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    zs = (4.0 * torch.randn(B, C, generator=g) + 1.0).double()
    zt = (6.0 * torch.randn(B, M, C, generator=g) - 2.0).double()
    return zs, MethodInputs(labels=y, hard=F.one_hot(y, C).double(), teacher_logits=zt)


def test_standardize_is_the_reference_normalize():
    zs, inp = batch()
    assert torch.allclose(standardize(zs), ref_normalize(zs), rtol=1e-12, atol=1e-12)
    assert torch.allclose(standardize(inp.teacher_logits), ref_normalize(inp.teacher_logits))
    # shift and scale free: the point of the method
    assert torch.allclose(standardize(3.0 * zs - 7.0), standardize(zs), atol=1e-6)


@pytest.mark.parametrize("name", ["kd", "kd-sl"])
@pytest.mark.parametrize("T", [2.0, 4.0])
def test_kd_with_logit_standardisation_matches_the_reference(name, T):
    zs, inp = batch(seed=1)
    alpha = 0.1 / 9.1  # the paper's CE 0.1 + KD 9, as labelenh's alpha up to a factor 9.1
    m = build_method(name, C, alpha=alpha, T=T, logit_stand=True)
    terms = m.loss(zs, inp, CTX)
    kd = ref_kd_loss(zs, inp.teacher_logits[:, 0], T, True)
    assert torch.allclose(terms["kd"], (1 - alpha) * kd, rtol=1e-9)
    assert torch.allclose(terms["ce"], alpha * F.cross_entropy(zs, inp.labels))
    ref_total = 0.1 * F.cross_entropy(zs, inp.labels) + 9.0 * kd
    assert torch.allclose(9.1 * (terms["ce"] + terms["kd"]), ref_total, rtol=1e-9)
    # and off by default: plain KD, which differs here
    off = build_method(name, C, alpha=alpha, T=T).loss(zs, inp, CTX)
    assert torch.allclose(off["kd"], (1 - alpha) * ref_kd_loss(zs, inp.teacher_logits[:, 0], T, False))
    assert not torch.allclose(off["kd"], terms["kd"])


def test_each_teacher_is_standardised_before_the_ensemble():
    zs, inp = batch(seed=2, M=3)
    m = build_method("kd-sl", C, alpha=0.0, T=2.0, logit_stand=True)
    pbar = F.softmax(ref_normalize(inp.teacher_logits) / 2.0, -1).mean(1)
    want = F.kl_div(F.log_softmax(ref_normalize(zs) / 2.0, -1), pbar, reduction="batchmean") * 4.0
    assert torch.allclose(m.loss(zs, inp, CTX)["kd"], want, rtol=1e-9)


def test_the_kd_family_has_the_option_off_by_default():
    family = {n for n, cls in METHODS.items() if "logit_stand" in cls.params}
    assert family == {"kd", "kd-sl", "dkd"}
    for n in family:
        assert METHODS[n].params["logit_stand"].default is False
        assert build_method(n, C, logit_stand="true").hparams["logit_stand"] is True


@pytest.mark.parametrize("name", ["kd", "kd-sl", "dkd"])
def test_a_row_of_equal_logits_stays_finite(name):
    """std 0: (z − mean) / (0 + 1e-7) is 0, a uniform softmax; the gradient stays finite."""
    y = torch.tensor([0, 1, 2])
    zs = torch.tensor([[2.0] * C, [0.0] * C, [-1.0, 0.0, 1.0, 2.0, 0.5, 0.0]], requires_grad=True)
    zt = torch.tensor([[[5.0] * C], [[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]], [[-3.0] * C]])
    inp = MethodInputs(labels=y, hard=F.one_hot(y, C).float(), teacher_logits=zt)
    terms = build_method(name, C, logit_stand=True).loss(zs, inp, CTX)
    total = sum(terms.values())
    (g,) = torch.autograd.grad(total, zs)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert torch.isfinite(g).all()
    assert torch.equal(standardize(zs.detach())[0], torch.zeros(C))  # a uniform softmax
    assert torch.allclose(standardize(zs.detach()), ref_normalize(zs.detach()))
