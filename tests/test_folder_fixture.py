"""An image folder's teacher run and store made before `--crop-pct` existed
(tests/fixtures/folder-v2, written by scripts/make_folder_fixture.py at the commit before) keep
their geometry: they verify, resume, evaluate and feed students exactly as that code made them,
while new runs and stores default to the standard 0.875 crop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run_cli

from labelenh.data import load_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "folder-v2"
DATA = ["--dataset", "folder:jpegs", "--image-size", "16", "--device", "cpu"]


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of the fixture as the working folder (its records name `folder:jpegs`)."""
    shutil.copytree(FIXTURE, tmp_path / "f")
    monkeypatch.chdir(tmp_path / "f")
    return tmp_path / "f"


def test_the_legacy_geometry_decodes_and_hashes_as_the_old_code(old):
    expected = np.load(old / "expected.npz")
    b = load_dataset("folder:jpegs", image_size=16)  # no crop_pct: the recorded-before geometry
    assert b.train.fingerprint() == str(expected["fingerprint"])
    assert np.array_equal(b.train.load(torch.arange(len(b.train))).numpy(), expected["train"])
    assert np.array_equal(b.test.load(torch.arange(len(b.test))).numpy(), expected["test"])
    new = load_dataset("folder:jpegs", image_size=16, crop_pct=0.875)  # what a new run uses
    assert new.train.fingerprint() != str(expected["fingerprint"])
    assert not np.array_equal(new.test.load(torch.arange(len(new.test))).numpy(), expected["test"])


def test_the_old_store_verifies_and_an_export_rerun_finds_it_complete(old):
    r = run_cli("store", "verify", "store.h5", *DATA[:4])
    assert r.code == 0, r.err
    assert "fits folder:jpegs" in r.out
    r = run_cli("export-soft-labels", "--teacher", "runs/teacher", "--out", "store.h5", "--aug", "crop-flip",
                "--views", "2", "--view-seed", "3", "--batch-size", "4", *DATA)
    assert r.code == 0, r.err
    assert "already complete" in r.out
    # a new store of the same folder takes the standard crop, recorded for its students
    r = run_cli("export-soft-labels", "--teacher", "runs/teacher", "--out", "new.h5", "--batch-size", "4", *DATA)
    assert r.code == 0, r.err
    from labelenh.store.derive import export_options

    assert export_options("new.h5")["crop_pct"] == 0.875 and "crop_pct" not in export_options("store.h5")


def test_a_student_reads_the_old_store_with_its_geometry(old):
    r = run_cli("student", "--method", "sl", "--store", "store.h5", "--aug", "crop-flip", "--model", "resnet8",
                "--epochs", "1", "--batch-size", "4", "--name", "s", "--runs-dir", "runs", *DATA)
    assert r.code == 0, r.err
    assert json.loads((old / "runs" / "s" / "config.json").read_text())["data"]["crop_pct"] is None
    # asking for another crop names the mismatch instead of training on other images
    r = run_cli("student", "--method", "sl", "--store", "store.h5", "--crop-pct", "0.875", "--model", "resnet8",
                "--epochs", "1", "--batch-size", "4", "--name", "s2", "--runs-dir", "runs", *DATA)
    assert r.code == 2 and "fingerprint" in r.err


def test_the_old_teacher_run_evaluates_identically_and_resumes(old):
    before = json.loads((old / "runs" / "teacher" / "summary.json").read_text())["last"]["test"]
    r = run_cli("evaluate", "runs/teacher", "--json", "ev.json", "--calibrate-on", "none")
    assert r.code == 0, r.err
    now = json.loads((old / "ev.json").read_text())
    for key in ("acc1", "nll", "ece", "brier"):
        assert now[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), key
    r = run_cli("teach", "--model", "resnet8", "--epochs", "2", "--batch-size", "4", "--seed", "0",
                "--name", "teacher", "--runs-dir", "runs", "--resume", *DATA)
    assert r.code == 0, r.err
    lines = (old / "runs" / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_a_new_folder_run_records_the_standard_crop(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE / "jpegs", tmp_path / "jpegs")
    monkeypatch.chdir(tmp_path)
    r = run_cli("teach", "--model", "resnet8", "--epochs", "1", "--batch-size", "4", "--name", "t",
                "--runs-dir", "runs", *DATA)
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["data"]["crop_pct"] == 0.875
    r = run_cli("teach", "--model", "resnet8", "--epochs", "1", "--crop-pct", "1.5", "--name", "t2",
                "--runs-dir", "runs", *DATA)
    assert r.code == 2 and "--crop-pct" in r.err
    r = run_cli("teach", "--dataset", "synthetic:2:4", "--crop-pct", "0.9", "--epochs", "1", "--name", "t3",
                "--runs-dir", "runs", "--device", "cpu")
    assert r.code == 2 and "image folders" in r.err
