"""`labelenh student` end to end: every registered method with and without the store's views,
resume, the shallow CNN, the views < epochs warning, the long schedule, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clitools import assert_one_line_error, run_cli

from labelenh.cli.common import resolve, train_config
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError
from labelenh.methods import METHODS, build_method
from labelenh.student import StudentSettings, train_student
from labelenh.teach import DataSettings

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
TINY = [*DS, "--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--milestones", "5",
        "--device", "cpu"]
V = 3  # views per sample in the ricap store



@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny teacher; a store of its clean logits + V ricap views, and a clean-only one."""
    root = tmp_path_factory.mktemp("student")
    r = run_cli("teach", *TINY, "--name", "t", "--runs-dir", root)
    assert r.code == 0, r.err
    out = {"teacher": root / "t", "ricap": root / "ricap.h5", "clean": root / "clean.h5"}
    r = run_cli("export-soft-labels", "-t", out["teacher"], "--out", out["ricap"], *DS, "--aug", "ricap",
                "--views", V, "--device", "cpu")
    assert r.code == 0, r.err
    r = run_cli("export-soft-labels", "-t", out["teacher"], "--out", out["clean"], *DS, "--device", "cpu")
    assert r.code == 0, r.err
    return out


def method_args(made, method: str, aug: str | None) -> list:
    """The flags a method needs: a store for the store methods (and for every method under
    --aug, which trains on the store's views), an online teacher for kd."""
    cls = METHODS[method]
    args = ["--method", method]
    if cls.teacher == "store" or aug:
        args += ["--store", made["ricap"]]
    if aug:
        args += ["--aug", aug]
    if cls.teacher == "online":
        args += ["--teacher", made["teacher"]]
    return args


def first_float_param(method: str) -> tuple[str, float] | None:
    """A parameter to set away from its default, so the test sees it reach the run config."""
    for key, p in METHODS[method].params.items():
        if p.type is float and p.default:
            return key, p.default / 2
    return None


