"""The CUDA paths end to end, on synthetic data: a teacher under torchrun on one GPU (NCCL), a
store exported on CUDA that passes its own --verify under each autocast mode, and students
trained from it with bf16/fp16 autocast. Every test here is marked `cuda` and skips without a
CUDA device (scripts/gpu_check.sh runs them with `pytest -m cuda`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import run_cli

from labelenh.checkpoint import read_checkpoint
from labelenh.store import SoftLabelStore

pytestmark = pytest.mark.cuda

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]  # 200 train, 40 test images
TRAIN = [*DS, "--model", "resnet8", "--batch-size", "32", "--milestones", "5", "--device", "cuda"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """One epoch of a teacher on the GPU, launched by torchrun with one process: the process
    group is NCCL (labelenh.distributed picks it for CUDA devices)."""
    root = tmp_path_factory.mktemp("cuda")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "labelenh",
           "teach", *TRAIN, "--epochs", "1", "--name", "t", "--runs-dir", str(root / "runs")]
    r = subprocess.run(cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "runs" / "t"


def test_teacher_under_torchrun_uses_nccl(teacher):
    ck = read_checkpoint(teacher / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["engine"]["world_size"] == 1
    recs = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(v == v for v in (recs[-1]["train_loss"], recs[-1]["test"]["nll"]))  # no NaN


@pytest.mark.parametrize("amp", ["off", "fp16", "bf16"])
def test_cuda_export_passes_its_own_verify(teacher, tmp_path, amp):
    out = tmp_path / f"{amp}.h5"
    r = run_cli("export-soft-labels", "-t", teacher, "--out", out, *DS, "--aug", "ricap", "--views", "2",
                "--batch-size", "64", "--device", "cuda", "--amp", amp, "--verify", "32")
    assert r.code == 0, r.err
    with SoftLabelStore.open(out) as st:
        assert st.attrs["compute"] == {"device": "cuda", "amp": amp}
        assert st.num_views == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_student_trains_from_a_cuda_store_under_autocast(teacher, tmp_path, amp):
    store = tmp_path / "s.h5"
    r = run_cli("export-soft-labels", "-t", teacher, "--out", store, *DS, "--device", "cuda")
    assert r.code == 0, r.err
    r = run_cli("student", *TRAIN, "--method", "kd-sl", "--store", store, "--epochs", "1", "--amp", amp,
                "--name", "s", "--runs-dir", tmp_path / "runs")
    assert r.code == 0, r.err
    summary = json.loads((tmp_path / "runs" / "s" / "summary.json").read_text())
    assert summary  # written after the test-split evaluation
