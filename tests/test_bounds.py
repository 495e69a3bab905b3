"""Numbers, names and checkpoints that a hostile or careless user may pass, and a full disk.

Every case must end with exit code 2 and one stderr line that names the problem, no traceback,
nothing already written changed, and nothing new that looks valid (no run folder for a value
out of range, no store, no half-written checkpoint). The full-disk cases run on a real small
tmpfs (tests/smallfs.py; they skip where mounting is not possible).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from smallfs import fill, free_bytes, small_fs

from labelenh import bounds as B
from labelenh.checkpoint import read_checkpoint
from labelenh.errors import LabelenhError

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
TRAIN = ["--model", "resnet8", "--batch-size", "64", "--milestones", "5", "--device", "cpu"]
TEACH = ["teach", *DS, *TRAIN, "--epochs", "1"]


@pytest.fixture(autouse=True)
def _no_diagrams(monkeypatch):
    # matplotlib costs about a second per run and is not what these tests are about
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A finished 2-epoch teacher run folder."""
    root = tmp_path_factory.mktemp("bounds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
        r = run_cli("teach", *DS, *TRAIN, "--epochs", "2", "--name", "t", "--runs-dir", root)
    assert r.code == 0, r.err
    return root / "t"


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with the digest of its bytes ("" for a folder)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            for p in sorted(root.rglob("*"))}


# ---- numeric options: out of range -> one line, and nothing is created --------------------------

BIG = "99999999999999999999999"  # > 2^63
NUMBER_CASES = [
    ("lr-1e308", [*TEACH, "--lr", "1e308"], ["--lr", "(0, 1e4]"]),
    ("lr-inf", [*TEACH, "--lr", "inf"], ["--lr", "(0, 1e4]"]),
    ("lr-zero", [*TEACH, "--lr", "0"], ["--lr", "(0, 1e4]"]),
    ("weight-decay-1e308", [*TEACH, "--weight-decay", "1e308"], ["--weight-decay", "[0, 1e4]"]),
    ("weight-decay-nan", [*TEACH, "--weight-decay", "nan"], ["--weight-decay", "[0, 1e4]"]),
    ("epochs-flag", ["teach", *DS, *TRAIN, "--epochs", "99999999999999999999"], ["--epochs", "[1, 1e6]"]),
    ("batch-size", [*TEACH, "--batch-size", "10000000"], ["--batch-size", "[1, 65536]"]),
    ("seed-huge", [*TEACH, "--seed", BIG], ["--seed", "[0, 2^63)"]),
    ("seed-negative", [*TEACH, "--seed", "-1"], ["--seed", "[0, 2^63)"]),
    ("seeds-list", [*TEACH, "--seeds", f"0,{BIG}"], ["--seeds", "[0, 2^63)"]),
    ("split-seed", [*TEACH, "--split-seed", str(2**63)], ["--split-seed", "[0, 2^63)"]),
    ("noise-seed", [*TEACH, "--noise", "symmetric:0.2", "--noise-seed", BIG], ["--noise-seed", "2^63"]),
    ("image-size", ["teach", "--dataset", "synthetic:2:1", "--image-size", "100000", *TRAIN, "--epochs", "1"],
     ["--image-size", "[1, 4096]"]),
    ("ece-bins-teach", [*TEACH, "--ece-bins", "100000000"], ["--ece-bins", "[2, 1e4]"]),
    ("ece-bins-one", [*TEACH, "--ece-bins", "1"], ["--ece-bins", "[2, 1e4]"]),
    ("patience", [*TEACH, "--val-split", "0.1", "--patience", "10000000"], ["--patience", "[0, 1e6]"]),
    ("milestones", [*TEACH, "--milestones", "5,99999999999"], ["--milestones", "[1, 1e6]"]),
    ("synthetic-samples", ["teach", "--dataset", "synthetic:10:100000000", *TRAIN, "--epochs", "1"],
     ["synthetic:10:100000000", "2^28", "3072000000000"]),
    ("synthetic-classes", ["teach", "--dataset", "synthetic:1000000:1", "--image-size", "2", *TRAIN,
                           "--epochs", "1"], ["class count", "[2, 1e5]", "1000000"]),
    ("student-lr", ["student", *DS, *TRAIN, "--epochs", "1", "--method", "ls", "--lr", "1e308"], ["--lr", "(0, 1e4]"]),
    ("student-epochs", ["student", *DS, *TRAIN, "--method", "ls", "--epochs", "99999999999999999999"],
     ["--epochs", "[1, 1e6]"]),
    ("student-seed", ["student", *DS, *TRAIN, "--epochs", "1", "--method", "ls", "--seed", BIG], ["--seed", "2^63"]),
    ("views-show-seed", ["views", "show", "--seed", str(2**63), "--out", "{work}/v.png"], ["--seed", "[0, 2^63)"]),
    ("views-show-view", ["views", "show", "--view", "1000000000", "--out", "{work}/v.png"], ["--view", "[0, 1e5)"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in NUMBER_CASES], ids=[c[0] for c in NUMBER_CASES])
def test_a_number_out_of_range_is_refused_before_anything_is_written(tmp_path, argv, needles):
    work = tmp_path / "work"
    work.mkdir()
    argv = [a.format(work=work) for a in argv]
    if argv[0] in ("teach", "student"):
        argv += ["--runs-dir", str(work / "runs")]
    r = run_cli(*argv)
    assert_one_line_error(r, *needles)
    assert tree(work) == {}, "a run folder (or any file) was created for a refused value"


@pytest.mark.parametrize("key, value, needles", [
    ("epochs", "99999999999999999999", ["--epochs", "[1, 1e6]"]),
    ("lr", "1e308", ["--lr", "(0, 1e4]"]),
    ("seed", "-5", ["--seed", "[0, 2^63)"]),
    ("split_seed", str(2**63), ["--split-seed", "[0, 2^63)"]),
    ("ece_bins", "100000000", ["--ece-bins", "[2, 1e4]"]),
])
def test_a_recipe_value_out_of_range_is_refused_like_the_flag(tmp_path, key, value, needles):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'dataset = "synthetic:10:20"\nimage_size = 16\nmodel = "resnet8"\n{key} = {value}\n')
    r = run_cli("teach", "--recipe", recipe, "--device", "cpu", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "runs").exists()


