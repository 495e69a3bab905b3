"""The method API on the command line: options made from the methods' Params, `labelenh methods`,
`student --method M --help`, the new methods end to end (from a store and online), the epoch
reaching the methods, bad parameters, and resuming runs recorded before a parameter existed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clitools import assert_one_line_error, run_cli

from labelenh.cli.student import method_options
from labelenh.methods import METHODS

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
TINY = [*DS, "--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--milestones", "5",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two tiny teachers; a ricap store of both, and a top-k store of the first."""
    root = tmp_path_factory.mktemp("methods")
    for name, seed in (("a", "0"), ("b", "1")):
        r = run_cli("teach", *TINY, "--seed", seed, "--name", name, "--runs-dir", root)
        assert r.code == 0, r.err
    out = {"a": root / "a", "b": root / "b", "two": root / "two.h5", "topk": root / "topk.h5"}
    r = run_cli("export-soft-labels", "-t", out["a"], "-t", out["b"], "--out", out["two"], *DS,
                "--aug", "ricap", "--views", 2, "--device", "cpu")
    assert r.code == 0, r.err
    r = run_cli("export-soft-labels", "-t", out["a"], "--out", out["topk"], *DS, "--format", "topk:3",
                "--device", "cpu")
    assert r.code == 0, r.err
    return out


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)


# --- options generated from the Params ----------------------------------------------------------

def test_every_parameter_of_every_method_has_an_option():
    opts = method_options()
    for name, cls in METHODS.items():
        for key, p in cls.params.items():
            opt = opts[p.option(key)]
            assert opt.keys[name] == key and opt.type is p.type
    # the names the earlier hand-written flags had still exist, for the same parameters
    assert opts["temperature"].keys["kd-sl"] == "T" and opts["epsilon"].keys["ils"] == "eps"
    assert opts["smooth-rate"].keys["gls"] == "r" and opts["alpha"].keys["ls"] == "alpha"
    assert {"wa", "wb", "ensemble", "beta", "warmup", "w-ce", "logit-stand", "intra-weight"} <= set(opts)


def test_student_help_lists_each_option_with_each_methods_meaning():
    r = run_cli("student", "--help")
    assert r.code == 0, r.err
    flat = " ".join(r.out.replace("│", " ").split())
    for opt in method_options().values():
        assert f"--{opt.name}" in flat, opt.name
    assert "weight of TCKD" in flat and "smoothing mass moved to the uniform" in flat  # --alpha in dkd and ls
    assert "labelenh methods M" in flat


def test_student_method_help_shows_the_method():
    r = run_cli("student", "--method", "dkd", "--help")
    assert r.code == 0, r.err
    for needle in ("dkd: decoupled KD", "min((epoch+1)/warmup, 1)", "warmup (--warmup, 20, [0, 1e6])",
                   "beta (--beta, 8.0, (0, inf])", "example: labelenh student --method dkd --store STORE.h5"):
        assert needle in r.out, needle
    r = run_cli("student", "--help", "--method=dist")
    assert "gamma (--intra-weight, 1.0" in r.out and "per rank under torchrun" in r.out


def test_labelenh_methods_lists_and_describes():
    r = run_cli("methods")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    for name, cls in METHODS.items():
        assert any(line.split()[:2] == [name, cls.teacher] for line in lines if line.strip()), name
    r = run_cli("methods", "dist")
    assert r.code == 0 and r.out.startswith("dist: DIST") and "T (--temperature, 1.0, (0, inf])" in r.out
    assert_one_line_error(run_cli("methods", "dkdd"), "unknown method", "dkd")


# --- bad input ----------------------------------------------------------------------------------

