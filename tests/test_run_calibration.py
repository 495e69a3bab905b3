"""Temperature scaling and loggers inside real (tiny) runs: per-epoch metrics after TS, the
TensorBoard and CSV mirrors of metrics.jsonl, `evaluate` before/after, old runs."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch
from clitools import assert_one_line_error, run_cli

from labelenh.checkpoint import load_teacher, read_checkpoint, save_checkpoint
from labelenh.engine import TrainConfig, predict
from labelenh.metrics import classification_metrics
from labelenh.pipeline import ImagePipeline
from labelenh.teach import DataSettings, TeachSettings, train_teacher
from labelenh.temperature import TS_KEYS, fit_temperature

DATA = DataSettings(dataset="synthetic:10:30", image_size=16, val_split=0.2)
DS = ["--dataset", "synthetic:10:30", "--image-size", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch teacher with a validation split, logged to TensorBoard and CSV every 2 steps."""
    pytest.importorskip("tensorboard")  # in the dev extra; skipped only outside it
    root = tmp_path_factory.mktemp("calib")
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, milestones=[2])
    s = TeachSettings(model="resnet8", data=DATA, train=cfg, name="t", runs_dir=str(root), device="cpu",
                      log=("tensorboard", "csv"), log_every=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
        summary = train_teacher(s)
    records = [json.loads(x) for x in (root / "t" / "metrics.jsonl").read_text().splitlines()]
    return root / "t", summary, records


def _predictions(run_dir, split):
    model, _ = load_teacher(run_dir / "checkpoint.pt", torch.device("cpu"), num_classes=10)
    pipe = ImagePipeline(DATA.load(), torch.device("cpu"), batch_size=500, eval_batch_size=500)
    return predict(model, pipe.eval_batches(split), device=torch.device("cpu"))


def test_every_evaluated_epoch_reports_metrics_after_ts_fitted_on_val(run):
    run_dir, summary, records = run
    assert len(records) == 3
    for r in records:
        for split in ("val", "test"):
            assert {f"{k}_ts" for k in TS_KEYS} | {"temperature"} <= set(r[split])
            assert r[split]["temperature"] == r["val"]["temperature"]  # one T, fitted on val
        assert r["val"]["nll_ts"] <= r["val"]["nll"]  # never worse where it was fitted
    val_logits, val_labels = _predictions(run_dir, "val")
    test_logits, test_labels = _predictions(run_dir, "test")
    t = fit_temperature(val_logits, val_labels)
    last = summary["last"]["test"]
    assert last["temperature"] == pytest.approx(t, rel=1e-6)
    direct = classification_metrics(test_logits / t, test_labels)
    for k in TS_KEYS:
        assert last[f"{k}_ts"] == pytest.approx(direct[k], rel=1e-5, abs=1e-7)


def test_tensorboard_events_hold_the_metrics_jsonl_values(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, records = run
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {}
    for r in records:
        for key, value in r.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    expected.setdefault(f"{key}/{k}", {})[r["epoch"]] = v
            elif key != "epoch":
                expected.setdefault(key, {})[r["epoch"]] = value
    assert {"lr", "train_loss", "test/ece", "test/ece_ts", "val/temperature", "test/cwece"} <= set(expected)
    assert set(expected) <= tags
    for tag, per_epoch in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert set(got) == set(per_epoch), tag
        for epoch, value in per_epoch.items():
            assert got[epoch] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, epoch)  # float32 in events
    steps = [e.step for e in acc.Scalars("train/loss_step")]
    assert steps and all(s % 2 == 0 for s in steps)


def test_csv_log_holds_the_metrics_jsonl_values(run):
    run_dir, _, records = run
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = {(int(r["epoch"]), r["tag"]): float(r["value"]) for r in rows if r["kind"] == "epoch"}
    for r in records:
        assert epochs[(r["epoch"], "test/ece_ts")] == r["test"]["ece_ts"]  # repr round-trips
        assert epochs[(r["epoch"], "lr")] == r["lr"]
        assert epochs[(r["epoch"], "train_loss")] == r["train_loss"]
    assert any(r["kind"] == "step" and r["tag"] == "train/loss_step" for r in rows)


def test_evaluate_reports_before_and_after_ts_as_the_run_did(run, tmp_path):
    run_dir, summary, _ = run
    r = run_cli("evaluate", run_dir, "--device", "cpu", "--json", tmp_path / "e.json", "--diagram", tmp_path / "e.png")
    assert r.code == 0, r.err
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["calibrated_on"] == "val"
    for k in ("ece", "ece_ts", "nll_ts", "temperature", "adaece", "cwece", "rmsce"):
        assert out[k] == pytest.approx(summary["last"]["test"][k], rel=1e-5, abs=1e-7), k
    biased = run_cli("evaluate", run_dir, "--device", "cpu", "--calibrate-on", "test", "--json",
                     tmp_path / "b.json", "--diagram", tmp_path / "e.png")
    assert biased.code == 0, biased.err
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["calibrated_on"].startswith("test (biased")
    assert "biased" in biased.out
    # fitted on the split it scores, T can only do at least as well on its NLL
    assert b["nll_ts"] <= out["nll_ts"] + 1e-12


def test_an_old_run_without_the_new_fields_still_evaluates_and_reports(run, tmp_path):
    run_dir, _, _ = run
    old = tmp_path / "old"
    old.mkdir()
    ck = read_checkpoint(run_dir / "checkpoint.pt")
    keep = {"acc1", "acc5", "nll", "ece", "mce", "brier", "n"}
    ck["metrics"] = {k: v for k, v in ck["metrics"].items() if k in keep}
    for rec in ck["engine"]["history"]:
        for split in ("val", "test"):
            rec[split] = {k: v for k, v in rec[split].items() if k in keep}
    save_checkpoint(old / "checkpoint.pt", ck)
    summary = json.loads((run_dir / "summary.json").read_text())
    for epoch in ("last", "best"):
        for split in ("val", "test"):
            summary[epoch][split] = {k: v for k, v in summary[epoch][split].items() if k in keep}
    (old / "summary.json").write_text(json.dumps(summary))
    (old / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in ck["engine"]["history"]))
    r = run_cli("evaluate", old, "--device", "cpu", "--diagram", tmp_path / "d.png")
    assert r.code == 0, r.err
    assert "ECE TS" in r.out
    rep = run_cli("report", old, "--out", tmp_path / "rep", "--no-diagrams", "--device", "cpu")
    assert rep.code == 0, rep.err
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    head = [c.strip() for c in md[0].split("|")]
    row = [c.strip() for c in md[2].split("|")]
    assert row[head.index("ECE after TS (%) last")] == "—"  # the old summary has none
    assert row[head.index("T last")] == "—"
    assert row[head.index("ECE (%) last")] != "—"


