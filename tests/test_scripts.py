"""The experiment drivers (scripts/reproduce_*.py on scripts/driver.py): the commands they run
(dry run), and that a second run skips finished runs and resumes interrupted ones (runs and
stores) instead of refusing them."""

from __future__ import annotations

import csv
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import h5py
import pytest
import torch
from tinynet import TinyNet

from labelenh.data import TensorImages
from labelenh.store import export_soft_labels, teacher_from_model

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the drivers import scripts/driver.py, as when run from there
import driver  # noqa: E402


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def repro():
    return load("reproduce_cifar10_mini")


def commands(capsys) -> list[list[str]]:
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    return [shlex.split(x[2:]) for x in lines]


def flag(cmd: list[str], name: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == name]


def test_dry_run_lists_every_method_with_its_store_and_teachers(repro, tmp_path, capsys):
    b = repro.BUDGETS["tiny"]
    repro.experiment(tmp_path, b, None, repro.BASE_METHODS, "cpu", dry=True)
    cmds = commands(capsys)
    teach = [c for c in cmds if c[1] == "teach"]
    export = [c for c in cmds if c[1] == "export-soft-labels"]
    students = [c for c in cmds if c[1] == "student"]
    assert len(teach) == b["seeds"] and len(export) == 1 and cmds[-1][1] == "report"
    assert len(students) == len(repro.BASE_METHODS) * b["seeds"]
    # the store holds every teacher; single-teacher methods pick the first one
    assert flag(export[0], "--teacher") == [str(tmp_path / "runs" / f"teacher-s{s}") for s in range(b["seeds"])]
    by_name = {flag(c, "--name")[0]: c for c in students}
    assert flag(by_name["sl-s0"], "--teachers") == ["teacher-s0"]
    assert flag(by_name["en-sl-s1"], "--teachers") == [] and flag(by_name["en-sl-s1"], "--store")
    assert flag(by_name["aug-kd-sl-s0"], "--aug") == ["ricap"]
    assert flag(by_name["kd-s0"], "--teacher") == [str(tmp_path / "runs" / "teacher-s0")]
    assert flag(by_name["gls--s1"], "--smooth-rate") == ["-0.2"] and flag(by_name["gls--s1"], "--seed") == ["1"]
    assert not any("--resume" in c or "--noise" in c for c in cmds)


def parse_student(cmd: list[str]):
    """The student command as the CLI resolves it (the last of a repeated option wins)."""
    vals: dict[str, str] = {}
    for i, a in enumerate(cmd):
        if a.startswith("--") and i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            vals[a] = cmd[i + 1]
    return vals


def test_converged_budget_runs_every_method_on_both_view_stores(repro, tmp_path, capsys):
    """Every method of the converged setting, on a shared validation split; the Aug- rows on
    the store of their op, which holds a view for every student epoch; gls-warm starts from
    the same seed's vanilla run after it, at a constant learning rate of 1e-6."""
    b = repro.BUDGETS["converged"]
    assert b["views"] >= b["s_epochs"]  # no view repeats
    repro.experiment(tmp_path, b, None, list(repro.CLEAN_METHODS), "cpu", dry=True)
    out = capsys.readouterr().out
    assert "expected wall time: teachers" in out.splitlines()[0]
    cmds = [shlex.split(x[2:]) for x in out.splitlines() if x.startswith("$ ")]
    export = {flag(c, "--aug")[0]: c for c in cmds if c[1] == "export-soft-labels"}
    assert sorted(export) == ["cutmix", "ricap"]
    assert all(flag(c, "--views") == [str(b["views"])] for c in export.values())
    students = [c for c in cmds if c[1] == "student"]
    assert len(students) == len(repro.CLEAN_METHODS) * b["seeds"]
    assert all(flag(c, "--val-split") == ["0.1"] for c in cmds if c[1] in ("teach", "student", "export-soft-labels"))
    by_name = {flag(c, "--name")[0]: parse_student(c) for c in students}
    assert by_name["aug-sl-cutmix-s2"]["--store"] == flag(export["cutmix"], "--out")[0]
    assert by_name["aug-kd-sl-s0"]["--store"] == flag(export["ricap"], "--out")[0]
    assert by_name["dkd-s0"]["--method"] == "dkd" and by_name["dist-s1"]["--method"] == "dist"
    assert "--logit-stand" in next(c for c in students if flag(c, "--name") == ["kd-sl-stand-s0"])
    warm = by_name["gls-warm-s1"]
    assert warm["--init"] == str(tmp_path / "runs" / "vanilla-s1" / "best.pt")
    assert (warm["--schedule"], warm["--lr"], warm["--smooth-rate"]) == ("constant", "1e-6", "-0.2")
    order = [flag(c, "--name")[0] for c in students]
    assert order.index("gls-warm-s0") > order.index("vanilla-s2")  # after every vanilla run
    assert by_name["vanilla-s0"]["--schedule"] == "multistep" and by_name["vanilla-s0"]["--lr"] == "0.1"
    # clean images for every run but the Aug- rows, which keep their op's stored views
    assert by_name["vanilla-s0"]["--aug"] == "none" and by_name["aug-sl-cutmix-s0"]["--aug"] == "cutmix"
    assert all(flag(c, "--aug") == ["none"] for c in cmds if c[1] == "teach")


