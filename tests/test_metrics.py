"""Metrics against torchmetrics / torch / numpy on the same inputs, and the PNG diagrams."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from labelenh.errors import LabelenhError
from labelenh.metrics import calibration_bins, classification_metrics
from labelenh.plots import reliability_diagram, reliability_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data(seed: int, n: int, c: int, n_sure: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 logits with ~half the labels equal to the argmax; the first `n_sure`
    rows get a +50 margin, so their softmax confidence is exactly 1.0 in float32 and float64
    while the other probabilities stay distinct and non-zero (no ties in top-k)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    y = torch.randint(0, c, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.5
    y = torch.where(agree, z.argmax(1), y)
    top = z.argmax(1)
    z[torch.arange(n_sure), top[:n_sure]] += 50.0
    return z, y


def _reference_probs(z: torch.Tensor) -> torch.Tensor:
    """Softmax for torchmetrics, with confidences of exactly 1.0 moved to the largest float32
    below 1.0: torchmetrics gives 1.0 an extra bin of its own, labelenh puts it in the last bin,
    and this move turns the former convention into the latter (it shifts a gap by 6e-8)."""
    p = z.softmax(1)
    conf, pred = p.max(1)
    sure = conf == 1.0
    p[sure, pred[sure]] = 1.0 - 2.0**-24
    return p


CASES = [
    # seed, n, c, n_bins, n_sure
    (0, 500, 10, 15, 0),
    (1, 300, 100, 15, 0),
    (2, 400, 3, 10, 0),
    (3, 257, 10, 7, 60),
    (4, 500, 10, 15, 120),
    (5, 200, 100, 20, 50),
    (6, 100, 5, 2, 30),
    (7, 333, 2, 15, 40),
]


@pytest.mark.parametrize("seed,n,c,n_bins,n_sure", CASES)
def test_against_torchmetrics(seed: int, n: int, c: int, n_bins: int, n_sure: int) -> None:
    z, y = _data(seed, n, c, n_sure)
    if n_sure:
        assert (z[:n_sure].softmax(1).max(1).values == 1.0).all()
        assert (z[:n_sure].float().softmax(1).max(1).values == 1.0).all()
        # some confident rows are wrong, so the 1.0 confidences carry a gap
        assert (z[:n_sure].argmax(1) != y[:n_sure]).any()
    m = classification_metrics(z, y, n_bins=n_bins)
    p_ref = _reference_probs(z)
    ece = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="l1")(p_ref, y)
    mce = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="max")(p_ref, y)
    acc1 = MulticlassAccuracy(num_classes=c, top_k=1, average="micro")(z, y)
    acc5 = MulticlassAccuracy(num_classes=c, top_k=min(5, c), average="micro")(z, y)
    assert m["ece"] == pytest.approx(float(ece), abs=2e-6)
    assert m["mce"] == pytest.approx(float(mce), abs=2e-6)
    assert m["acc1"] == pytest.approx(float(acc1), abs=1e-7)  # torchmetrics returns float32
    assert m["acc5"] == pytest.approx(float(acc5), abs=1e-7)
    assert m["nll"] == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-12)
    p = z.softmax(1).numpy()
    onehot = np.eye(c)[y.numpy()]
    assert m["brier"] == pytest.approx(float(((p - onehot) ** 2).sum(1).mean()), rel=1e-10)
    assert m["n"] == n
    assert m["ece"] <= m["mce"] + 1e-12


def test_matches_torchmetrics_without_any_change_when_no_confidence_is_one() -> None:
    z, y = _data(11, 400, 10)
    z32 = z.float()
    m = classification_metrics(z32, y)
    ece = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(z32, y)
    assert m["ece"] == pytest.approx(float(ece), abs=2e-6)


def test_bins_by_hand() -> None:
    # probabilities with top-1 confidences 1.0, 0.5 (an edge for 4 bins), 0.25 (edge), 0.3
    p = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.3, 0.2, 0.2, 0.3],
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([1, 0, 0, 0])  # wrong, right (first index wins ties), right, right
    b = calibration_bins(p, y, n_bins=4, from_logits=False)
    # [0, .25) [.25, .5) [.5, .75) [.75, 1]: 0.25 and 0.3 in bin 1, 0.5 in bin 2, 1.0 in bin 3
    assert b.counts.tolist() == [0, 2, 1, 1]
    assert b.accuracy.tolist() == [0, 1, 1, 0]
    assert b.confidence.tolist() == pytest.approx([0, 0.275, 0.5, 1.0])
    assert b.ece() == pytest.approx((2 * 0.725 + 1 * 0.5 + 1 * 1.0) / 4)
    assert b.mce() == pytest.approx(1.0)
    assert b.edges.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_bins_agree_with_metrics_and_accept_logits_or_probs() -> None:
    z, y = _data(3, 300, 10, 40)
    from_logits = calibration_bins(z, y, n_bins=12)
    from_probs = calibration_bins(z.softmax(1), y, n_bins=12, from_logits=False)
    assert torch.equal(from_logits.counts, from_probs.counts)
    assert torch.allclose(from_logits.confidence, from_probs.confidence)
    assert from_logits.n == 300
    m = classification_metrics(z, y, n_bins=12)
    assert from_logits.ece() == pytest.approx(m["ece"])
    assert from_logits.counts[-1] >= 40  # every confidence of exactly 1.0 is in the last bin


def test_float32_and_float16_inputs_give_float64_results() -> None:
    z, y = _data(2, 200, 10)
    m64 = classification_metrics(z, y)
    m32 = classification_metrics(z.float(), y)
    assert m32["nll"] == pytest.approx(m64["nll"], rel=1e-6)
    m16 = classification_metrics(z.half(), y)
    assert m16["acc1"] == pytest.approx(m64["acc1"], abs=0.02)


def test_few_classes_acc5_is_topC() -> None:
    z, y = _data(0, 50, 3)
    assert classification_metrics(z, y)["acc5"] == 1.0


def test_non_finite_logits_give_nan() -> None:
    z, y = _data(0, 20, 10)
    z[3, 2] = float("nan")
    m = classification_metrics(z, y)
    assert m["n"] == 20
    assert all(np.isnan(m[k]) for k in ("acc1", "acc5", "nll", "ece", "mce", "brier"))


@pytest.mark.parametrize(
    "logits,labels,n_bins",
    [
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), 15),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), 15),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), 15),
        (torch.zeros(4, 3), torch.tensor([0, -1, 2, 1]), 15),
        (torch.zeros(4, 3), torch.zeros(4), 15),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 15),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 15),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 0),
    ],
)
def test_bad_input_is_a_labelenh_error(logits, labels, n_bins) -> None:
    with pytest.raises(LabelenhError):
        classification_metrics(logits, labels, n_bins=n_bins)


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


def test_reliability_diagram_writes_png(tmp_path) -> None:
    z, y = _data(0, 500, 10, 50)
    out = reliability_diagram(z.float(), y, tmp_path / "sub" / "rel.png", title="resnet20")
    assert out == tmp_path / "sub" / "rel.png"
    _assert_png(out)


def test_reliability_grid_writes_png(tmp_path) -> None:
    z, y = _data(1, 300, 10)
    panels = [("teacher", z, y), ("student", z * 0.5, y), ("ls", z * 2, y)]
    out = reliability_grid(panels, tmp_path / "grid.png", n_bins=10)
    _assert_png(out)
    with pytest.raises(LabelenhError):
        reliability_grid([], tmp_path / "empty.png")


def test_reliability_diagram_without_matplotlib(tmp_path, monkeypatch) -> None:
    # a None entry in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    z, y = _data(0, 20, 10)
    with pytest.raises(LabelenhError, match=r"pip install 'labelenh\[plot\]'"):
        reliability_diagram(z, y, tmp_path / "x.png")