BAD = [
    (["--method", "dkd", "--beta", "0"], ["beta", "(0, inf]"]),
    (["--method", "dkd", "--beta", "-1"], ["beta", "(0, inf]"]),
    (["--method", "dist", "--beta", "0"], ["beta", "(0, inf]"]),
    (["--method", "dkd", "--warmup", "-1"], ["warmup", "[0, 1e6]"]),
    (["--method", "dkd", "--param", "warmup=-3"], ["warmup", "[0, 1e6]"]),
    (["--method", "dkd", "--temperature", "0"], ["T", "(0, inf]"]),
    (["--method", "dist", "--temperature", "-2"], ["T", "(0, inf]"]),
    (["--method", "kd-sl", "--param", "T=0"], ["T", "(0, inf]"]),
    (["--method", "ls", "--beta", "1"], ["--beta", "does not apply", "'ls'", "--alpha"]),
    (["--method", "dist", "--warmup", "3"], ["--warmup", "does not apply", "'dist'"]),
    (["--method", "sl", "--logit-stand"], ["--logit-stand", "does not apply", "'sl'"]),
    (["--method", "dkd", "--param", "gamma=1"], ["no parameter 'gamma'", "dkd"]),
    (["--method", "vanilla", "--intra-weight", "1"], ["--intra-weight", "'vanilla'", "none"]),
    (["--method", "dkd", "--ensemble", "vote"], ["ensemble", "confidence"]),
    (["--method", "dkd", "--param", "logit_stand=perhaps"], ["logit_stand", "bool"]),
    (["--method", "dkd", "--warmup", "2.5"], ["--warmup", "integer"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_method_parameters_are_one_line_and_exit_2(tmp_path, args, needles):
    r = run_cli("student", *TINY, *args, "--runs-dir", tmp_path)
    assert_one_line_error(r, *needles)
    assert not any(tmp_path.rglob("*"))


# --- end to end -----------------------------------------------------------------------------------

def summary_of(run):
    s = json.loads((run / "summary.json").read_text())
    test = s["last"]["test"]
    for k in ("acc1", "nll", "ece", "brier"):
        assert math.isfinite(test[k]), (k, test)
    return s


CASES = {
    "dkd-store": ["--method", "dkd", "--store", "{two}", "--aug", "ricap", "--ensemble", "confidence"],
    "dkd-online": ["--method", "dkd", "--teacher", "{a}"],
    "dkd-online-ricap": ["--method", "dkd", "--teacher", "{a}", "--teacher", "{b}", "--aug", "ricap"],
    "dkd-topk": ["--method", "dkd", "--store", "{topk}", "--logit-stand", "--temperature", "2"],
    "dist-store": ["--method", "dist", "--store", "{two}", "--aug", "ricap"],
    "dist-online": ["--method", "dist", "--teacher", "{a}", "--intra-weight", "2"],
    "kd-sl-stand": ["--method", "kd-sl", "--store", "{topk}", "--logit-stand", "--temperature", "2"],
    "en-sl-confidence": ["--method", "en-sl", "--store", "{two}", "--ensemble", "confidence"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_new_methods_train_from_the_store_and_online(made, tmp_path, quiet, case):
    args = [a.format(**{k: str(v) for k, v in made.items()}) for a in CASES[case]]
    r = run_cli("student", *TINY, *args, "--name", "s", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    s = summary_of(tmp_path / "s")
    cfg = s["config"]
    method = args[1]
    assert cfg["method"] == method and set(cfg["method_params"]) == set(METHODS[method].params)
    online = "--teacher" in args
    assert bool(cfg["online_teachers"]) == online and (cfg.get("store_record") is None) == online
    if "--logit-stand" in args:
        assert cfg["method_params"]["logit_stand"] is True and cfg["method_params"]["T"] == 2.0
    if "--ensemble" in args:
        assert cfg["method_params"]["ensemble"] == "confidence"
    metrics = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    terms = {"dkd": ("train_ce", "train_tckd", "train_nckd"), "dist": ("train_ce", "train_inter", "train_intra"),
             "kd-sl": ("train_ce", "train_kd"), "en-sl": ("train_sl",)}[method]
    assert all(k in metrics[0] for k in terms), metrics[0]


def test_store_and_online_teacher_together_are_refused(made, tmp_path):
    r = run_cli("student", *TINY, "--method", "dkd", "--store", made["two"], "--teacher", made["a"],
                "--runs-dir", tmp_path)
    assert_one_line_error(r, "--teacher", "--store", "one of them")


def test_the_engine_tells_the_method_the_epoch_and_step(made, tmp_path, quiet, monkeypatch):
    from labelenh.methods.dkd import DecoupledKD

    seen = []
    real = DecoupledKD.loss

    def spy(self, logits, inp, ctx=None):
        seen.append((ctx.epoch, ctx.step, ctx.steps_per_epoch, self.ramp(ctx)))
        return real(self, logits, inp, ctx)

    monkeypatch.setattr(DecoupledKD, "loss", spy)
    args = [*TINY, "--epochs", "3", "--batch-size", "50", "--method", "dkd", "--store", made["two"],
            "--warmup", "2"]
    r = run_cli("student", *args, "--name", "ctx", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    steps = 200 // 50
    assert seen == [(e, s, steps, min((e + 1) / 2, 1.0)) for e in range(3) for s in range(steps)]


def test_a_run_recorded_before_a_parameter_existed_resumes(made, tmp_path, quiet):
    """kd-sl gained logit_stand: a run whose config lacks it (made before) must still resume,
    and a run that set it away from the default must not be confused with one that did not."""
    base = ["student", *TINY, "--method", "kd-sl", "--store", made["two"], "--alpha", "0.5",
            "--name", "old", "--runs-dir", tmp_path]
    assert run_cli(*base).code == 0
    run = tmp_path / "old"
    # rewrite the record as an earlier labelenh wrote it: no logit_stand, no ensemble rule choice
    ck_path = run / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=False)
    for cfg in (ck["config"],):
        del cfg["method_params"]["logit_stand"]
    torch.save(ck, ck_path)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["method_params"]["logit_stand"]
    (run / "config.json").write_text(json.dumps(cfg))
    r = run_cli(*base, "--epochs", "2", "--resume")
    assert r.code == 0, r.err
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
    r = run_cli(*base, "--epochs", "3", "--resume", "--logit-stand")
    assert_one_line_error(r, "--resume", "different settings")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dkd-store", "dist-online"])
def test_new_methods_under_torchrun(made, tmp_path, case):
    """Two CPU ranks (gloo): DKD from the two-teacher ricap store; DIST with an online teacher,
    whose intra-class relation is computed over each rank's own batch."""
    from test_distributed import torchrun

    args = [a.format(**{k: str(v) for k, v in made.items()}) for a in CASES[case]]
    r = torchrun("student", *TINY, "--epochs", "2", "--batch-size", "32", *args, "--name", "ddp",
                 "--runs-dir", tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run folder:") == 1
    s = summary_of(tmp_path / "ddp")
    assert s["epochs_run"] == 2
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ck["engine"]["world_size"] == 2 and ck["method"]["name"] == args[1]