def test_a_method_needs_its_op_store(repro, tmp_path):
    with pytest.raises(SystemExit, match="cutmix views but this budget exports ricap"):
        repro.experiment(tmp_path, repro.BUDGETS["tiny"], None, ["aug-sl-cutmix"], "cpu", dry=True)


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


def test_a_failed_command_lets_the_others_finish_and_ends_in_one_line(monkeypatch):
    ran = []

    def fake_run(argv, env=None):
        ran.append(argv[1:])
        return type("Done", (), {"returncode": 2 if "bad" in argv else 0})()

    monkeypatch.setattr(driver.subprocess, "run", fake_run)
    cmds = [["teach", "--name", "bad"], ["teach", "--name", "good"], ["report", "runs"]]
    with pytest.raises(SystemExit) as e:
        driver.run_all(cmds, dry=False, jobs=2)
    assert sorted(ran) == sorted(cmds)  # every command ran although the first failed
    msg = str(e.value)
    assert msg.startswith("reproduce: 1 command(s) failed (teach --name bad)") and "\n" not in msg
    assert "rerunning this script" in msg


def test_an_interrupted_store_is_exported_again_and_a_finished_one_is_not(repro, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    src = TensorImages(torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (16,), generator=g))
    store = tmp_path / "store.h5"
    kw = dict(dataset="toy", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, chunk_size=8)
    export_soft_labels(store, [teacher_from_model(TinyNet(1), "t")], src, **kw)
    assert driver.store_complete(store)
    with h5py.File(store, "r+") as f:  # the flag written last is what an interrupted store lacks
        f.attrs["complete"] = False
    assert not driver.store_complete(store)
    assert not driver.store_complete(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert not driver.store_complete(tmp_path / "junk.h5")
    for name in ("teacher-s0", "teacher-s1"):  # tiny budget: 2 teachers, both finished
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    repro.experiment(tmp_path, repro.BUDGETS["tiny"], None, ["sl"], "cpu", dry=True)
    assert [c[1] for c in commands(capsys)][:1] == ["export-soft-labels"]  # resumed, not skipped
    with h5py.File(store, "r+") as f:
        f.attrs["complete"] = True
    repro.experiment(tmp_path, repro.BUDGETS["tiny"], None, ["sl"], "cpu", dry=True)
    assert "export-soft-labels" not in [c[1] for c in commands(capsys)]


def test_cifar100_driver_dry_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["reproduce_cifar100.py", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"),
                                      "--students", "resnet20", "--seeds", "2", "--dry-run"])
    load("reproduce_cifar100").main()
    cmds = commands(capsys)
    teach = [c for c in cmds if c[1] == "teach"]
    assert len(teach) == 2 and Path(flag(teach[0], "--recipe")[0]).is_file()  # found from any folder
    students = [c for c in cmds if c[1] == "student"]
    assert len(students) == 8 * 2
    plus = next(c for c in students if flag(c, "--name") == ["resnet20-aug-sl+-s0"])
    assert flag(plus, "--schedule")[-1] == "long" and flag(plus, "--aug") == ["ricap"]
    assert all(flag(c, "--data-root") == [str(tmp_path)] for c in cmds if c[1] != "report")


