"""`labelenh teach` / `labelenh evaluate` through the CLI, and their refusals of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from clitools import assert_one_line_error, run_cli

TINY = ["--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet8", "--epochs", "1", "--batch-size", "64",
        "--milestones", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    r = run_cli("teach", *TINY, "--name", "t", "--runs-dir", runs)
    assert r.code == 0, r.err
    assert "Acc@1" in r.out and "ECE" in r.out  # the metrics table
    return runs / "t"


def test_teach_then_evaluate(teacher_run, tmp_path):
    summary = json.loads((teacher_run / "summary.json").read_text())
    out = tmp_path / "m.json"
    r = run_cli("evaluate", teacher_run, "--json", out, "--diagram", tmp_path / "rel.png", "--device", "cpu")
    assert r.code == 0, r.err
    m = json.loads(out.read_text())
    # evaluate() of the saved checkpoint reproduces the run's own last-epoch test metrics
    for k in ("acc1", "nll", "ece", "brier"):
        assert m[k] == pytest.approx(summary["last"]["test"][k], rel=1e-5, abs=1e-6)
    assert (tmp_path / "rel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_and_flag_precedence(tmp_path):
    rec = tmp_path / "r.toml"
    rec.write_text('model = "resnet8"\ndataset = "synthetic:10:20"\nimage_size = 16\nepochs = 1\nbatch_size = 64\nlr = 0.02\n'
                   'milestones = [5]\n')
    r = run_cli("teach", "--recipe", rec, "--lr", "0.03", "--device", "cpu", "--name", "x", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    cfg = json.loads((tmp_path / "x" / "config.json").read_text())
    assert cfg["train"]["lr"] == 0.03 and cfg["train"]["batch_size"] == 64 and cfg["model"] == "resnet8"


def test_seeds_make_an_ensemble(tmp_path):
    r = run_cli("teach", *TINY, "--seeds", "0,1", "--name", "ens", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    index = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert index["seeds"] == [0, 1] and len(index["members"]) == 2
    a = torch.load(tmp_path / "ens-s0" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ens-s1" / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_import_plain_state_dict(teacher_run, tmp_path):
    sd = torch.load(teacher_run / "checkpoint.pt", weights_only=True)["model"]
    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, plain)
    r = run_cli("teach", "--checkpoint", plain, "--model", "resnet8", "--dataset", "synthetic:10:20", "--image-size", "16",
                "--device", "cpu", "--name", "imp", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    got = json.loads((tmp_path / "imp" / "summary.json").read_text())["last"]["test"]
    want = json.loads((teacher_run / "summary.json").read_text())["last"]["test"]
    assert got["acc1"] == pytest.approx(want["acc1"]) and got["nll"] == pytest.approx(want["nll"], rel=1e-5)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnet9000"], "resnet9000"),
        (["--dataset", "mnist-ish"], "mnist-ish"),
        (["--schedule", "exponential"], "--schedule"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/root"], "cifar"),
        (["--epochs", "-1"], "--epochs"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--val-split", "1.5"], "--val-split"),
        (["--val-split", "0"], "--val-split"),
        (["--milestones", "a,b"], "--milestones"),
        (["--noise", "symmetric:1.7"], "noise"),
        (["--aug", "bogus"], "bogus"),
        (["--patience", "3"], "--val-split"),
        (["--seeds", "1,1"], "--seeds"),
    ],
)
def test_bad_teach_input(tmp_path, args, needle):
    base = ["--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet8", "--epochs", "1", "--device", "cpu"]
    r = run_cli("teach", *base, *args, "--runs-dir", tmp_path)
    assert_one_line_error(r, needle)
    assert not any(tmp_path.rglob("checkpoint.pt"))


def test_unreadable_recipe(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("model = [unclosed\n")
    assert_one_line_error(run_cli("teach", "--recipe", bad, "--runs-dir", tmp_path), "toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('modle = "resnet8"\n')
    assert_one_line_error(run_cli("teach", "--recipe", unknown, "--runs-dir", tmp_path), "modle")
    assert_one_line_error(run_cli("teach", "--recipe", tmp_path / "missing.toml"), "missing.toml")


def test_checkpoint_for_another_model_or_class_count(teacher_run, tmp_path):
    r = run_cli("evaluate", teacher_run, "--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet20", "--device", "cpu")
    assert r.code == 0  # a labelenh checkpoint names its own model; --model only matters for plain files
    sd = torch.load(teacher_run / "checkpoint.pt", weights_only=True)["model"]
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    r = run_cli("evaluate", plain, "--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet20", "--device", "cpu")
    assert_one_line_error(r, "resnet20")
    # synthetic has 10 classes like CIFAR-10, so use a genuinely different class count
    sd100 = {k: (torch.zeros(100, *v.shape[1:]) if k.startswith("fc.") else v) for k, v in sd.items()}
    torch.save(sd100, plain)
    r = run_cli("evaluate", plain, "--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet8", "--device", "cpu")
    assert_one_line_error(r, "fc.")


def test_evaluate_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("evaluate", tmp_path / "nope"), "nope")
