"""scripts/gpu_check.sh, the prepared GPU check: its CPU dry run passes every stage and writes
the figures; bad arguments, failing and hung stages fail loudly and by name; the helpers find
the view ops from the code and catch a replay that differs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402

import labelenh.views  # noqa: E402


def run_sh(*args: str, out: Path, env: dict[str, str] | None = None, timeout: int = 600
           ) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            **(env or {})}
    full.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / gpu_check.JSONL).read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    t = time.perf_counter()
    r = run_sh("--dry-run", out=out)
    return r, out, time.perf_counter() - t


@pytest.mark.slow
def test_dry_run_passes_every_stage(dry_run):
    r, out, seconds = dry_run
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "all stages passed" in r.stderr
    got = rows(out)
    stages = {x["case"]: x["value"] for x in got if x["figure"] == "stage"}
    assert stages == {s: "ok" for s in gpu_check.STAGES if s != "report"}
    assert all(x["dry_run"] and x["device"] == "cpu" for x in got)
    print(f"dry run: {seconds:.0f} s")


@pytest.mark.slow
def test_dry_run_writes_every_figure(dry_run):
    _, out, _ = dry_run
    got = rows(out)
    by = {}
    for x in got:
        by.setdefault(x["figure"], []).append(x)
    tests = by["cuda-tests"][0]
    assert tests["tests"] >= 1 and tests["skipped"] == tests["tests"]  # no CUDA here: all skip
    views = {x["case"].split(":")[0]: x for x in by["views"]}
    assert sorted(views) == sorted(gpu_check.view_ops())
    assert all(x["met"] and x["exact"] for x in views.values())  # CPU against CPU
    assert views["mixup"]["goal"] != "bit-identical" and views["cutmix"]["goal"] == "bit-identical"
    compared = [x for x in by["export"] if x["unit"] == "max |dlogit|"]
    assert len(compared) == 3 and all(x["met"] and x["same_recipes_and_labels"] for x in compared)
    b = gpu_check.DRY.batch_sizes[0]
    cases = {x["case"] for x in by["student"]}
    for amp in ("bf16", "fp16"):
        for cl in ("cl", "nchw"):
            for case in ("vanilla", "kd-sl", "kd"):
                assert f"{case} b{b} {amp} {cl}" in cases
            assert f"kd-sl / vanilla images/s, b{b} {amp} {cl}" in cases
            assert any(c.startswith("online kd") and f"b{b} {amp} {cl}," in c for c in cases)
    speeds = [x["value"] for x in by["student"] if x["unit"] == "images/s"]
    assert speeds and all(v > 0 for v in speeds)
    knobs = next(x for x in by["student"] if x["case"] == "knobs")
    assert knobs["value"] == gpu_check.knobs_line()
    assert [x["unit"] for x in by["compile"]] == ["x"] * len(gpu_check.DRY.compile_cases)
    wait = next(x for x in by["folder"] if x["unit"] == "fraction")
    assert 0 <= wait["value"] <= 1 and wait["goal"] == "<= 0.05"
    md = (out / gpu_check.MARKDOWN).read_text()
    assert "| figure | case | value | unit | goal | met |" in md and "- dry run: True" in md
    assert md.count("\n| views |") == len(views)
    assert (out / "gpu_check.log").stat().st_size > 0


def test_unknown_flags_are_refused_in_one_line(tmp_path):
    r = run_sh("--bogus", out=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--bogus" in r.stderr
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--bogus"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--bogus" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_real_check_refuses(tmp_path):
    r = gpu_check.main(["--stage", "env", "--out", str(tmp_path)])
    assert r == 2


def test_a_hung_stage_times_out_by_name(tmp_path):
    # 1 s is less than any stage needs (importing torch alone takes longer): every stage is
    # killed by its timeout, the script goes on to the next and exits 1 naming them
    r = run_sh("--dry-run", out=tmp_path, env={"GPU_CHECK_TIMEOUT_S": "1"}, timeout=300)
    assert r.returncode == 1
    assert "FAILED: stage env: timed out after 1 s" in r.stderr
    failed = [x["case"] for x in rows(tmp_path) if x["figure"] == "stage" and x["value"] == "failed"]
    assert failed == list(gpu_check.STAGES)


def test_a_failing_stage_exits_1_naming_it(tmp_path, monkeypatch, capsys):
    def broken(c):
        raise gpu_check.CheckFailed("views on cuda differ from the CPU replay: ricap")

    monkeypatch.setitem(gpu_check.RUN, "views", broken)
    assert gpu_check.main(["--dry-run", "--stage", "views", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_check.py: stage views failed: views on cuda differ from the CPU replay: ricap"]
    last = rows(tmp_path)[-1]
    assert (last["figure"], last["case"], last["value"]) == ("stage", "views", "failed")
    assert last["error"].endswith("ricap")


# ---- helpers ------------------------------------------------------------------------------------

def test_knobs_say_what_the_engine_and_the_cli_lack(monkeypatch):
    from labelenh.engine import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert "amp" not in gpu_check.missing_knobs() and "amp" in names
    assert "autocast" not in gpu_check.knobs_line()  # --amp is a student flag
    monkeypatch.setitem(gpu_check.KNOBS, "amp", ("autocast", "--no-such-flag"))
    assert "no student flag: autocast" in gpu_check.knobs_line()
    monkeypatch.setitem(gpu_check.KNOBS, "no_such_field", ("a knob", "--a-knob"))
    assert gpu_check.missing_knobs()["no_such_field"] == "a knob"


def test_view_ops_come_from_the_code(monkeypatch):
    assert gpu_check.view_ops() == list(labelenh.views.OPS)
    # a registry module, where the checkout has one, wins over the package's OPS
    monkeypatch.setitem(sys.modules, "labelenh.views.registry",
                        types.SimpleNamespace(OPS={"crop-flip": object(), "rrc": object()}))
    assert gpu_check.view_ops() == ["crop-flip", "rrc"]


def test_view_tolerance_follows_the_ops_a_spec_names():
    assert gpu_check.view_tolerance(gpu_check.view_spec("cutmix")) == 0
    assert gpu_check.view_tolerance(gpu_check.view_spec("mixup")) == gpu_check.FLOAT_VIEW_OPS["mixup"]
    nested = types.SimpleNamespace(to_dict=lambda: {"op": "cutout", "base": {"op": "rrc"}})
    assert gpu_check.view_tolerance(nested) == gpu_check.FLOAT_VIEW_OPS["rrc"]


@pytest.mark.parametrize("op,delta,ok", [("ricap", 1.0, False), ("mixup", 1e-4, True), ("mixup", 0.5, False)])
def test_compare_views_catches_a_replay_that_differs(monkeypatch, op, delta, ok):
    real = labelenh.views.apply_views
    calls = []

    def second_call_off(src, rec, lab, k):  # the "device" replay is the second call
        x, w = real(src, rec, lab, k)
        calls.append(1)
        if len(calls) == 2:
            x = x.clone()
            x[0, 0, 0, 0] += delta
        return x, w

    monkeypatch.setattr(labelenh.views, "apply_views", second_call_off)
    r = gpu_check.compare_views(op, torch.device("cpu"), 8, (12, 10))
    assert r["ok"] is ok and not r["exact"] and r["max_dpixel"] == pytest.approx(delta, rel=0.05)  # + float rounding at 0..255