def test_a_logger_whose_package_is_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    # a None entry in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    r = run_cli("teach", *DS, "--model", "resnet8", "--epochs", "1", "--device", "cpu",
                "--runs-dir", tmp_path, "--log", "tensorboard")
    assert_one_line_error(r, "--log tensorboard", "pip install 'labelenh[tensorboard]'")
    assert not any(tmp_path.iterdir())  # refused before any file was written


def test_a_run_without_validation_says_why_it_has_no_ts(tmp_path, monkeypatch):
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    r = run_cli("teach", *DS, "--model", "resnet8", "--epochs", "1", "--device", "cpu",
                "--runs-dir", tmp_path, "--name", "nv")
    assert r.code == 0, r.err
    assert "no validation split" in r.err and "--calibrate-on test" in r.err
    rec = json.loads((tmp_path / "nv" / "metrics.jsonl").read_text().splitlines()[0])
    assert "temperature" not in rec["test"] and math.isfinite(rec["test"]["cwece"])


def test_an_imported_teacher_gets_the_same_temperature_as_its_run(run, tmp_path, monkeypatch):
    run_dir, summary, _ = run
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    r = run_cli("teach", "--checkpoint", run_dir / "checkpoint.pt", *DS, "--val-split", "0.2",
                "--device", "cpu", "--runs-dir", tmp_path, "--name", "imp")
    assert r.code == 0, r.err
    imported = json.loads((tmp_path / "imp" / "summary.json").read_text())["last"]["test"]
    for k in ("temperature", "ece_ts", "nll_ts"):
        assert imported[k] == pytest.approx(summary["last"]["test"][k], rel=1e-5, abs=1e-7), k
