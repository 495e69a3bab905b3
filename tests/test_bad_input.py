"""Bad input across every command, as one table: wrong paths, files of the wrong kind, stores,
datasets, teachers and class counts that do not match, out-of-range hyper-parameters,
conflicting flags, corrupt recipes, corrupt stored recipes and NaN/Inf stored logits.

Every case must end with exit code 2 and one stderr line that names the problem and the fix,
no traceback, no input file changed, and no new file that looks valid (a checkpoint, a run
summary or a store that opens). Untrusted files (a pickle that would run code, an HDF5
attribute holding Python) are refused without running anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from storetools import restamp

from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
TRAIN = ["--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--milestones", "5", "--device", "cpu"]
N, V = 200, 2  # train samples of synthetic:10:20; views per sample in the ricap store


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 1-epoch teacher run, a store of its clean logits + V ricap views, a clean-only store."""
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)  # ~1 s of matplotlib
        r = run_cli("teach", *DS, *TRAIN, "--name", "t", "--runs-dir", root)
    assert r.code == 0, r.err
    out = {"teacher": root / "t", "store": root / "ricap.h5", "clean": root / "clean.h5"}
    r = run_cli("export-soft-labels", "-t", out["teacher"], "--out", out["store"], *DS, "--aug", "ricap",
                "--views", V, "--batch-size", 64, "--device", "cpu")
    assert r.code == 0, r.err
    r = run_cli("export-soft-labels", "-t", out["teacher"], "--out", out["clean"], *DS, "--device", "cpu")
    assert r.code == 0, r.err
    return out


# ---- how the cases prepare their files (into the case's own folder `work`) -------------------

def text_file(name: str, text: str = "hello\n") -> Callable:
    def prep(made, work: Path) -> Path:
        p = work / name
        p.write_text(text)
        return p
    return prep


def bytes_file(name: str, data: bytes) -> Callable:
    def prep(made, work: Path) -> Path:
        p = work / name
        p.write_bytes(data)
        return p
    return prep