def test_every_bound_is_stated_in_the_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: a range is never wrapped
    monkeypatch.setenv("TERMINAL_WIDTH", "400")
    r = run_cli("teach", "--help")
    assert r.code == 0
    text = " ".join(r.out.split())
    for b in (B.LR, B.WEIGHT_DECAY, B.EPOCHS, B.BATCH_SIZE, B.SEED, B.ECE_BINS, B.IMAGE_SIZE):
        assert b.text() in text, b


@pytest.mark.parametrize("value", [0, -1, 1e308, float("inf"), float("nan"), "1", True, None])
def test_the_bound_itself_rejects_what_is_outside(value):
    with pytest.raises(LabelenhError, match=r"--lr must be a number in \(0, 1e4\]"):
        B.LR.check(value, "--lr")
    assert B.LR.check(1e4, "--lr") == 1e4 and B.LR.check(0.1, "--lr") == 0.1


def test_seeds_stop_just_below_2_to_the_63():
    assert B.SEED.contains(2**63 - 1) and not B.SEED.contains(2**63)
    assert not B.EPOCHS.contains(2.0) and B.EPOCHS.contains(2)  # integers only


def test_evaluate_and_report_bound_their_bins(teacher, tmp_path):
    r = run_cli("evaluate", teacher, "--ece-bins", "100000000", "--device", "cpu", "--diagram", tmp_path / "d.png")
    assert_one_line_error(r, "--ece-bins", "[2, 1e4]")
    r = run_cli("report", teacher, "--out", tmp_path / "rep", "--ece-bins", "100000000")
    assert_one_line_error(r, "--ece-bins", "[2, 1e4]")
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("extra, needles", [
    (["--aug", "ricap", "--views", "1000000000"], ["--views", "[0, 1e5]"]),
    (["--aug", "ricap", "--views", "2", "--view-seed", BIG], ["--view-seed", "[0, 2^63)"]),
    (["--batch-size", "10000000"], ["--batch-size", "[1, 65536]"]),
])
def test_export_numbers_are_bounded_before_the_store_is_created(teacher, tmp_path, extra, needles):
    r = run_cli("export-soft-labels", "-t", teacher, *DS, "--out", tmp_path / "s.h5", "--device", "cpu", *extra)
    assert_one_line_error(r, *needles)
    assert tree(tmp_path) == {}


