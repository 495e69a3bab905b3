"""Numerical safety: a loss that turns NaN/Inf stops the run with one line (a huge learning rate,
a method parameter that overflows, fp16 autocast on CUDA); a fp16 store refuses logits beyond
float16's range; and the target methods stay finite, and equal to their formulas, for saturated
or degenerate inputs: logits of ±1e4 (fp16 teacher logits as a store holds them), all-equal
logits, classes absent from a batch or an epoch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clitools import assert_one_line_error, run_cli

from labelenh.errors import LabelenhError
from labelenh.methods import METHODS, MethodContext, MethodInputs, build_method
from labelenh.methods.ils import ils_target

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
TRAIN = ["--model", "resnet8", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]
C = 5


@pytest.fixture(autouse=True)
def _no_diagrams(monkeypatch):
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)


def assert_stopped(r, tmp_path, *needles: str) -> None:
    assert_one_line_error(r, "the training loss became nan", "lower --lr", *needles)
    assert not any(tmp_path.rglob("checkpoint.pt"))  # it stopped in epoch 1, before any checkpoint


def test_a_huge_learning_rate_stops_the_run(tmp_path):
    # 1e4 is the largest --lr accepted (labelenh.bounds.LR); it still diverges within an epoch
    assert_stopped(run_cli("teach", *DS, *TRAIN, "--lr", "1e4", "--runs-dir", tmp_path), tmp_path)


def test_a_method_parameter_that_overflows_stops_the_run(tmp_path):
    # GLS/NLS accept any rate <= 1; -1e300 overflows float32 in the loss: (1 - r)·nll = inf, r·smooth = -inf
    r = run_cli("student", *DS, *TRAIN, "--method", "gls", "--smooth-rate", "-1e300", "--runs-dir", tmp_path)
    assert_stopped(r, tmp_path, "check the method's parameters")


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_overflow_stops_the_run(tmp_path, amp):
    r = run_cli("teach", *DS, *TRAIN[:-2], "--device", "cuda", "--amp", amp, "--lr", "1e4", "--runs-dir", tmp_path)
    assert_stopped(r, tmp_path, "--amp bf16/off")


# ---- the target methods on saturated and degenerate inputs -------------------------------------

def inputs(labels: torch.Tensor, teacher: torch.Tensor | None, hard: torch.Tensor | None = None) -> MethodInputs:
    hard = F.one_hot(labels, C).float() if hard is None else hard
    return MethodInputs(labels=labels, hard=hard, teacher_logits=teacher)


def saturated(rows: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """[rows, C] of ±1e4, random signs (softmax is exactly one-hot or split between the +1e4s)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (rows, C), generator=g) * 2 - 1).to(dtype) * 1e4


