"""`--ensemble confidence`: per-sample teacher weights in the manner of CA-MKD.

Reference: Zhang, Chen & Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation"
(ICASSP 2022), code `train_student.py`: with CE_k the (unreduced) cross-entropy of teacher k
on the label, `weight = (1.0 - softmax(loss_t, dim=0)) / (teacher_num - 1)`, and the KD term
is Σ_k weight_k·KL_k. For a distribution target, labelenh mixes the teachers' tempered
softmaxes with those weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labelenh.errors import LabelenhError
from labelenh.losses import confidence_weights, ensemble_log_probs, ensemble_probs
from labelenh.methods import METHODS, MethodContext, MethodInputs, build_method

C = 5


def ref_weights(teacher_logits, y):
    """CA-MKD's weights, per sample: teacher_logits [B, M, C], y [B] -> [B, M]."""
    M = teacher_logits.shape[1]
    loss_t = torch.stack([F.cross_entropy(teacher_logits[:, k], y, reduction="none") for k in range(M)], 0)
    return ((1.0 - F.softmax(loss_t, dim=0)) / (M - 1)).t()


def teachers(B=6, M=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    return 3.0 * torch.randn(B, M, C, generator=g).double(), y


def test_hand_case_two_teachers():
    # teacher 0 gives the label p = 0.8, teacher 1 gives it 0.2: CE ln 1.25 vs ln 5
    z = torch.tensor([[[math.log(0.8), math.log(0.2)], [math.log(0.2), math.log(0.8)]]])
    w = confidence_weights(z, torch.tensor([[1.0, 0.0]]))
    s0 = 1 / (1 + math.exp(math.log(5) - math.log(1.25)))  # softmax of the CEs, teacher 0
    assert torch.allclose(w, torch.tensor([[1 - s0, s0]]).to(w.dtype))
    assert w[0, 0] > w[0, 1]  # the teacher that is surer of the label weighs more
    p = ensemble_probs(z, 1.0, "confidence", hard=torch.tensor([[1.0, 0.0]]))
    want = (1 - s0) * torch.tensor([0.8, 0.2]) + s0 * torch.tensor([0.2, 0.8])
    assert torch.allclose(p[0], want.to(p.dtype))


@pytest.mark.parametrize("M", [2, 3, 5])
def test_weights_match_ca_mkd(M):
    z, y = teachers(M=M)
    w = confidence_weights(z, F.one_hot(y, C).double())
    assert torch.allclose(w, ref_weights(z, y))
    assert torch.allclose(w.sum(1), torch.ones(len(y), dtype=w.dtype))
    assert (w >= 0).all()


def test_one_teacher_gets_weight_one_and_every_rule_agrees():
    z, y = teachers(M=1)
    hard = F.one_hot(y, C).double()
    assert torch.equal(confidence_weights(z, hard), torch.ones(len(y), 1, dtype=z.dtype))
    for T in (1.0, 3.0):
        want = F.softmax(z[:, 0] / T, -1)
        assert torch.allclose(ensemble_probs(z, T, "confidence", hard=hard), want)


def test_mixed_label_weights_use_the_mixed_cross_entropy():
    z, y = teachers(B=1, M=2, seed=1)
    hard = torch.zeros(1, C, dtype=torch.float64)
    hard[0, 0], hard[0, 3] = 0.6, 0.4
    ce = -(hard.unsqueeze(1) * F.log_softmax(z, -1)).sum(-1)  # [1, 2]
    want = (1 - F.softmax(ce, 1)) / 1
    assert torch.allclose(confidence_weights(z, hard), want)


def test_log_space_form_agrees_and_temperature_applies_after_weighting():
    z, y = teachers(seed=2)
    hard = F.one_hot(y, C).double()
    w = ref_weights(z, y)  # from the raw logits, whatever T
    for T in (1.0, 4.0):
        p = ensemble_probs(z, T, "confidence", hard=hard)
        assert torch.allclose(p, (w.unsqueeze(-1) * F.softmax(z / T, -1)).sum(1))
        assert torch.allclose(ensemble_log_probs(z, T, "confidence", hard=hard).exp(), p)


def test_every_teacher_method_offers_it_and_it_reaches_the_loss():
    users = sorted(n for n, cls in METHODS.items() if "ensemble" in cls.params)
    assert users == ["dist", "dkd", "en-sl", "ils", "kd", "kd-sl", "sl"]
    z, y = teachers(seed=3)
    inp = MethodInputs(labels=y, hard=F.one_hot(y, C).double(), teacher_logits=z)
    zs = torch.randn(len(y), C, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = build_method("en-sl", C, ensemble="confidence").target(inp)
    assert torch.allclose(target, (ref_weights(z, y).unsqueeze(-1) * F.softmax(z, -1)).sum(1))
    for name in users:
        a = sum(build_method(name, C, ensemble="confidence").loss(zs, inp, MethodContext(epoch=99)).values())
        b = sum(build_method(name, C).loss(zs, inp, MethodContext(epoch=99)).values())
        assert torch.isfinite(a) and not torch.allclose(a, b), name


def test_it_needs_the_label():
    z, _ = teachers()
    with pytest.raises(LabelenhError, match="confidence"):
        ensemble_probs(z, 1.0, "confidence")


def test_kl_to_the_weighted_mixture_has_ca_mkds_gradient():
    """CA-MKD sums w_k·KL(p_k ‖ p_s); the KL to Σ_k w_k·p_k differs from it by a constant in
    the student (the teachers' entropies), so the student's gradient is the same."""
    z, y = teachers(seed=5)
    hard = F.one_hot(y, C).double()
    T = 4.0
    zs = torch.randn(len(y), C, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    w = ref_weights(z, y)
    log_ps = F.log_softmax(zs / T, -1)
    ca_mkd = sum((w[:, k] * F.kl_div(log_ps, F.softmax(z[:, k] / T, -1), reduction="none").sum(1)).mean()
                 for k in range(z.shape[1]))
    mixture = F.kl_div(log_ps, ensemble_probs(z, T, "confidence", hard=hard), reduction="batchmean")
    (g1,) = torch.autograd.grad(ca_mkd, zs, retain_graph=True)
    (g2,) = torch.autograd.grad(mixture, zs)
    assert torch.allclose(g1, g2) and not torch.allclose(ca_mkd, mixture)
