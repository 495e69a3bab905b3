"""Target methods: a contract test over the whole registry, then each method against its formula."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelenh.errors import LabelenhError
from labelenh.losses import soft_cross_entropy
from labelenh.methods import METHODS, Method, MethodContext, MethodInputs, build_method

C = 5


def onehot_inputs(B=6, C=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (B,), generator=g)
    return MethodInputs(labels=labels, hard=F.one_hot(labels, C).float())


def mixed_inputs(C=C):
    # rows as mixing views produce them: mixup (2 sources), ricap (4), a same-class pair, one-hot
    hard = torch.tensor(
        [
            [0.7, 0.3, 0.0, 0.0, 0.0],
            [0.1, 0.2, 0.3, 0.0, 0.4],
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.45, 0.55],
        ]
    )[:, :C]
    return MethodInputs(labels=torch.tensor([0, 4, 2, 3]), hard=hard)


def with_teachers(inp, M, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    B, C = inp.hard.shape
    t = scale * torch.randn(B, M, C, generator=g)
    return MethodInputs(labels=inp.labels, hard=inp.hard, teacher_logits=t)


def student_logits(B, C=C, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(B, C, generator=g)).requires_grad_(True)


def contract_cases():
    for name in sorted(METHODS):
        for hard in ("onehot", "mixed"):
            Ms = (1, 3) if METHODS[name].teacher != "none" else (0,)
            for M in Ms:
                yield pytest.param(name, hard, M, id=f"{name}-{hard}-M{M}")


CTX = MethodContext(epoch=3, step=1, steps_per_epoch=4)


def check_target_and_loss(m: Method, logits, inp):
    B = inp.hard.shape[0]
    if m.has_target:
        q = m.target(inp)
        assert q.shape == (B, C)
        assert torch.isfinite(q).all()
        assert torch.allclose(q.sum(-1), torch.ones(B), atol=1e-5)
        if not m.allows_negative:
            assert (q >= 0).all()
    else:  # a loss that is not a soft CE against one target says so, by name
        with pytest.raises(LabelenhError, match="no single target"):
            m.target(inp)
    terms = m.loss(logits, inp, CTX)
    assert isinstance(terms, dict) and terms
    for k, v in terms.items():
        assert isinstance(k, str) and v.ndim == 0 and torch.isfinite(v), (k, v)
    total = sum(terms.values())
    (grad,) = torch.autograd.grad(total, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    return total.detach()


@pytest.mark.parametrize("name,hard,M", list(contract_cases()))
def test_contract(name, hard, M):
    inp = onehot_inputs() if hard == "onehot" else mixed_inputs()
    if M:
        inp = with_teachers(inp, M)
    m = build_method(name, C)
    assert m.name == name and m.teacher in ("none", "store", "online")
    logits = student_logits(inp.hard.shape[0])
    check_target_and_loss(m, logits, inp)
    # after one epoch of statistics (a no-op for stateless methods) the contract still holds
    m.observe(logits.detach(), inp)
    m.epoch_end()
    total = check_target_and_loss(m, logits, inp)
    # state round trip: a fresh method loaded from the state gives the same loss
    m2 = build_method(name, C)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(sum(m2.loss(logits, inp, CTX).values()).detach(), total)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_params_are_declared_and_recorded(name):
    cls = METHODS[name]
    for key, spec in cls.params.items():
        assert spec.type in (float, int, str, bool) and isinstance(spec.default, spec.type), key
        assert spec.help and spec.option(key)
        if spec.type in (float, int):
            assert spec.range_text(), f"{name}.{key} declares no range"
    assert cls.summary and cls.formula and cls.example_flags().startswith(f"--method {name}")
    m = build_method(name, C)
    assert m.hparams == {k: s.default for k, s in cls.params.items()}
    assert build_method(name, C, **m.hparams).hparams == m.hparams
    json.dumps(m.describe())  # recordable in run metadata
    if cls.teacher != "none":
        with pytest.raises(LabelenhError, match="teacher logits"):
            m.loss(student_logits(6), onehot_inputs(), CTX)


def test_registry_holds_the_documented_methods():
    assert {"vanilla", "ls", "gls", "ols", "kd", "sl", "en-sl", "kd-sl", "ils"} <= set(METHODS)
    assert METHODS["kd"].teacher == "online"
    assert {METHODS[n].teacher for n in ("sl", "en-sl", "kd-sl", "ils")} == {"store"}
    assert {n for n, c in METHODS.items() if c.allows_negative} == {"gls"}


def test_params_given_as_strings_are_coerced():
    assert build_method("ls", C, alpha="0.25").alpha == 0.25
    assert build_method("kd", C, T=2).hparams["T"] == 2.0


# --- bad input ---------------------------------------------------------------------------------

BAD = [
    ("ls", {"alpha": 1.5}, "alpha"),
    ("ls", {"alpha": -0.1}, "alpha"),
    ("ls", {"alpha": float("nan")}, "alpha"),
    ("ls", {"alpha": "abc"}, "alpha"),
    ("kd", {"alpha": 2.0}, "alpha"),
    ("kd-sl", {"alpha": -1.0}, "alpha"),
    ("kd", {"T": 0.0}, "T"),
    ("kd-sl", {"T": -3.0}, "T"),
    ("sl", {"T": 0.0}, "T"),
    ("en-sl", {"T": -1.0}, "T"),
    ("ils", {"T": 0.0}, "T"),
    ("ils", {"eps": 1.2}, "eps"),
    ("ils", {"eps": -0.1}, "eps"),
    ("en-sl", {"ensemble": "median"}, "ensemble"),
    ("sl", {"ensemble": "max"}, "ensemble"),
    ("kd", {"ensemble": "vote"}, "ensemble"),
    ("ils", {"ensemble": "geo-mean"}, "ensemble"),
    ("kd", {"kl_reduction": "mean"}, "kl_reduction"),
    ("gls", {"r": 1.5}, "r"),
    ("gls", {"wa": -1.0}, "wa"),
    ("gls", {"wa": 0.0, "wb": 0.0}, "wa \\+ wb"),
    ("ols", {"w_hard": -0.5}, "w_hard"),
    ("ols", {"w_hard": 0.0, "w_soft": 0.0}, "w_hard \\+ w_soft"),
    ("ols", {"init": "ones"}, "init"),
    ("ls", {"beta": 0.1}, "beta"),
    ("vanilla", {"alpha": 0.1}, "alpha"),
]


@pytest.mark.parametrize("name,params,word", BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_bad_params(name, params, word):
    with pytest.raises(LabelenhError, match=word) as e:
        build_method(name, C, **params)
    msg = str(e.value)
    assert "\n" not in msg and name in msg


def test_ranges_are_named():
    with pytest.raises(LabelenhError, match=r"alpha must be in \[0, 1\], got 1.5"):
        build_method("ls", C, alpha=1.5)
    with pytest.raises(LabelenhError, match=r"T must be in \(0, inf\]"):
        build_method("kd", C, T=0)


def test_unknown_method_and_bad_num_classes():
    with pytest.raises(LabelenhError, match="unknown method 'foo'.*vanilla"):
        build_method("foo", C)
    with pytest.raises(LabelenhError, match="num_classes"):
        build_method("ls", 1)


# --- vanilla / ls -------------------------------------------------------------------------------


def test_vanilla_is_cross_entropy():
    inp = onehot_inputs()
    z = student_logits(6)
    assert torch.allclose(
        build_method("vanilla", C).loss(z, inp)["ce"], F.cross_entropy(z, inp.labels)
    )
    # mixed: λ·CE(y_a) + (1−λ)·CE(y_b), the standard mixup loss
    z2 = torch.tensor([[1.0, -1.0, 0.5, 0.0, 2.0]])
    mix = MethodInputs(labels=torch.tensor([0]), hard=torch.tensor([[0.7, 0.0, 0.0, 0.0, 0.3]]))
    want = 0.7 * F.cross_entropy(z2, torch.tensor([0])) + 0.3 * F.cross_entropy(
        z2, torch.tensor([4])
    )
    assert torch.allclose(build_method("vanilla", C).loss(z2, mix)["ce"], want)


def test_ls_hand_target():
    m = build_method("ls", 4, alpha=0.2)
    inp = MethodInputs(labels=torch.tensor([1]), hard=torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(m.target(inp), torch.tensor([[0.05, 0.85, 0.05, 0.05]]))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.35, 1.0])
def test_ls_equals_torch_label_smoothing(alpha):
    inp = onehot_inputs(B=8)
    z = student_logits(8)
    got = build_method("ls", C, alpha=alpha).loss(z, inp)["ce"]
    assert torch.allclose(got, F.cross_entropy(z, inp.labels, label_smoothing=alpha))


def test_soft_target_smoothed_twice_trap():
    alpha = 0.2
    inp = onehot_inputs(B=8)
    z = student_logits(8)
    target = build_method("ls", C, alpha=alpha).target(inp)
    right = F.cross_entropy(z, inp.labels, label_smoothing=alpha)
    assert torch.allclose(soft_cross_entropy(z, target), right)
    twice = F.cross_entropy(z, target, label_smoothing=alpha)  # smooths the soft target again
    assert not torch.allclose(twice, right, atol=1e-4)
    # it equals CE against the doubly smoothed target
    assert torch.allclose(twice, soft_cross_entropy(z, (1 - alpha) * target + alpha / C))


# --- gls ----------------------------------------------------------------------------------------


def test_gls_negative_rate_hand_target():
    m = build_method("gls", 3, r=-0.5)
    inp = MethodInputs(labels=torch.tensor([2]), hard=torch.tensor([[0.0, 0.0, 1.0]]))
    q = m.target(inp)
    # (1 − r)·e_y + r/C = [−1/6, −1/6, 1.5 − 1/6]
    assert torch.allclose(q, torch.tensor([[-1 / 6, -1 / 6, 4 / 3]]))
    assert q[0, 2] > 1 and (q[0, :2] < 0).all()
    assert q.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "r,wa,wb", [(0.1, 0.0, 1.0), (-2.0, 0.0, 1.0), (0.3, 1.0, 2.0), (-0.8, 0.5, 1.0)]
)
def test_gls_matches_nls_repo_form(r, wa, wb):
    inp = onehot_inputs(B=8)
    z = student_logits(8)
    m = build_method("gls", C, r=r, wa=wa, wb=wb)
    got = sum(m.loss(z, inp).values())
    # NLS repo: loss = (wa + wb·(1 − r))·nll + wb·r·smooth, smooth = mean_c −log p
    nll = F.cross_entropy(z, inp.labels)
    smooth = -F.log_softmax(z, -1).mean(-1).mean()
    assert torch.allclose(got, (wa + wb * (1 - r)) * nll + wb * r * smooth)
    # identity: wa·CE + wb·GLS(r) = (wa + wb)·GLS(wb·r/(wa + wb)) = (wa + wb)·softCE(target)
    r2 = wb * r / (wa + wb)
    gls_r2 = (1 - r2) * nll + r2 * smooth
    assert torch.allclose(got, (wa + wb) * gls_r2)
    assert torch.allclose(got, (wa + wb) * soft_cross_entropy(z, m.target(inp)))


def test_gls_composes_with_mixed_labels():
    inp = mixed_inputs()
    z = student_logits(4)
    m = build_method("gls", C, r=-1.0)
    assert torch.allclose(sum(m.loss(z, inp).values()), soft_cross_entropy(z, m.target(inp)))
    assert torch.allclose(m.target(inp), 2.0 * inp.hard - 1.0 / C)


# --- ols ----------------------------------------------------------------------------------------


def scripted_epoch():
    """Batches of (logits, labels) with repeated classes and a class (3) never predicted right."""
    g = torch.Generator().manual_seed(5)
    batches = []
    for labels in ([0, 0, 1, 2, 0, 3], [1, 1, 0, 3, 2, 2], [4, 0, 0, 3, 4, 1]):
        y = torch.tensor(labels)
        z = torch.randn(len(y), C, generator=g)
        z[torch.arange(len(y)), y] += 3.0  # mostly right
        z[y == 3, 3] = -5.0  # class 3 is never the argmax
        z[1, 0] = -5.0  # and some samples of other classes are wrong too
        batches.append((z, y))
    return batches


def loop_ols(batches, C=C):
    A = np.zeros((C, C))
    n = np.zeros(C)
    for z, y in batches:
        p = torch.softmax(z.double(), -1).numpy()
        for i, yi in enumerate(y.tolist()):
            if p[i].argmax() == yi:
                A[yi] += p[i]
                n[yi] += 1
    S = np.full((C, C), 1.0 / C)
    for c in range(C):
        if n[c] > 0:
            S[c] = A[c] / n[c]
    return S, A, n


def test_ols_matrix_after_scripted_epoch():
    batches = scripted_epoch()
    m = build_method("ols", C)
    for z, y in batches:
        m.observe(z, MethodInputs(labels=y, hard=F.one_hot(y, C).float()))
    S, A, n = loop_ols(batches)
    assert n[3] == 0 and n[0] >= 2  # the script covers both cases
    assert np.array_equal(m.n.numpy(), n)
    assert np.allclose(m.A.numpy(), A, atol=1e-6)
    m.epoch_end()
    assert np.allclose(m.S.numpy(), S, atol=1e-6)
    assert np.allclose(m.S[3].numpy(), 1.0 / C)
    assert m.A.abs().sum() == 0 and m.n.sum() == 0
    # the fancy-index `A[y] += p` of the re-implementation drops repeated classes: it differs
    bad = torch.zeros(C, C)
    for z, y in batches:
        p = torch.softmax(z, -1)
        ok = p.argmax(-1) == y
        bad[y[ok]] += p[ok]
    assert not np.allclose(bad.numpy(), A, atol=1e-3)


def test_ols_epoch0_soft_term_is_zero_then_uses_S():
    inp = onehot_inputs(B=6)
    z = student_logits(6)
    m = build_method("ols", C)
    terms = m.loss(z, inp)
    assert terms["ols"].item() == 0.0
    assert torch.allclose(terms["ce"], 0.5 * F.cross_entropy(z, inp.labels))
    assert torch.allclose(m.target(inp), inp.hard)
    for zb, y in scripted_epoch():
        m.observe(zb, MethodInputs(labels=y, hard=F.one_hot(y, C).float()))
    m.epoch_end()
    terms = m.loss(z, inp)
    want = 0.5 * F.cross_entropy(z, inp.labels) + 0.5 * soft_cross_entropy(z, m.S[inp.labels])
    assert torch.allclose(terms["ce"] + terms["ols"], want)
    assert torch.allclose(m.target(inp), 0.5 * inp.hard + 0.5 * m.S[inp.labels])


def test_ols_mixed_soft_target_is_label_weighted_rows():
    m = build_method("ols", C, init="uniform")
    S = torch.softmax(torch.randn(C, C, generator=torch.Generator().manual_seed(7)), -1)
    m.load_state_dict({"S": S, "A": torch.zeros(C, C), "n": torch.zeros(C, dtype=torch.long)})
    hard = torch.tensor([[0.7, 0.0, 0.3, 0.0, 0.0]])
    inp = MethodInputs(labels=torch.tensor([0]), hard=hard)
    assert torch.allclose(m.soft_target(inp), 0.7 * S[0] + 0.3 * S[2])


def test_ols_uniform_init_and_weights():
    m = build_method("ols", C, w_hard=1.0, w_soft=1.0, init="uniform")
    inp = onehot_inputs()
    z = student_logits(6)
    terms = m.loss(z, inp)
    assert torch.allclose(terms["ols"], soft_cross_entropy(z, torch.full((6, C), 1.0 / C)))
    assert torch.allclose(terms["ce"], F.cross_entropy(z, inp.labels))


def test_ols_state_dict_round_trip_resumes_exactly():
    batches = scripted_epoch()
    a = build_method("ols", C)
    for z, y in batches:
        a.observe(z, MethodInputs(labels=y, hard=F.one_hot(y, C).float()))
    a.epoch_end()
    a.observe(
        *[
            batches[0][0],
            MethodInputs(labels=batches[0][1], hard=F.one_hot(batches[0][1], C).float()),
        ]
    )
    state = a.state_dict()
    b = build_method("ols", C)
    b.load_state_dict(state)
    for k in ("S", "A", "n"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    for m in (a, b):  # continue the same epoch in both
        for z, y in batches[1:]:
            m.observe(z, MethodInputs(labels=y, hard=F.one_hot(y, C).float()))
        m.epoch_end()
    assert torch.equal(a.S, b.S)
    state["S"][0, 0] = 123.0  # the state is a copy, not a view of the live matrix
    assert b.S[0, 0] != 123.0
    with pytest.raises(LabelenhError, match="shape"):
        build_method("ols", C + 1).load_state_dict(a.state_dict())
    with pytest.raises(LabelenhError, match="state"):
        build_method("ols", C).load_state_dict({"S": a.S})
    with pytest.raises(LabelenhError, match="no state"):
        build_method("ls", C).load_state_dict(a.state_dict())


# --- sl / en-sl ---------------------------------------------------------------------------------


def two_teachers():
    # teacher 1: softmax([0, 0]) = [0.5, 0.5]; teacher 2: softmax([0, ln 9]) = [0.1, 0.9]
    t = torch.tensor([[[0.0, 0.0], [0.0, math.log(9.0)]]])
    return MethodInputs(labels=torch.tensor([1]), hard=torch.tensor([[0.0, 1.0]]), teacher_logits=t)


def test_en_sl_prob_mean_vs_logit_mean_hand_case():
    inp = two_teachers()
    z = torch.tensor([[0.0, math.log(4.0)]])  # student p = [0.2, 0.8]
    pm = build_method("en-sl", 2)
    lm = build_method("en-sl", 2, ensemble="logit-mean")
    assert torch.allclose(pm.target(inp), torch.tensor([[0.3, 0.7]]))
    assert torch.allclose(lm.target(inp), torch.tensor([[0.25, 0.75]]))
    want_pm = -(0.3 * math.log(0.2) + 0.7 * math.log(0.8))
    want_lm = -(0.25 * math.log(0.2) + 0.75 * math.log(0.8))
    assert pm.loss(z, inp)["sl"].item() == pytest.approx(want_pm, rel=1e-6)
    assert lm.loss(z, inp)["sl"].item() == pytest.approx(want_lm, rel=1e-6)
    # T = 2 softens each teacher first: teacher 2 -> [0.25, 0.75]; prob-mean [0.375, 0.625]
    assert torch.allclose(build_method("en-sl", 2, T=2).target(inp), torch.tensor([[0.375, 0.625]]))


def test_sl_single_teacher_is_softmax_at_T():
    inp = with_teachers(onehot_inputs(), 1)
    z = student_logits(6)
    m = build_method("sl", C, T=2.0)
    q = torch.softmax(inp.teacher_logits[:, 0] / 2.0, -1)
    assert torch.allclose(m.target(inp), q)
    assert torch.allclose(m.loss(z, inp)["sl"], F.cross_entropy(z, q))
    # several teachers in a store row: sl uses the same ensemble rule as en-sl
    inp3 = with_teachers(onehot_inputs(), 3)
    assert torch.allclose(build_method("sl", C).target(inp3), build_method("en-sl", C).target(inp3))


# --- kd / kd-sl ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kd", "kd-sl"])
@pytest.mark.parametrize("alpha,T", [(0.9, 3.0), (0.5, 4.0), (0.0, 1.0)])
def test_kd_formula(name, alpha, T):
    inp = with_teachers(onehot_inputs(B=8), 1)
    z = student_logits(8)
    m = build_method(name, C, alpha=alpha, T=T)
    terms = m.loss(z, inp)
    pt = torch.softmax(inp.teacher_logits[:, 0] / T, -1)
    kl = F.kl_div(F.log_softmax(z / T, -1), pt, reduction="batchmean")
    assert torch.allclose(terms["ce"], alpha * F.cross_entropy(z, inp.labels))
    assert torch.allclose(terms["kd"], (1 - alpha) * T * T * kl)
    # the original code's elementwise-mean KL is smaller by exactly a factor C
    quirk = build_method(name, C, alpha=alpha, T=T, kl_reduction="elementwise-mean")
    assert torch.allclose(quirk.loss(z, inp)["kd"] * C, terms["kd"], rtol=1e-5)
    assert torch.allclose(quirk.loss(z, inp)["ce"], terms["ce"])


def test_kd_hand_case():
    # C = 2, T = 1, α = 0.5; student p = [0.2, 0.8], teacher [0.5, 0.5], label 1
    m = build_method("kd", 2, alpha=0.5, T=1.0)
    inp = MethodInputs(
        labels=torch.tensor([1]),
        hard=torch.tensor([[0.0, 1.0]]),
        teacher_logits=torch.zeros(1, 1, 2),
    )
    terms = m.loss(torch.tensor([[0.0, math.log(4.0)]]), inp)
    assert terms["ce"].item() == pytest.approx(-0.5 * math.log(0.8), rel=1e-6)
    kl = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert terms["kd"].item() == pytest.approx(0.5 * kl, rel=1e-6)
    assert torch.allclose(m.target(inp), torch.tensor([[0.25, 0.75]]))


def test_kd_target_is_effective_target_at_T1_and_uses_ensemble():
    inp = with_teachers(mixed_inputs(), 3)
    z = student_logits(4)
    m = build_method("kd", C, alpha=0.3, T=1.0)
    pbar = torch.softmax(inp.teacher_logits, -1).mean(1)  # prob-mean ensemble
    assert torch.allclose(m.target(inp), 0.3 * inp.hard + 0.7 * pbar)
    entropy = -(pbar * pbar.log()).sum(-1).mean()
    got = sum(m.loss(z, inp).values())
    assert torch.allclose(got, soft_cross_entropy(z, m.target(inp)) - 0.7 * entropy, atol=1e-6)


# --- ils ----------------------------------------------------------------------------------------


def test_ils_hand_case_one_hot():
    # q = [0.5, 0.3, 0.2], y = 0, ε = 0.1 -> [0.9, 0.1·0.3/0.5, 0.1·0.2/0.5]
    t = torch.tensor([0.5, 0.3, 0.2]).log().view(1, 1, 3)
    inp = MethodInputs(
        labels=torch.tensor([0]), hard=torch.tensor([[1.0, 0.0, 0.0]]), teacher_logits=t
    )
    m = build_method("ils", 3, eps=0.1)
    assert torch.allclose(m.target(inp), torch.tensor([[0.9, 0.06, 0.04]]))
    z = torch.tensor([[1.0, 0.0, -1.0]])
    assert torch.allclose(
        m.loss(z, inp)["ils"], F.cross_entropy(z, torch.tensor([[0.9, 0.06, 0.04]]))
    )


def test_ils_hand_case_mixed():
    # hard = 0.6·e_0 + 0.4·e_1, q = [0.1, 0.2, 0.3, 0.4], ε = 0.1
    # ILS(0) = [0.9, 0.02/0.9, 0.03/0.9, 0.04/0.9]; ILS(1) = [0.01/0.8, 0.9, 0.03/0.8, 0.04/0.8]
    t = torch.tensor([0.1, 0.2, 0.3, 0.4]).log().view(1, 1, 4)
    hard = torch.tensor([[0.6, 0.4, 0.0, 0.0]])
    inp = MethodInputs(labels=torch.tensor([0]), hard=hard, teacher_logits=t)
    want = torch.tensor([[0.545, 0.36 + 0.6 * 0.02 / 0.9, 0.035, 0.02 + 0.6 * 0.04 / 0.9]])
    got = build_method("ils", 4, eps=0.1).target(inp)
    assert torch.allclose(got, want)
    assert got.sum().item() == pytest.approx(1.0)


def test_ils_saturated_teacher_spreads_uniformly():
    t = torch.tensor([[[1000.0, 0.0, 0.0]], [[0.0, 1000.0, 0.0]]])  # softmax = exactly e_0, e_1
    hard = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    inp = MethodInputs(labels=torch.tensor([0, 0]), hard=hard, teacher_logits=t)
    q = build_method("ils", 3, eps=0.2).target(inp)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(-1), torch.ones(2))
    # row 0: no teacher mass off the true class -> ε/(C−1) each; row 1: all of ε on class 1
    assert torch.allclose(q, torch.tensor([[0.8, 0.1, 0.1], [0.8, 0.2, 0.0]]))
    z = student_logits(2, C=3).detach().requires_grad_(True)
    loss = build_method("ils", 3, eps=0.2).loss(z, inp)["ils"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_ils_temperature_and_ensemble():
    inp = with_teachers(onehot_inputs(), 3)
    q = torch.softmax(inp.teacher_logits / 4.0, -1).mean(1)
    got = build_method("ils", C, eps=0.15, T=4.0).target(inp)
    y = inp.labels
    rows = torch.arange(len(y))
    assert torch.allclose(got[rows, y], torch.full((len(y),), 0.85))
    off = q.clone()
    off[rows, y] = 0
    want = 0.15 * off / off.sum(-1, keepdim=True)
    want[rows, y] = 0.85
    assert torch.allclose(got, want)


def _ols_rank(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = build_method("ols", C)
        for z, y in scripted_epoch()[rank::world]:  # each rank sees its own shard
            m.observe(z, MethodInputs(labels=y, hard=F.one_hot(y, C).float()))
        m.epoch_end()
        torch.save(m.S, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ols_epoch_end_sums_statistics_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ols_rank, args=(2, tmp_path / "pg", tmp_path / "S"), nprocs=2)
    want = loop_ols(scripted_epoch())[0]  # one process over all batches
    for rank in range(2):
        S = torch.load(tmp_path / f"S.{rank}")
        assert np.allclose(S.numpy(), want, atol=1e-6)
