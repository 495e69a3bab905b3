"""scripts/reproduce_cifar10_mini.py: the commands it runs (dry run), and that a second run
skips finished runs and resumes interrupted ones instead of refusing them."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("reproduce_cifar10_mini", REPO / "scripts" / "reproduce_cifar10_mini.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def commands(capsys) -> list[list[str]]:
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    return [shlex.split(x[2:]) for x in lines]


def flag(cmd: list[str], name: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == name]


def test_dry_run_lists_every_method_with_its_store_and_teachers(repro, tmp_path, capsys):
    b = repro.BUDGETS["tiny"]
    repro.experiment(tmp_path, b, None, list(repro.CLEAN_METHODS), "cpu", dry=True)
    cmds = commands(capsys)
    teach = [c for c in cmds if c[1] == "teach"]
    export = [c for c in cmds if c[1] == "export-soft-labels"]
    students = [c for c in cmds if c[1] == "student"]
    assert len(teach) == b["seeds"] and len(export) == 1 and cmds[-1][1] == "report"
    assert len(students) == len(repro.CLEAN_METHODS) * b["seeds"]
    # the store holds every teacher; single-teacher methods pick the first one
    assert flag(export[0], "--teacher") == [str(tmp_path / "runs" / f"teacher-s{s}") for s in range(b["seeds"])]
    by_name = {flag(c, "--name")[0]: c for c in students}
    assert flag(by_name["sl-s0"], "--teachers") == ["teacher-s0"]
    assert flag(by_name["en-sl-s1"], "--teachers") == [] and flag(by_name["en-sl-s1"], "--store")
    assert flag(by_name["aug-kd-sl-s0"], "--aug") == ["ricap"]
    assert flag(by_name["kd-s0"], "--teacher") == [str(tmp_path / "runs" / "teacher-s0")]
    assert flag(by_name["gls--s1"], "--smooth-rate") == ["-0.2"] and flag(by_name["gls--s1"], "--seed") == ["1"]
    assert not any("--resume" in c or "--noise" in c for c in cmds)


def test_noisy_run_again_skips_finished_and_resumes_interrupted(repro, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("teacher-s0", "sl-s0"):  # finished
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text("{}")
        (runs / name / "checkpoint.pt").write_bytes(b"")
    (runs / "teacher-s1").mkdir()
    (runs / "teacher-s1" / "checkpoint.pt").write_bytes(b"")  # interrupted
    (runs / "vanilla-s0").mkdir()  # started, no checkpoint yet: a fresh start is right
    repro.experiment(tmp_path, repro.BUDGETS["tiny"], "symmetric:0.4", repro.NOISY_METHODS, "cpu", dry=True)
    cmds = commands(capsys)
    names = [flag(c, "--name")[0] for c in cmds if c[1] in ("teach", "student")]
    assert "teacher-s0" not in names and "sl-s0" not in names
    resumed = sorted(flag(c, "--name")[0] for c in cmds if "--resume" in c)
    assert resumed == ["teacher-s1"]
    assert all(flag(c, "--noise") == ["symmetric:0.4"] for c in cmds if c[1] in ("teach", "student"))
    assert sorted({flag(c, "--method")[0] for c in cmds if c[1] == "student"}) == ["gls", "kd-sl", "ls", "sl", "vanilla"]


def test_a_failed_command_lets_the_others_finish_and_ends_in_one_line(repro, monkeypatch, capsys):
    ran = []

    def fake_run(argv, env=None):
        ran.append(argv[1:])
        return type("Done", (), {"returncode": 2 if "bad" in argv else 0})()

    monkeypatch.setattr(repro.subprocess, "run", fake_run)
    cmds = [["teach", "--name", "bad"], ["teach", "--name", "good"], ["report", "runs"]]
    with pytest.raises(SystemExit) as e:
        repro.run_all(cmds, dry=False, jobs=2)
    assert sorted(ran) == sorted(cmds)  # every command ran although the first failed
    msg = str(e.value)
    assert msg.startswith("reproduce: 1 command(s) failed (teach --name bad)") and "\n" not in msg
    assert "rerunning this script" in msg