def _fake_run(folder: Path, acc: float, ece: float, ece_ts: float, train_acc: float = 1.0, t: float = 2.0) -> None:
    folder.mkdir(parents=True)
    test = {"acc1": acc, "nll": 1.0, "ece": ece, "ece_ts": ece_ts, "brier": 0.5, "temperature": t}
    (folder / "summary.json").write_text(json.dumps({"last": {"epoch": 30, "test": test}, "best": {"epoch": 9}}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 30, "train_acc": train_acc, "test": test}) + "\n")


def test_converged_summary_decides_by_twice_the_standard_error(tmp_path):
    import converged_summary as cs

    runs = tmp_path / "clean" / "runs"
    for s, (a, e) in enumerate([(0.50, 0.20), (0.51, 0.21), (0.49, 0.19)]):
        _fake_run(runs / f"vanilla-s{s}", a, e, 0.03)
        _fake_run(runs / f"kd-sl-s{s}", a + 0.05, 0.02 + s * 0.001, 0.02)  # clearly better on both
        _fake_run(runs / f"ls-s{s}", a + (0.01 if s else -0.01), e, 0.03)  # within the spread
    _fake_run(runs / "dkd-s0", 0.9, 0.01, 0.01)  # one seed: nothing decided
    (runs / "dist-s0").mkdir()  # unfinished: no summary.json, left out
    text = cs.summarize(tmp_path, ["vanilla", "ls", "kd-sl", "dkd", "dist"])
    lines = {ln.split("**")[1]: ln for ln in text.splitlines() if ln.startswith("- **")}
    assert "+5.00 points, beats vanilla" in lines["kd-sl"] and "%, beats vanilla (20.0 %)" in lines["kd-sl"]
    assert "beats vanilla + TS (3.0 %)" in lines["kd-sl"]  # 2.1 % against vanilla's 3.0 % after TS
    assert "points, ties vanilla" in lines["ls"] and "ties vanilla (20.0 %)" in lines["ls"]
    assert "loses to vanilla + TS" in lines["ls"]  # 20 % against 3 %
    assert "is undecided (one seed) against vanilla" in lines["dkd"] and "dist" not in lines
    assert "the converged, over-confident regime was reached" in text
    assert "| kd-sl | 70.75 / 0.019 | acc higher, ECE lower | 55.0 / 0.021 | acc higher, ECE lower | yes |" in text
    assert "| ls | 69.43 / 0.053 | acc same, ECE lower | 50.3 / 0.200 | acc same, ECE same | accuracy only |" in text
    # below 99 % train accuracy the regime is not claimed
    for s in range(3):
        (runs / f"vanilla-s{s}" / "metrics.jsonl").write_text(json.dumps({"train_acc": 0.9}) + "\n")
    assert "the regime was NOT reached" in cs.summarize(tmp_path, ["vanilla"])