def test_an_npz_label_of_a_billion_is_not_a_billion_class_head(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 10**9, 1]), x_test=x, y_test=np.array([0, 1, 0, 1]))
    r = run_cli("teach", "--dataset", f"npz:{path}", *TRAIN, "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, "label 1000000000", "classes", "[2, 1e5]")
    assert not (tmp_path / "runs").exists()


# ---- run names --------------------------------------------------------------------------------

BAD_NAMES = {"parent": "../x", "absolute": "{tmp}/elsewhere/x", "nested": "a/b", "backslash": "a\\b", "dot": ".",
             "dotdot": "..", "empty": "", "blank": "  ", "newline": "a\nb", "nul": "a\x00b",
             "escape": "a\x1b[31mb", "tab": "a\tb", "trailing-space": "x ", "too-long": "x" * 300}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_run_name_must_be_one_folder_name(tmp_path, name):
    name = name.replace("{tmp}", str(tmp_path))  # an absolute path that stays inside the test's folder
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    for argv in ([*TEACH, "--name", name], ["student", *DS, *TRAIN, "--epochs", "1", "--method", "ls", "--name", name]):
        r = run_cli(*argv, "--runs-dir", work / "runs")
        assert_one_line_error(r, "--name")
        assert "\n" not in r.err.rstrip("\n")
    assert tree(tmp_path) == {"work": "", "work/runs": ""}, "something was written for a bad name"


def test_an_ensemble_name_is_checked_for_every_member_before_training(tmp_path):
    r = run_cli(*TEACH, "--seeds", "0,1", "--name", "a/b", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, "--name", "'/'")
    assert not (tmp_path / "runs").exists()


def test_an_ensemble_member_that_already_holds_a_run_is_refused_before_any_trains(tmp_path):
    taken = tmp_path / "runs" / "e-s1"
    taken.mkdir(parents=True)
    (taken / "checkpoint.pt").write_bytes(b"an earlier run")
    r = run_cli(*TEACH, "--seeds", "0,1", "--name", "e", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, "e-s1 already holds a run", "--resume")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["e-s1"], "member s0 trained first"


def test_a_good_name_with_dots_and_dashes_is_accepted():
    from labelenh.engine import check_run_name

    assert check_run_name("teach-resnet20_cifar10.v2") == "teach-resnet20_cifar10.v2"


# ---- resume ------------------------------------------------------------------------------------

def test_resume_refuses_fewer_epochs_and_changes_nothing(teacher, tmp_path):
    before = tree(teacher)
    r = run_cli(*TEACH, "--name", "t", "--runs-dir", teacher.parent, "--resume")  # --epochs 1 < 2
    assert_one_line_error(r, "--resume", "2 of 2 epochs", "--epochs may only grow", "--epochs 2")
    assert tree(teacher) == before
    assert json.loads((teacher / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_of_a_missing_run_creates_no_folder(tmp_path):
    r = run_cli(*TEACH, "--name", "nothing", "--runs-dir", tmp_path / "runs", "--resume")
    assert_one_line_error(r, "--resume", "does not exist")
    assert not (tmp_path / "runs" / "nothing").exists()


# ---- malformed checkpoints ---------------------------------------------------------------------

def _set(key: str, value) -> Callable[[dict], None]:
    def edit(ck: dict) -> None:
        ck[key] = value
    return edit


def _drop(key: str) -> Callable[[dict], None]:
    return lambda ck: ck.pop(key)


def _set_in(part: str, key: str, value) -> Callable[[dict], None]:
    def edit(ck: dict) -> None:
        ck[part][key] = value
    return edit


def _config_data(key: str, value) -> Callable[[dict], None]:
    def edit(ck: dict) -> None:
        ck["config"]["data"][key] = value
    return edit


MALFORMED = {
    "no-model-name": (_drop("model_name"), ["lacks model_name"]),
    "num-classes-text": (_set("num_classes", "ten"), ["num_classes", "str 'ten'"]),
    "num-classes-billion": (_set("num_classes", 10**9), ["num_classes", "[2, 1e5]"]),
    "model-a-list": (_set("model", [1, 2]), ["model must be a state_dict", "list"]),
    "model-empty": (_set("model", {}), ["model must be a state_dict"]),
    "metrics-a-list": (_set("metrics", [0.5]), ["metrics must be a table of numbers", "list"]),
    "config-a-string": (_set("config", "lr=0.1"), ["config must be a table", "str"]),
    "config-data-unknown-key": (_config_data("colour", "red"), ["config.data has unknown keys", "colour"]),
    "config-data-wrong-type": (_config_data("val_split", "half"), ["config.data.val_split", "half"]),
    "config-train-unknown-key": (_set_in("config", "train", {"turbo": 1}), ["config.train", "turbo"]),
    "epoch-negative": (_set("epoch", -3), ["epoch must be", "-3"]),
    "in-chans-zero": (_set("in_chans", 0), ["in_chans"]),
    "newer-version": (_set("version", 2), ["version", "newer labelenh"]),
}


@pytest.fixture(scope="module")
def raw_checkpoint(teacher) -> dict:
    return torch.load(teacher / "checkpoint.pt", map_location="cpu", weights_only=True)


def _write(ck: dict, edit: Callable[[dict], None], path: Path) -> Path:
    import copy

    ck = copy.deepcopy(ck)
    edit(ck)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)
    return path


@pytest.mark.parametrize("case", MALFORMED.keys())
def test_a_malformed_checkpoint_is_one_line_in_every_reader(teacher, raw_checkpoint, tmp_path, case):
    edit, needles = MALFORMED[case]
    work = tmp_path / "work"
    bad = _write(raw_checkpoint, edit, work / "bad.pt")
    run = work / "runs" / "t"  # a run folder whose checkpoint is the malformed one
    _write(raw_checkpoint, edit, run / "checkpoint.pt")
    (run / "config.json").write_bytes((teacher / "config.json").read_bytes())
    before = tree(work)
    for argv in (["evaluate", bad, *DS, "--device", "cpu", "--diagram", work / "d.png"],
                 ["export-soft-labels", "-t", bad, *DS, "--out", work / "s.h5", "--device", "cpu"],
                 ["student", *DS, *TRAIN, "--epochs", "1", "--method", "ls", "--init", bad, "--runs-dir", work / "s"],
                 [*TEACH[:-2], "--epochs", "3", "--name", "t", "--runs-dir", work / "runs", "--resume"]):
        r = run_cli(*argv)
        assert_one_line_error(r, "malformed", *needles)
        assert str(bad if "--resume" not in argv else run / "checkpoint.pt") in r.err
    assert tree(work) == before, "a refused checkpoint changed or left files"


@pytest.mark.parametrize("entry", ["evaluate-own-data", "teach-checkpoint", "student-kd", "report-diagram"])
def test_every_entry_point_validates_the_checkpoint(teacher, raw_checkpoint, tmp_path, entry):
    bad = _write(raw_checkpoint, _set("num_classes", "ten"), tmp_path / "r" / "checkpoint.pt")
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        (tmp_path / "r" / name).write_bytes((teacher / name).read_bytes())
    argv = {"evaluate-own-data": ["evaluate", bad, "--device", "cpu", "--diagram", tmp_path / "d.png"],
            "teach-checkpoint": [*TEACH, "--checkpoint", bad, "--runs-dir", tmp_path / "runs"],
            "student-kd": ["student", *DS, *TRAIN, "--epochs", "1", "--method", "kd", "--teacher", bad,
                           "--runs-dir", tmp_path / "runs"]}.get(entry)
    if entry == "report-diagram":
        # a report draws what it can: the malformed checkpoint becomes a note, not a traceback
        r = run_cli("report", tmp_path / "r", "--out", tmp_path / "rep", "--no-plots", "--device", "cpu")
        assert r.code == 0, r.err
        assert "malformed" in r.err and "num_classes" in r.err and "Traceback" not in r.err
        return
    r = run_cli(*argv)
    assert_one_line_error(r, "malformed", "num_classes")
    assert not (tmp_path / "runs").exists()


RESUME_MALFORMED = {
    "no-engine": (_drop("engine"), ["lacks engine"]),
    "no-optimizer": (_drop("optimizer"), ["lacks optimizer"]),
    "history-text": (_set_in("engine", "history", "x"), ["engine.history", "list"]),
    "step-negative": (_set_in("engine", "step", -1), ["engine.step"]),
    "optimizer-of-another-model": (_set("optimizer", {"state": {}, "param_groups": []}),
                                   ["does not fit this run", "ValueError"]),
    "task-state-garbage": (_set("task", {"method": {"matrix": [1, 2]}}), []),
}


@pytest.mark.parametrize("case", RESUME_MALFORMED.keys())
def test_a_checkpoint_that_cannot_resume_is_one_line(teacher, raw_checkpoint, tmp_path, case):
    edit, needles = RESUME_MALFORMED[case]
    run = tmp_path / "runs" / "t"
    _write(raw_checkpoint, edit, run / "checkpoint.pt")
    (run / "config.json").write_bytes((teacher / "config.json").read_bytes())
    before = tree(tmp_path)
    r = run_cli(*TEACH[:-2], "--epochs", "3", "--name", "t", "--runs-dir", tmp_path / "runs", "--resume")
    if case == "task-state-garbage":
        # a teacher has no task state to restore: the extra entry is ignored and the run resumes
        assert r.code == 0, r.err
        return
    assert_one_line_error(r, "malformed", *needles)
    assert tree(tmp_path) == before


def test_a_plain_state_dict_with_non_text_keys_is_refused_in_one_line(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({1: torch.zeros(3), "format": 5}, path)
    r = run_cli("evaluate", path, *DS, "--model", "resnet8", "--device", "cpu", "--diagram", tmp_path / "d.png")
    assert_one_line_error(r, "do not fit resnet8", "missing")


def test_a_good_checkpoint_passes_the_schema(teacher):
    ck = read_checkpoint(teacher / "checkpoint.pt")
    assert ck["model_name"] == "resnet8" and ck["epoch"] == 2


# ---- a full disk (a real small tmpfs) ------------------------------------------------------------

def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last(tmp_path):
    with small_fs(tmp_path, 4096) as mnt:
        runs = mnt / "runs"
        r = run_cli(*TEACH, "--name", "t", "--runs-dir", runs)
        assert r.code == 0, r.err
        ck = runs / "t" / "checkpoint.pt"
        kept = _digest(ck)
        size = ck.stat().st_size
        filler = fill(mnt, leave_kib=size // 1024 // 4)  # room for the JSON files, not a checkpoint
        assert free_bytes(mnt) < size
        r = run_cli(*TEACH[:-2], "--epochs", "2", "--name", "t", "--runs-dir", runs, "--resume")
        assert_one_line_error(r, "no space left", str(ck), "previous checkpoint.pt is intact")
        assert "inline_container" not in r.err and "enforce fail" not in r.err
        assert _digest(ck) == kept and read_checkpoint(ck)["epoch"] == 1
        assert _temporaries(runs) == []
        # with space again, the same command completes the run
        filler.unlink()
        r = run_cli(*TEACH[:-2], "--epochs", "2", "--name", "t", "--runs-dir", runs, "--resume")
        assert r.code == 0, r.err
        assert read_checkpoint(ck)["epoch"] == 2
        assert json.loads((runs / "t" / "summary.json").read_text())["epochs_run"] == 2


@pytest.mark.parametrize("where", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_a_checkpoint_write_that_runs_out_of_space_anywhere_is_one_error(tmp_path, where):
    # the disk fills at several places inside torch's zip writer, up to its last bytes (the end of
    # the archive, written when it closes)
    from labelenh.checkpoint import save_checkpoint

    payload = {"model_name": "x", "num_classes": 10, "model": {"w": torch.arange(60_000, dtype=torch.float32)}}
    with small_fs(tmp_path, 1024) as mnt:
        path = save_checkpoint(mnt / "c.pt", {**payload, "epoch": 1})
        kept, size = _digest(path), path.stat().st_size
        fill(mnt, leave_kib=int(size * where) // 1024)
        assert free_bytes(mnt) < size
        with pytest.raises(LabelenhError, match=r"^no space left on device while writing .*c\.pt: .*"
                                                r"the previous c\.pt is intact$"):
            save_checkpoint(path, {**payload, "epoch": 2})
        assert _digest(path) == kept and _temporaries(mnt) == []


def test_a_full_disk_for_a_new_student_run_leaves_no_valid_looking_run(tmp_path):
    with small_fs(tmp_path, 2048) as mnt:
        fill(mnt, leave_kib=64)  # the JSON files fit, the first checkpoint does not
        runs = mnt / "runs"
        r = run_cli("student", *DS, *TRAIN, "--epochs", "1", "--method", "ls", "--name", "s", "--runs-dir", runs)
        assert_one_line_error(r, "no space left", str(runs / "s" / "checkpoint.pt"), "nothing was written")
        left = {p.name for p in (runs / "s").iterdir()}
        assert not left & {"checkpoint.pt", "best.pt", "summary.json"}, left
        assert _temporaries(runs) == []


def test_a_full_disk_with_no_room_at_all_names_the_first_file(tmp_path):
    with small_fs(tmp_path, 512) as mnt:
        fill(mnt, leave_kib=0)
        r = run_cli(*TEACH, "--name", "t", "--runs-dir", mnt / "runs")
        assert r.code == 2 and "Traceback" not in r.err
        assert_one_line_error(r, "no space left")
        assert not (mnt / "runs" / "t" / "checkpoint.pt").exists()


@pytest.mark.parametrize("leave_kib", [0, 12])
def test_a_full_disk_while_writing_a_report_is_one_line(teacher, tmp_path, leave_kib):
    with small_fs(tmp_path, 512) as mnt:
        out = mnt / "rep"
        out.mkdir()
        (out / "report.md").write_text("the previous report\n")
        fill(mnt, leave_kib=leave_kib)  # 12 KiB: the tables fit, the figures do not
        r = run_cli("report", teacher, "--out", out, "--no-diagrams")
        assert_one_line_error(r, "no space left", str(out))
        assert r.out == "" or "Traceback" not in r.out
        # the previous report is intact or replaced whole, never truncated
        text = (out / "report.md").read_text()
        assert text == "the previous report\n" or text.startswith("|") or text.startswith("#"), text[:80]
        assert _temporaries(out) == []
        for png in out.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 100


def test_a_full_disk_while_writing_metrics_json_is_one_line(teacher, tmp_path):
    with small_fs(tmp_path, 512) as mnt:
        fill(mnt, leave_kib=0)
        r = run_cli("evaluate", teacher, "--device", "cpu", "--json", mnt / "m.json", "--diagram", tmp_path / "d.png")
        assert_one_line_error(r, "no space left", str(mnt / "m.json"))
        assert not (mnt / "m.json").exists()


def test_small_fs_really_is_small(tmp_path):
    # the helper must give a real file system that fills up, or the tests above prove nothing
    with small_fs(tmp_path, 256) as mnt:
        fill(mnt, leave_kib=0)
        with pytest.raises(OSError) as e, open(mnt / "x", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
        assert e.value.errno == 28


@pytest.mark.parametrize("flag", ["--init", "--weights"])
def test_tensors_that_cannot_be_copied_into_the_model_are_one_line(tmp_path, flag):
    # tensors of the right names and shapes but without data (the "meta" device): loading them
    # fails inside load_state_dict, after every name and shape check passed
    from labelenh.models import build_model

    path = tmp_path / "meta.pt"
    model = build_model("resnet8", 10, in_chans=3)
    torch.save({k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}, path)
    cmd = ["student", "--method", "ls"] if flag == "--init" else ["teach"]
    r = run_cli(*cmd, *DS, *TRAIN, "--epochs", "1", flag, path, "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, "do not fit resnet8", "conv1.weight")
    assert not (tmp_path / "runs").exists()