def truncated_checkpoint(made, work: Path) -> Path:
    raw = (made["teacher"] / "checkpoint.pt").read_bytes()
    p = work / "half.pt"
    p.write_bytes(raw[: len(raw) // 2])
    return p


def copied_run(made, work: Path) -> Path:
    shutil.copytree(made["teacher"], work / "runs" / "t")
    return work / "runs"


def run_with_truncated_checkpoint(made, work: Path) -> Path:
    runs = copied_run(made, work)
    ck = runs / "t" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    return runs


def student_run_on_clean_store(made, work: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
        r = run_cli("student", *DS, *TRAIN, "--method", "sl", "--store", made["clean"], "--name", "s",
                    "--runs-dir", work / "runs")
    assert r.code == 0, r.err
    return work / "runs"


def damaged_store(edit: Callable[[h5py.File], None], source: str = "store") -> Callable:
    """A copy of a good store with `edit` applied through h5py, then re-signed (checksums made
    anew), so that the check behind the checksums is the one that must refuse it."""
    def prep(made, work: Path) -> Path:
        p = work / "damaged.h5"
        shutil.copy(made[source], p)
        with h5py.File(p, "r+") as f:
            edit(f)
        restamp(p)
        return p
    return prep


def set_record(sample: int, view: int, name: str, value) -> Callable[[h5py.File], None]:
    """Overwrite one field of one stored view recipe (a structured record)."""
    def edit(f: h5py.File) -> None:
        rec = f["views/recipes"][sample, view]
        rec[name] = np.full(rec[name].shape, value, dtype=rec[name].dtype)
        f["views/recipes"][sample, view] = rec
    return edit


def set_value(ds: str, index: tuple, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[ds][index] = value
    return edit


def set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[key] = value
    return edit


# ---- the table -------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    argv: list[str]  # "{teacher}", "{store}", "{clean}", "{work}" and "{file}" are filled in
    needles: list[str]  # all must appear in the one stderr line
    prepare: Callable | None = None  # (made, work) -> Path, the "{file}" of the case
    tags: set[str] = field(default_factory=set)


STUDENT = ["student", *DS, *TRAIN, "--runs-dir", "{work}/runs"]
EXPORT = ["export-soft-labels", "-t", "{teacher}", *DS, "--device", "cpu"]
TEACH = ["teach", *DS, *TRAIN, "--runs-dir", "{work}/runs"]
RECORD = (37, 1)  # the damaged (sample, view) in the corrupt-recipe cases

CASES = [
    # -- teach -------------------------------------------------------------------------------
    Case("teach-unknown-flag", [*TEACH, "--learning-rate", "0.1"],
         ["no such option", "--learning-rate", "labelenh teach --help"]),
    Case("teach-flag-not-a-number", [*TEACH, "--lr", "fast"], ["--lr", "valid number", "--help"]),
    Case("teach-recipe-value-of-wrong-type", [*TEACH, "--recipe", "{file}"], ["recipe", "epochs", "integer", "fix"],
         text_file("r.toml", 'epochs = "ten"\n')),
    Case("teach-recipe-not-utf8", [*TEACH, "--recipe", "{file}"], ["not valid TOML", "fix the file"],
         bytes_file("r.toml", b"\xff\xfe model = 1")),
    Case("teach-warmup-longer-than-training", [*TEACH, "--warmup-epochs", "3"], ["--warmup-epochs", "[0, epochs)"]),
    Case("teach-checkpoint-with-resume", [*TEACH, "--checkpoint", "{teacher}", "--resume"],
         ["--checkpoint", "cannot be combined", "--resume"]),
    Case("teach-checkpoint-is-a-text-file", [*TEACH, "--checkpoint", "{file}"],
         ["not a loadable checkpoint", "pass a .pt"], text_file("notes.pt")),
    Case("teach-runs-dir-is-a-file", [*TEACH[:-2], "--runs-dir", "{file}"], ["a file stands where a folder is needed", "--runs-dir"],
         text_file("runs")),
    Case("teach-resume-with-other-settings", [*TEACH[:-2], "--runs-dir", "{file}", "--name", "t", "--resume",
                                              "--lr", "0.5"],
         ["--resume", "different settings", "train.lr", "same flags or a new --name"], copied_run),
    Case("teach-one-bin", [*TEACH, "--ece-bins", "1"], ["--ece-bins", "[2, 1e4]"]),
    Case("teach-log-every-zero", [*TEACH, "--log", "csv", "--log-every", "0"], ["--log-every", "[1, 1e9]"]),
    Case("teach-unknown-logger", [*TEACH, "--log", "csv,wandb"], ["--log", "'wandb'", "csv, tensorboard"]),
    Case("teach-resume-from-truncated-checkpoint", [*TEACH[:-2], "--runs-dir", "{file}", "--name", "t", "--resume"],
         ["not a loadable checkpoint", "truncated"], run_with_truncated_checkpoint),
    # -- evaluate ----------------------------------------------------------------------------
    Case("evaluate-a-store", ["evaluate", "{store}", "--device", "cpu"], ["not a loadable checkpoint"]),
    Case("evaluate-random-bytes", ["evaluate", "{file}", *DS, "--device", "cpu"], ["not a loadable checkpoint"],
         bytes_file("random.pt", bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))),
    Case("evaluate-truncated-checkpoint", ["evaluate", "{file}", *DS, "--device", "cpu"],
         ["not a loadable checkpoint", "truncated"], truncated_checkpoint),
    Case("evaluate-other-class-count", ["evaluate", "{teacher}", "--dataset", "synthetic:5:20", "--image-size", "16",
                                        "--device", "cpu"], ["predicts 10 classes", "has 5"]),
    Case("evaluate-val-split-missing", ["evaluate", "{teacher}", "--split", "val", "--device", "cpu"],
         ["--split val", "--val-split"]),
    Case("evaluate-one-bin", ["evaluate", "{teacher}", "--ece-bins", "1", "--device", "cpu"],
         ["--ece-bins", "[2, 1e4]"]),
    Case("evaluate-calibrate-on-missing-val", ["evaluate", "{teacher}", "--calibrate-on", "val", "--device", "cpu"],
         ["--calibrate-on val", "splits test", "--val-split", "--calibrate-on none"]),
    Case("evaluate-calibrate-on-train", ["evaluate", "{teacher}", "--calibrate-on", "train", "--device", "cpu"],
         ["--calibrate-on 'train'", "val, test, none"]),
    Case("evaluate-json-is-a-folder", ["evaluate", "{teacher}", "--json", "{work}", "--device", "cpu",
                                       "--diagram", "{work}/d.png"], ["folder", "--json"]),
    # -- export-soft-labels --------------------------------------------------------------------
    Case("export-teacher-of-other-class-count", [*EXPORT, "--dataset", "synthetic:5:20", "--out", "{work}/s.h5"],
         ["predicts 10 classes", "has 5", "use a teacher trained on this dataset"]),
    Case("export-teacher-is-a-store", ["export-soft-labels", "-t", "{store}", *DS, "--out", "{work}/s.h5",
                                       "--device", "cpu"], ["not a loadable checkpoint"]),
    Case("export-out-below-a-file", [*EXPORT, "--out", "{file}/s.h5"],
         ["a file stands where a folder is needed", "--out", "nothing was written"], text_file("notes")),
    Case("export-mixup-alpha-zero", [*EXPORT, "--out", "{work}/s.h5", "--aug", "mixup", "--views", "2",
                                     "--mixup-alpha", "0"], ["--mixup-alpha", "positive"]),
    Case("export-verify-negative", [*EXPORT, "--out", "{work}/s.h5", "--verify", "-1"], ["--verify", ">= 0"]),
    # -- store info / verify -------------------------------------------------------------------
    Case("store-info-of-a-checkpoint", ["store", "info", "{teacher}/checkpoint.pt"], ["not an HDF5 file"]),
    Case("store-info-attribute-of-wrong-type", ["store", "info", "{file}"],
         ["attribute teachers", "re-export"], damaged_store(set_attr("teachers", 5))),
    Case("store-verify-crop-beyond-pad", ["store", "verify", "{file}", *DS],
         ["failed verification", "crop offset 9 exceeds pad 2"], damaged_store(set_record(*RECORD, "crop", 9))),
    Case("store-verify-partner-beyond-n", ["store", "verify", "{file}", *DS],
         ["failed verification", f"partner index {N + 7} >= {N}"], damaged_store(set_record(*RECORD, "partners", N + 7))),
    Case("store-verify-nan-logits", ["store", "verify", "{file}", *DS],
         ["failed verification", "/teachers/t/clean holds 1 NaN/Inf"],
         damaged_store(set_value("teachers/t/clean", (5, 3), np.nan))),
    Case("store-verify-other-class-count", ["store", "verify", "{store}", "--dataset", "synthetic:5:20",
                                            "--image-size", "16"], ["C=10", "C=5", "re-export"]),
    # -- student -------------------------------------------------------------------------------
    Case("student-inf-view-logits", [*STUDENT, "--method", "sl", "--store", "{file}", "--aug", "ricap"],
         ["damaged", "/teachers/t/views holds 1 NaN/Inf", "re-export"],
         damaged_store(set_value("teachers/t/views", (11, 1, 2), np.inf))),
    Case("student-nan-clean-logits", [*STUDENT, "--method", "kd-sl", "--store", "{file}"],
         ["damaged", "NaN/Inf", "re-export"], damaged_store(set_value("teachers/t/clean", (0, 0), np.nan), "clean")),
    Case("student-crop-beyond-pad", [*STUDENT, "--method", "sl", "--store", "{file}", "--aug", "ricap"],
         ["damaged", "crop offset 9 exceeds pad 2"], damaged_store(set_record(*RECORD, "crop", 9))),
    Case("student-partner-beyond-n", [*STUDENT, "--method", "ols", "--store", "{file}", "--aug", "ricap"],
         ["damaged", f"partner index {N + 7} >= {N}"], damaged_store(set_record(*RECORD, "partners", N + 7))),
    Case("student-store-is-a-checkpoint", [*STUDENT, "--method", "sl", "--store", "{teacher}/checkpoint.pt"],
         ["not an HDF5 file"]),
    Case("student-init-of-another-model", [*STUDENT, "--model", "resnet20", "--init", "{teacher}"],
         ["do not fit resnet20", "--model"]),
    Case("student-online-teacher-of-other-class-count",
         ["student", "--dataset", "synthetic:5:20", "--image-size", "16", *TRAIN, "--runs-dir", "{work}/runs",
          "--method", "kd", "--teacher", "{teacher}"], ["predicts 10 classes", "has 5"]),
    Case("student-recipe-params-not-a-table", [*STUDENT, "--method", "ls", "--recipe", "{file}"],
         ["recipe", "params", "table"], text_file("s.toml", 'params = "alpha"\n')),
    Case("student-resume-with-another-store", ["student", *DS, *TRAIN, "--runs-dir", "{file}", "--name", "s",
                                               "--method", "sl", "--store", "{store}", "--resume"],
         ["--resume", "different settings", "store"], student_run_on_clean_store),
    Case("student-zero-bins", [*STUDENT, "--method", "ls", "--ece-bins", "0"], ["--ece-bins", "[2, 1e4]"]),
    Case("student-unknown-logger", [*STUDENT, "--method", "ls", "--log", "mlflow"], ["--log", "'mlflow'"]),
    Case("student-lr-not-finite", [*STUDENT, "--method", "ls", "--lr", "nan"], ["--lr", "(0, 1e4]"]),
    # -- views show ----------------------------------------------------------------------------
    Case("views-show-zero-views", ["views", "show", "--n", "0", "--out", "{work}/v.png"], ["--n", "[1, 1024]"]),
    Case("views-show-out-below-a-file", ["views", "show", "--dataset", "synthetic:10:2", "--n", "2",
                                         "--out", "{file}/v.png"],
         ["a file stands where a folder is needed", "nothing was written"], text_file("notes")),
    Case("views-show-npz-that-is-text", ["views", "show", "--dataset", "npz:{file}", "--out", "{work}/v.png"],
         ["npz", "cannot read", "not a NumPy .npz archive", "numpy.savez"], text_file("x.npz")),
    # -- report --------------------------------------------------------------------------------
    Case("report-truncated-summary", ["report", "{file}", "--out", "{work}/rep", "--no-diagrams", "--no-plots"],
         ["summary.json", "not readable JSON"], lambda made, work: _truncate_summary(copied_run(made, work))),
    Case("report-one-bin", ["report", "{teacher}", "--out", "{work}/rep", "--ece-bins", "1"],
         ["--ece-bins", "[2, 1e4]"]),
    Case("report-out-is-a-file", ["report", "{teacher}", "--out", "{file}", "--no-diagrams"],
         ["--out", "is a file", "folder"], text_file("report.md")),
]


def _truncate_summary(runs: Path) -> Path:
    s = runs / "t" / "summary.json"
    s.write_text(s.read_text()[:100])
    return runs


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def assert_nothing_valid_left(work: Path, before: dict[Path, str]) -> None:
    """Inputs unchanged; no new checkpoint, run summary or store that opens."""
    after = _digests(work)
    for p, digest in before.items():
        assert after.get(p) == digest, f"{p} was changed or removed"
    for p in set(after) - set(before):
        assert p.name not in ("checkpoint.pt", "best.pt", "summary.json"), f"left behind {p}"
        if p.suffix == ".h5":
            with pytest.raises(LabelenhError):
                SoftLabelStore.open(p)


def test_the_table_has_enough_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 25
    commands = {c.argv[0] if c.argv[0] not in ("store", "views") else " ".join(c.argv[:2]) for c in CASES}
    assert commands >= {"teach", "evaluate", "export-soft-labels", "store info", "store verify", "student",
                        "views show", "report"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_valid(made, tmp_path, monkeypatch, case):
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
    work = tmp_path / "work"
    work.mkdir()
    file = case.prepare(made, work) if case.prepare else None
    before = _digests(work)
    fill = {**{k: str(v) for k, v in made.items()}, "work": str(work), "file": str(file)}
    r = run_cli(*[str(a).format(**fill) for a in case.argv])
    assert_one_line_error(r, *case.needles)
    assert_nothing_valid_left(work, before)


# ---- untrusted files ---------------------------------------------------------------------------

class _Payload:
    """Unpickling this would call open(marker, "w"): a file appears if code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_a_checkpoint_cannot_run_code(made, tmp_path, kind):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    payload = {"model": _Payload(marker), "format": "labelenh.checkpoint"}
    if kind == "pickle":
        import pickle

        evil.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, evil)
    runs = tmp_path / "runs"
    for argv in (["evaluate", evil, *DS, "--device", "cpu"],
                 ["teach", *DS, *TRAIN, "--checkpoint", evil, "--runs-dir", runs],
                 ["export-soft-labels", "-t", evil, *DS, "--out", tmp_path / "s.h5", "--device", "cpu"],
                 ["student", *DS, *TRAIN, "--method", "ls", "--init", evil, "--runs-dir", runs],
                 ["student", *DS, *TRAIN, "--method", "kd", "--teacher", evil, "--runs-dir", runs]):
        r = run_cli(*argv)
        assert_one_line_error(r, "refused for safety", "nothing was executed", "state_dict")
        assert not marker.exists(), argv
    assert not (tmp_path / "s.h5").exists() and not any(runs.rglob("checkpoint.pt"))


@pytest.mark.parametrize("where", ["view_spec", "teachers", "dataset_meta", "teacher metrics"])
def test_store_attributes_are_parsed_never_evaluated(made, tmp_path, where):
    marker = tmp_path / "ran"
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"
    p = tmp_path / "evil.h5"
    shutil.copy(made["store"], p)
    with h5py.File(p, "r+") as f:
        if where == "teacher metrics":
            f["teachers/t"].attrs["metrics"] = code
        else:
            f.attrs[where] = code
    restamp(p)  # signed: the parser, not the checksum, must refuse it
    for argv in (["store", "info", p], ["store", "verify", p, *DS],
                 ["student", *DS, *TRAIN, "--method", "sl", "--store", p, "--runs-dir", tmp_path / "runs"]):
        r = run_cli(*argv)
        assert_one_line_error(r, "not valid JSON", "never evaluated", "re-export")
        assert not marker.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_a_string_attribute_is_shown_as_text_not_run(made, tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "s.h5"
    shutil.copy(made["store"], p)
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"
    with h5py.File(p, "r+") as f:
        f.attrs["created"] = code
    r = run_cli("store", "info", p, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] == code and not marker.exists()