@pytest.mark.parametrize("aug", [None, "ricap"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_one_epoch(made, tmp_path, monkeypatch, method, aug):
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)  # ~1 s each
    args = ["student", *TINY, *method_args(made, method, aug), "--name", "s", "--runs-dir", tmp_path]
    changed = first_float_param(method)
    if changed:
        args += ["--param", f"{changed[0]}={changed[1]}"]
    r = run_cli(*args)
    assert r.code == 0, r.err
    run = tmp_path / "s"
    summary = json.loads((run / "summary.json").read_text())
    test = summary["last"]["test"]
    assert test["n"] == 40
    for k in ("acc1", "acc5", "nll", "ece", "brier"):
        assert math.isfinite(test[k]), (k, test)
    cfg = json.loads((run / "config.json").read_text())
    want = build_method(method, 10, **dict([changed] if changed else [])).hparams
    assert cfg["stage"] == "student" and cfg["method"] == method and cfg["aug"] == aug
    assert cfg["method_params"] == want
    if changed:
        assert cfg["method_params"][changed[0]] == changed[1] != METHODS[method].params[changed[0]].default
    if cfg.get("store_record"):
        assert cfg["store_record"]["num_views"] == V and list(cfg["store_record"]["teachers"]) == ["t"]
    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ck["method"]["name"] == method and ck["epoch"] == 1


def settings(made, tmp_path, method: str, epochs: int = 2) -> StudentSettings:
    return StudentSettings(model="resnet8", method=method, store=str(made["ricap"]), aug="ricap",
                           data=DataSettings(dataset="synthetic:10:20", image_size=16),
                           train=TrainConfig(epochs=epochs, batch_size=64, milestones=[1]),
                           name="r", runs_dir=str(tmp_path), device="cpu")


@pytest.mark.parametrize("method", ["ols", "kd-sl"])
def test_resume_equals_the_uninterrupted_run(made, tmp_path, monkeypatch, method):
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
    train_student(settings(made, tmp_path / "full", method))

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_student(settings(made, tmp_path / "part", method), on_epoch_end=stop_after_first)
    with pytest.raises(LabelenhError, match="--resume"):
        train_student(settings(made, tmp_path / "part", method))
    train_student(settings(made, tmp_path / "part", method), resume=True)
    a = torch.load(tmp_path / "full" / "r" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "r" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["task"].keys() == b["task"].keys()
    for k, v in a["task"]["method"].items():  # the OLS matrix S and its accumulators
        assert torch.equal(v, b["task"]["method"][k]), k
    if method == "ols":
        assert a["task"]["method"]["S"].sum() > 0  # S was filled after epoch 1
    ma = [json.loads(x) for x in (tmp_path / "full" / "r" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "part" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]


def test_shallow_student_distils_from_the_store(made, tmp_path):
    r = run_cli("student", *TINY[:4], "--model", "shallow", *TINY[6:], "--method", "sl",
                "--temperature", "2", "--store", made["clean"], "--name", "sh", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    assert "Acc@1" in r.out and (tmp_path / "sh" / "reliability.png").is_file()
    ck = torch.load(tmp_path / "sh" / "checkpoint.pt", weights_only=False)
    assert ck["model_name"] == "shallow" and ck["method"]["params"]["T"] == 2.0


def test_warns_when_the_store_has_fewer_views_than_epochs(made, tmp_path, monkeypatch):
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
    base = ["student", *TINY, "--method", "sl", "--store", made["ricap"], "--aug", "ricap", "--runs-dir", tmp_path]
    r = run_cli(*base, "--name", "w", "--epochs", str(V + 1))
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{V} views for {V + 1} epochs" in warnings[0]
    r = run_cli(*base, "--name", "ok", "--epochs", str(V))
    assert r.code == 0 and "warning" not in r.err


def test_long_schedule_preset():
    v = resolve({"schedule": "long", "epochs": None, "milestones": None, "lr": None}, {})
    assert v["epochs"] == 350 and v["milestones"] == [150, 200, 250, 300] and v["schedule"] == "multistep"
    cfg = train_config(v)
    assert (cfg.epochs, cfg.milestones, cfg.gamma) == (350, [150, 200, 250, 300], 0.1)
    # explicit flags still win over the preset, whatever the recipe file says; the preset's
    # milestones keep their fractions of the run when --epochs changes its length
    v = resolve({"schedule": "long", "epochs": 400, "lr": None}, {"lr": 0.1, "epochs": 10})
    assert v["epochs"] == 400 and v["lr"] == 0.1
    assert v["milestones"] == [round(m * 400 / 350) for m in (150, 200, 250, 300)]
    v = resolve({"schedule": "long", "epochs": 400, "milestones": "150,200", "lr": None}, {})
    assert v["milestones"] == [150, 200]  # given: kept as they are


def test_cli_passes_the_long_schedule_to_the_student(made, monkeypatch):
    seen = {}

    def fake(s, resume=False):
        seen["s"] = s
        return {"name": "x", "last": {"test": None}}

    monkeypatch.setattr("labelenh.student.train_student", fake)
    r = run_cli("student", *DS, "--method", "sl", "--store", made["ricap"], "--aug", "ricap",
                "--schedule", "long", "--device", "cpu")
    assert r.code == 0, r.err
    t = seen["s"].train
    assert (t.epochs, t.milestones, t.schedule) == (350, [150, 200, 250, 300], "multistep")


REFUSALS = [
    (["--method", "sl"], ["--store"]),
    (["--method", "ils", "--aug", "ricap"], ["--store"]),
    (["--method", "sl", "--store", "{ricap}", "--aug", "mixup"], ["--aug mixup", "ricap"]),
    (["--method", "sl", "--store", "{clean}", "--aug", "ricap"], ["--aug ricap", "no views"]),
    (["--method", "sl", "--store", "{ricap}", "--aug", "bogus"], ["bogus"]),
    (["--method", "en-sl", "--store", "{ricap}", "--teachers", "t,zz"], ["--teachers", "zz"]),
    (["--method", "vanilla", "--teachers", "t"], ["--teachers", "--store"]),
    (["--method", "sl", "--store", "{ricap}", "--noise", "symmetric:0.2"], ["made for", "--noise"]),
    (["--method", "sl", "--store", "{ricap}", "--val-split", "0.2"], ["made for", "--val-split"]),
    (["--method", "sl", "--store", "{ricap}", "--dataset", "synthetic:10:10"], ["made for"]),
    (["--method", "sl", "--store", "{ricap}", "--image-size", "20"], ["made for"]),
    (["--method", "sl", "--store", "{missing}"], ["does not exist"]),
    (["--method", "ls", "--alpha", "1.5"], ["alpha", "[0, 1]"]),
    (["--method", "ls", "--param", "alpha=-0.1"], ["alpha", "[0, 1]"]),
    (["--method", "kd-sl", "--store", "{ricap}", "--temperature", "0"], ["T", "(0, inf]"]),
    (["--method", "sl", "--store", "{ricap}", "--param", "T=-1"], ["T"]),
    (["--method", "kd"], ["--teacher"]),
    (["--method", "sl", "--store", "{ricap}", "--teacher", "{teacher}"], ["--teacher", "online"]),
    (["--method", "bogus"], ["bogus", "vanilla"]),
    (["--method", "ls", "--param", "alpha"], ["--param", "KEY=VALUE"]),
    (["--method", "ls", "--param", "=0.1"], ["--param", "KEY=VALUE"]),
    (["--method", "ls", "--param", "alpha=abc"], ["alpha", "float"]),
    (["--method", "ls", "--param", "beta=1"], ["beta", "alpha"]),
    (["--method", "vanilla", "--temperature", "3"], ["--temperature", "vanilla"]),
]


@pytest.mark.parametrize("args, needles", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_bad_student_input_is_one_line_and_writes_nothing(made, tmp_path, args, needles):
    paths = {**{k: str(v) for k, v in made.items()}, "missing": str(tmp_path / "missing.h5")}
    args = [a.format(**paths) for a in args]
    base = [*DS, "--model", "resnet8", "--epochs", "1", "--device", "cpu"]
    # later flags win in click: the case's own --dataset/--image-size override the base ones
    r = run_cli("student", *base, *args, "--runs-dir", tmp_path)
    assert_one_line_error(r, *needles)
    assert not any(tmp_path.rglob("checkpoint.pt"))