def test_converged_summary_reads_the_report_where_run_folders_are_gone(tmp_path):
    """Run folders are not kept in git: a half's report/runs.csv stands in for them, and a run
    folder that is present wins over the report's line for the same run."""
    import converged_summary as cs

    from labelenh.report import aggregate, collect_runs
    from labelenh.report.table import to_tidy_csv

    gone = tmp_path / "made"
    for s in range(3):
        cfg = {"stage": "student", "method": "vanilla", "model": "resnet8", "data": {"dataset": "synthetic"},
               "train": {"seed": s, "epochs": 30}}
        _fake_run(gone / f"vanilla-s{s}", 0.5 + s / 100, 0.2, 0.03, train_acc=0.995)
        summary = json.loads((gone / f"vanilla-s{s}" / "summary.json").read_text())
        summary.update(name=f"vanilla-s{s}", config=cfg)
        summary["best"].update(selected_by="val_nll", test=summary["last"]["test"])
        (gone / f"vanilla-s{s}" / "summary.json").write_text(json.dumps(summary))
    half = tmp_path / "clean"
    (half / "report").mkdir(parents=True)
    (half / "report" / "runs.csv").write_text(to_tidy_csv(aggregate(collect_runs([gone]))))
    rows = cs.collect(half)
    assert rows["vanilla"].values["acc1"] == pytest.approx([0.50, 0.51, 0.52])
    assert rows["vanilla"].values["train_acc"] == [0.995] * 3 and rows["vanilla"].values["best_epoch"] == [9.0] * 3
    assert "the converged, over-confident regime was reached" in cs.regime(rows)
    _fake_run(half / "runs" / "vanilla-s1", 0.7, 0.1, 0.02, train_acc=0.9)
    assert cs.collect(half)["vanilla"].values["acc1"] == pytest.approx([0.50, 0.70, 0.52])
    # an older report without train columns: the regime is not guessed
    with (half / "report" / "runs.csv").open(newline="") as f:
        lines = [{k: v for k, v in r.items() if not k.startswith("train_")} for r in csv.DictReader(f)]
    with (half / "report" / "runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(lines[0]))
        w.writeheader()
        w.writerows(lines)
    (half / "runs" / "vanilla-s1" / "summary.json").unlink()
    assert "is unknown" in cs.regime(cs.collect(half))


def test_converged_summary_draws_each_half_by_method_name(tmp_path, monkeypatch):
    """--plots: a dot per finished run and a cross at each method's mean, named as in the tables."""
    import converged_summary as cs

    import labelenh.plots

    for half in ("clean", "noisy-sym0.4"):
        for s, (a, e) in enumerate([(0.50, 0.20), (0.52, 0.22)]):
            _fake_run(tmp_path / half / "runs" / f"vanilla-s{s}", a, e, 0.03)
            _fake_run(tmp_path / half / "runs" / f"gls-warm-s{s}", a + 0.1, e / 2, 0.03)
    drawn = {}

    def fake(points, path, *, means, title):
        drawn[Path(path).parent.name] = (points, means, title)
        return Path(path)

    monkeypatch.setattr(labelenh.plots, "accuracy_ece_scatter", fake)
    paths = cs.draw(tmp_path, ["vanilla", "gls-warm"])
    assert paths == [tmp_path / h / "acc-vs-ece.png" for h in ("clean", "noisy-sym0.4")]
    points, means, title = drawn["noisy-sym0.4"]
    assert sorted(points) == sorted([("vanilla", 0.50, 0.20), ("vanilla", 0.52, 0.22),
                                     ("gls-warm", 0.60, 0.10), ("gls-warm", 0.62, 0.11)])
    assert [m[0] for m in means] == ["vanilla", "gls-warm"]
    assert means[1][1:] == pytest.approx((0.61, 0.105)) and "noise" in title


def test_converged_summary_plot_is_a_png(tmp_path):
    import converged_summary as cs

    for s in range(2):
        _fake_run(tmp_path / "clean" / "runs" / f"vanilla-s{s}", 0.5 + s / 100, 0.2, 0.03)
    (path,) = cs.draw(tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_converged_summary_without_runs_is_one_line_and_exit_2(tmp_path):
    import subprocess

    (tmp_path / "clean" / "runs").mkdir(parents=True)  # a half with no finished run
    out = subprocess.run([sys.executable, str(SCRIPTS / "converged_summary.py"), str(tmp_path), "--plots"],
                         capture_output=True, text=True, cwd=SCRIPTS, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "holds no finished runs" in out.stderr
    assert not (tmp_path / "clean" / "acc-vs-ece.png").exists()
