"""`dist` against the DIST authors' code, written out here as the reference.

Reference: hunto/DIST_KD, `cosine_similarity`, `pearson_correlation`, `inter_class_relation`,
`intra_class_relation` and `DIST.forward` (y = softmax(z / tau); loss = tau²·(β·inter +
γ·intra)); the training loss adds CE against the label.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelenh.errors import LabelenhError
from labelenh.methods import MethodContext, MethodInputs, build_method

C = 7
CTX = MethodContext(epoch=0)


# --- the reference, transcribed from DIST_KD ---------------------------------------------------

def cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a, b, eps=1e-8):
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s, y_t):
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s, y_t):
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def ref_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss, inter_loss, intra_loss


# --- fixtures -------------------------------------------------------------------------------

def batch(B=16, seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    zs = (2.0 * torch.randn(B, C, generator=g)).double()
    zt = (3.0 * torch.randn(B, M, C, generator=g)).double()
    return zs, zt, y


def inputs(zt, y, hard=None):
    return MethodInputs(labels=y, hard=F.one_hot(y, C).double() if hard is None else hard, teacher_logits=zt)


@pytest.mark.parametrize("beta,gamma,T", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (0.5, 0.0, 2.0)])
def test_matches_the_authors_dist(beta, gamma, T):
    zs, zt, y = batch()
    m = build_method("dist", C, beta=beta, gamma=gamma, T=T)
    terms = m.loss(zs, inputs(zt, y), CTX)
    total, inter, intra = ref_dist(zs, zt[:, 0], beta, gamma, T)
    assert torch.allclose(terms["inter"], beta * inter, rtol=1e-10)
    assert torch.allclose(terms["intra"], gamma * intra, rtol=1e-10)
    assert torch.allclose(terms["inter"] + terms["intra"], total, rtol=1e-10)
    assert torch.allclose(terms["ce"], F.cross_entropy(zs, y))


def test_defaults_are_the_authors_and_w_ce_scales_ce():
    m = build_method("dist", C)
    assert (m.beta, m.gamma, m.T, m.w_ce) == (1.0, 1.0, 1.0, 1.0)
    zs, zt, y = batch(seed=1)
    assert torch.allclose(build_method("dist", C, w_ce=0.0).loss(zs, inputs(zt, y))["ce"], torch.zeros((), dtype=zs.dtype))


def test_a_teacher_equal_to_the_student_costs_nothing():
    zs, _, y = batch(seed=2)
    terms = build_method("dist", C, T=3.0).loss(zs, inputs(zs.unsqueeze(1).clone(), y))
    # not exactly 0: the 1e-8 under the product of norms (~1e-2 at T = 3) leaves ~1e-6 × T²
    assert 0 <= terms["inter"].item() < 1e-4 and 0 <= terms["intra"].item() < 1e-4
    far = build_method("dist", C, T=3.0).loss(zs, inputs(-zs.unsqueeze(1), y))
    assert far["inter"].item() > 1.0 and far["intra"].item() > 1.0  # anti-correlated: 1 − ρ > 1


@pytest.mark.parametrize("B", [1, 2])
def test_tiny_batches_stay_finite(B):
    """B = 2: each class's column has two values, so ρ is ±1 (or 0 for a constant column).
    B = 1: no spread along the batch: ρ = 0, the intra term is the constant 1, no gradient."""
    zs, zt, y = batch(B=B, seed=3)
    zs = zs.clone().requires_grad_(True)
    m = build_method("dist", C)
    terms = m.loss(zs, inputs(zt, y), CTX)
    total = sum(terms.values())
    (g,) = torch.autograd.grad(total, zs)
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(g).all()
    _, inter, intra = ref_dist(zs.detach(), zt[:, 0])
    assert torch.allclose(terms["inter"], inter) and torch.allclose(terms["intra"], intra)
    if B == 1:
        assert terms["intra"].item() == pytest.approx(1.0)
        (gi,) = torch.autograd.grad(m.loss(zs, inputs(zt, y))["intra"], zs, allow_unused=True)
        assert gi is None or gi.abs().max() < 1e-6
    else:
        ys, yt = F.softmax(zs.detach(), 1), F.softmax(zt[:, 0], 1)
        signs = torch.sign((ys[0] - ys[1]) * (yt[0] - yt[1]))  # ρ per column for two samples
        assert terms["intra"].item() == pytest.approx(1 - signs.mean().item(), abs=1e-6)


def test_uniform_rows_stay_finite():
    y = torch.tensor([0, 1, 2])
    zs = torch.zeros(3, C, requires_grad=True)
    zt = torch.zeros(3, 1, C)
    terms = build_method("dist", C).loss(zs, inputs(zt, y, F.one_hot(y, C).float()))
    (g,) = torch.autograd.grad(sum(terms.values()), zs)
    assert terms["inter"].item() == pytest.approx(1.0) and terms["intra"].item() == pytest.approx(1.0)
    assert torch.isfinite(g).all()


def test_mixed_labels_only_change_the_ce_part():
    zs, zt, y = batch(B=4, seed=4)
    hard = torch.zeros(4, C, dtype=torch.float64)
    hard[torch.arange(4), y] = 0.6
    hard[torch.arange(4), (y + 2) % C] += 0.4
    m = build_method("dist", C)
    mixed, plain = m.loss(zs, inputs(zt, y, hard)), m.loss(zs, inputs(zt, y))
    assert torch.allclose(mixed["inter"], plain["inter"]) and torch.allclose(mixed["intra"], plain["intra"])
    assert torch.allclose(mixed["ce"], -(hard * F.log_softmax(zs, 1)).sum(1).mean())


def test_ensemble_relations_use_the_ensemble_distribution():
    zs, zt, y = batch(seed=5, M=3)
    got = build_method("dist", C, T=2.0).loss(zs, inputs(zt, y))
    pbar = F.softmax(zt / 2.0, -1).mean(1)
    _, inter, intra = ref_dist(zs, 2.0 * pbar.log(), tau=2.0)  # 2·log p̄ is a logit for p̄ at τ = 2
    assert torch.allclose(got["inter"], inter, rtol=1e-9) and torch.allclose(got["intra"], intra, rtol=1e-9)


@pytest.mark.parametrize("params,word", [
    ({"beta": 0.0}, r"beta must be in \(0, inf\]"),
    ({"beta": -2.0}, "beta"),
    ({"gamma": -1.0}, r"gamma must be in \[0, inf\]"),
    ({"T": 0.0}, "T must be in"),
    ({"warmup": 5}, "has no parameter 'warmup'"),
    ({"alpha": 0.5}, "has no parameter 'alpha'"),
])
def test_bad_parameters_are_one_line(params, word):
    with pytest.raises(LabelenhError, match=word) as e:
        build_method("dist", C, **params)
    assert "\n" not in str(e.value) and "dist" in str(e.value)