SCENARIOS = {
    # student logits [B, C], teacher logits [B, M, C] (fp16, as a store holds them), labels [B]
    "saturated": lambda: (saturated(8, 0), saturated(16, 1, torch.float16).view(8, 2, C),
                          torch.arange(8) % C),
    "all-equal": lambda: (torch.zeros(8, C), torch.zeros(8, 2, C, dtype=torch.float16), torch.arange(8) % C),
    "teacher-certain-of-the-label": lambda: (saturated(8, 2), (F.one_hot(torch.arange(8) % C, C) * 2e4 - 1e4)
                                             .to(torch.float16).view(8, 1, C), torch.arange(8) % C),
    "one-class-batch": lambda: (saturated(8, 3), saturated(8, 4, torch.float16).view(8, 1, C),
                                torch.zeros(8, dtype=torch.long)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_stays_finite(method, scenario):
    z, t, y = SCENARIOS[scenario]()
    m = build_method(method, C)
    inp = inputs(y, t if METHODS[method].teacher != "none" else None)
    for _ in range(2):  # OLS: epoch 0 (zero matrix), then the matrix its statistics gave
        m.observe(z, inp)
        m.epoch_end()
    z = z.clone().requires_grad_(True)
    terms = m.loss(z, inp, MethodContext(epoch=0))
    loss = sum(terms.values())
    assert all(torch.isfinite(v) for v in terms.values()), terms
    loss.backward()
    assert torch.isfinite(z.grad).all()
    if not m.has_target:  # DKD, DIST: not a CE against one target
        return
    target = m.target(inp)
    assert torch.isfinite(target).all()
    torch.testing.assert_close(target.sum(-1), torch.ones(len(y), dtype=target.dtype))


def test_ils_targets_at_saturation_are_the_formula():
    eps = 0.1
    y = torch.tensor([0, 1, 2])
    hard = F.one_hot(y, C).double()
    off = (1 - hard) * eps / (C - 1)
    # all-equal teacher: eps spread evenly over the other classes
    q = F.softmax(torch.zeros(3, C, dtype=torch.float64), -1)
    torch.testing.assert_close(ils_target(hard, q, eps), (1 - eps) * hard + off, rtol=0, atol=1e-12)
    # teacher certain of class 4 (fp16 ±1e4): all of eps goes to class 4
    q = F.softmax((F.one_hot(torch.full((3,), 4), C) * 2e4 - 1e4).to(torch.float16).float(), -1)
    want = (1 - eps) * hard + eps * F.one_hot(torch.full((3,), 4), C).double()
    torch.testing.assert_close(ils_target(hard, q, eps), want, rtol=0, atol=1e-7)
    # teacher certain of the label itself: no mass left on the others, so eps is spread evenly
    q = F.softmax((hard * 2e4 - 1e4).float(), -1)
    torch.testing.assert_close(ils_target(hard, q, eps), (1 - eps) * hard + off, rtol=0, atol=1e-7)
    # a mixed label (0.7 of class 0, 0.3 of class 1), teacher certain of class 1
    mixed = torch.tensor([[0.7, 0.3, 0, 0, 0]], dtype=torch.float64)
    q = F.softmax(torch.tensor([[-1e4, 1e4, -1e4, -1e4, -1e4]]), -1)
    e = torch.eye(C, dtype=torch.float64)
    want = 0.7 * ((1 - eps) * e[0] + eps * e[1]) + 0.3 * ((1 - eps) * e[1] + eps * (1 - e[1]) / (C - 1))
    torch.testing.assert_close(ils_target(mixed, q, eps), want[None], rtol=0, atol=1e-7)


def test_ols_matrix_with_absent_classes_and_no_correct_prediction():
    m = build_method("ols", C)
    y = torch.tensor([0, 0, 1, 1, 1])  # classes 2, 3, 4 never appear in the epoch
    z = F.one_hot(y, C).float() * 2e4 - 1e4  # saturated and right: softmax is exactly one-hot
    z[4] = torch.tensor([1e4, -1e4, -1e4, -1e4, -1e4])  # one wrong prediction: not counted
    m.observe(z, inputs(y, None))
    m.epoch_end()
    S = m.state_dict()["S"]
    torch.testing.assert_close(S[:2], torch.eye(C)[:2])  # mean softmax of the correct ones
    torch.testing.assert_close(S[2:], torch.full((3, C), 1 / C))  # absent: uniform, not 0/0
    # an epoch without a single correct prediction: every row uniform
    wrong = F.one_hot((y + 1) % C, C).float() * 2e4 - 1e4
    m.observe(wrong, inputs(y, None))
    m.epoch_end()
    torch.testing.assert_close(m.state_dict()["S"], torch.full((C, C), 1 / C))


@pytest.mark.parametrize("r", [0.1, 0.8, -8.0])
def test_gls_at_saturation_equals_the_formula_in_float64(r):
    z, y = saturated(8, 5), torch.arange(8) % C
    m = build_method("gls", C, r=r, wa=0.0, wb=1.0)
    loss = sum(m.loss(z, inputs(y, None)).values())
    logp = torch.log_softmax(z.double(), -1)
    want = ((1 - r) * -logp[torch.arange(8), y] + r * -logp.mean(-1)).mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_ls_at_saturation_equals_torch_label_smoothing(alpha):
    z, y = saturated(8, 6), torch.arange(8) % C
    loss = sum(build_method("ls", C, alpha=alpha).loss(z, inputs(y, None)).values())
    torch.testing.assert_close(loss, F.cross_entropy(z, y, label_smoothing=alpha), rtol=1e-6, atol=0)


@pytest.mark.parametrize("T", [0.05, 1.0, 20.0])
def test_kd_sl_with_saturated_teachers_and_extreme_temperatures(T):
    z, y = saturated(8, 7), torch.arange(8) % C
    t = saturated(16, 8, torch.float16).view(8, 2, C)
    m = build_method("kd-sl", C, T=T)
    z = z.requires_grad_(True)
    loss = sum(m.loss(z, inputs(y, t)).values())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_logits_beyond_float16_are_refused_by_a_fp16_store(tmp_path):
    from labelenh.checkpoint import save_checkpoint
    from labelenh.models import build_model
    from labelenh.store import SoftLabelStore

    model = build_model("resnet8", 10)
    with torch.no_grad():
        model.fc.bias.fill_(1e5)  # finite in float32, inf in float16
    save_checkpoint(tmp_path / "big.pt", {"model_name": "resnet8", "num_classes": 10, "in_chans": 3,
                                          "model": model.state_dict()})
    export = ["export-soft-labels", "-t", tmp_path / "big.pt", *DS, "--device", "cpu"]
    r = run_cli(*export, "--out", tmp_path / "s16.h5")
    assert_one_line_error(r, "exceed the float16 range", "--format fp32")
    with pytest.raises(LabelenhError, match="incomplete"):  # never a store that opens
        SoftLabelStore.open(tmp_path / "s16.h5")
    r = run_cli(*export, "--out", tmp_path / "s32.h5", "--format", "fp32")
    assert r.code == 0, r.err
    with SoftLabelStore.open(tmp_path / "s32.h5") as s:
        assert float(s.clean_logits(torch.arange(3)).min()) > 9e4
