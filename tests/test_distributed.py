"""Every stage under `torchrun` with 2 CPU processes (gloo): a teacher, a sharded export that
equals a single-process one, a rank that dies mid-export, and a student from the store, with
checkpoints resumed across world sizes. Plus the sharding rules themselves, in one process.

The torchrun tests are marked slow (deselect with `-m "not slow"`) but run by default."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clitools import run_cli

from labelenh import distributed as dist
from labelenh.checkpoint import read_checkpoint
from labelenh.data import load_dataset
from labelenh.engine import predict
from labelenh.errors import LabelenhError
from labelenh.metrics import classification_metrics
from labelenh.models import build_model
from labelenh.pipeline import ImagePipeline
from labelenh.store import SoftLabelStore
from labelenh.store.shards import CRASH_ENV, find_shards

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]  # 200 train, 40 test images
EVAL_BATCH = 16  # test split: batches of 16, 16, 8 -> rank 0 runs two, rank 1 one
TRAIN = [*DS, "--model", "resnet8", "--batch-size", "32", "--milestones", "5", "--device", "cpu"]
EXPORT = [*DS, "--aug", "mixup", "--views", "2", "--batch-size", "16", "--device", "cpu"]  # 13 chunks
RUN_FILES = {"checkpoint.pt", "config.json", "env.json", "metrics.jsonl", "summary.json", "reliability.png",
             "model.safetensors"}



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "labelenh", *map(str, args)]
    full_env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    full_env.update({"OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def recipe(root: Path) -> Path:
    p = root / "eval16.toml"
    p.write_text(f"eval_batch_size = {EVAL_BATCH}\n")
    return p


def eval_in_one_process(ckpt: Path) -> dict[str, float]:
    """Test metrics of a checkpoint, evaluated here in one process with the run's batches."""
    ck = read_checkpoint(ckpt)
    bundle = load_dataset("synthetic:10:20", image_size=16)
    model = build_model(ck["model_name"], ck["num_classes"])
    model.load_state_dict(ck["model"])
    pipe = ImagePipeline(bundle, torch.device("cpu"), batch_size=32, eval_batch_size=EVAL_BATCH)
    logits, labels = predict(model, pipe.eval_batches("test"), device=torch.device("cpu"))
    assert len(labels) == 40
    return classification_metrics(logits, labels)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


# ---- torchrun, 2 processes ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """One epoch of a teacher trained by 2 ranks."""
    root = tmp_path_factory.mktemp("ddp")
    r = torchrun("teach", *TRAIN, "--epochs", "1", "--recipe", recipe(root), "--name", "t",
                 "--runs-dir", root / "runs", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r


@pytest.mark.slow
def test_teach_on_two_ranks(teacher):
    root, r = teacher
    runs = root / "runs"
    assert [p.name for p in runs.iterdir()] == ["t"]  # one run folder
    assert {p.name for p in (runs / "t").iterdir()} == RUN_FILES  # no temporary or per-rank files
    assert r.stdout.count("run folder:") == 1 and r.stdout.count("Acc@1") == 1  # rank 0 prints
    assert r.stderr.count("epoch   1 |") == 1  # the epoch log line, rank 0 only
    (rec,) = records(runs / "t")
    ck = read_checkpoint(runs / "t" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["engine"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ck["model"])  # the unwrapped model
    # 200 samples, 100 per rank in batches of 32: 4 steps per epoch
    assert ck["engine"]["step"] == 4
    # the sharded, gathered evaluation equals evaluating the saved model in one process
    one = eval_in_one_process(runs / "t" / "checkpoint.pt")
    assert rec["test"]["n"] == 40
    for k in ("acc1", "acc5", "nll", "ece", "brier"):
        assert rec["test"][k] == pytest.approx(one[k], rel=1e-6, abs=1e-7), k


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_in_one_process(teacher, tmp_path):
    root, _ = teacher
    shutil.copytree(root / "runs" / "t", tmp_path / "t")
    r = run_cli("teach", *TRAIN, "--epochs", "2", "--recipe", recipe(tmp_path), "--name", "t",
                "--runs-dir", tmp_path, "--resume")
    assert r.code == 0, r.err
    ck = read_checkpoint(tmp_path / "t" / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["engine"]["world_size"] == 1
    # the step continues in this world's steps per epoch (200 / 32 -> 7), from epoch 1
    assert ck["engine"]["step"] == 2 * 7
    assert [rec["epoch"] for rec in records(tmp_path / "t")] == [1, 2]


@pytest.fixture(scope="module")
def stores(teacher):
    """A store exported by 2 ranks and the same store exported by one process."""
    root, _ = teacher
    two, one = root / "two.h5", root / "one.h5"
    r = torchrun("export-soft-labels", "-t", root / "runs" / "t", "--out", two, *EXPORT, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1, r.stdout
    c = run_cli("export-soft-labels", "-t", root / "runs" / "t", "--out", one, *EXPORT)
    assert c.code == 0, c.err
    return root, two, one


def assert_same_store(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    assert np.array_equal(da["views/recipes"], db["views/recipes"])  # recipes: exactly
    assert np.array_equal(da["labels"], db["labels"]) and da["progress"].all() and db["progress"].all()
    for name in da:
        if name.startswith("teachers/"):
            np.testing.assert_allclose(da[name].astype(np.float32), db[name].astype(np.float32),
                                       rtol=1e-3, atol=1e-3)
    # same chunk size on the same CPU: the joined shards are bit-identical to one process
    assert all(da[k].tobytes() == db[k].tobytes() for k in da)


@pytest.mark.slow
def test_sharded_export_equals_single_process(stores):
    root, two, one = stores
    assert_same_store(two, one)
    with h5py.File(two, "r") as f:
        assert bool(f.attrs["complete"]) and int(f.attrs["num_chunks"]) == 13
    SoftLabelStore.open(two).close()
    # the shards were merged away; no lock is left behind
    assert find_shards(two) == [] and sorted(p.name for p in root.glob("*.lock")) == []


@pytest.mark.slow
def test_rank_dying_mid_export_leaves_no_complete_store_and_rerun_resumes(stores, tmp_path):
    root, _, one = stores
    out = tmp_path / "s.h5"
    teacher_run = root / "runs" / "t"
    r = torchrun("export-soft-labels", "-t", teacher_run, "--out", out, *EXPORT, cwd=tmp_path,
                 env={CRASH_ENV: "1:2"})  # rank 1 dies (os._exit) after its 2nd chunk
    assert r.returncode != 0
    assert "rank 1 dies after 2 chunks" in r.stderr
    with h5py.File(out, "r") as f:
        assert not bool(f.attrs["complete"]) and not f["progress"][()].all()
    with pytest.raises(LabelenhError, match="incomplete"):
        SoftLabelStore.open(out)
    assert [p.name for p in find_shards(out)] == [".s.h5.shard-1.h5"]  # what rank 1 had written
    # Rerun (here in one process: the world size may change): the shard's finished chunks are
    # taken over, the rest is computed, and the store equals the single-process export.
    c = run_cli("export-soft-labels", "-t", teacher_run, "--out", out, *EXPORT)
    assert c.code == 0, c.err
    assert "resumed after" in c.out
    resumed = int(c.out.split("resumed after ")[1].split()[0])
    assert resumed >= 2  # at least the two chunks of the dead rank's shard
    assert find_shards(out) == []
    assert_same_store(out, one)


@pytest.mark.slow
def test_overwrite_on_two_ranks_keeps_the_old_store_until_complete(stores, tmp_path):
    root, _, one = stores
    out = tmp_path / "s.h5"
    out.write_bytes(one.read_bytes())
    old = out.read_bytes()
    args = ["export-soft-labels", "-t", root / "runs" / "t", "--out", out, *EXPORT, "--overwrite"]
    r = torchrun(*args, cwd=tmp_path, env={CRASH_ENV: "1:2"})
    assert r.returncode != 0 and "rank 1 dies after 2 chunks" in r.stderr
    assert out.read_bytes() == old  # readers still see the old, complete store
    SoftLabelStore.open(out).close()
    staging = tmp_path / ".s.h5.overwrite.h5"
    assert [p.name for p in find_shards(staging)] == ["..s.h5.overwrite.h5.shard-1.h5"]
    # the same command (here in one process) takes the dead rank's chunks over and finishes
    c = run_cli(*args)
    assert c.code == 0 and "resumed after" in c.out, c.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    assert_same_store(out, one)


@pytest.mark.slow
def test_student_from_store_on_two_ranks_resumes_a_one_process_run(stores):
    root, two, _ = stores
    args = ["student", *TRAIN, "--method", "sl", "--store", two, "--aug", "mixup", "--recipe",
            recipe(root), "--name", "s", "--runs-dir", root / "sruns"]
    r1 = run_cli(*args, "--epochs", "1")  # one process
    assert r1.code == 0, r1.err
    r = torchrun(*args, "--epochs", "2", "--resume", "--no-preload", cwd=root)  # 2 ranks, lazy reads
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run folder:") == 1
    run = root / "sruns" / "s"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    ck = read_checkpoint(run / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["engine"]["world_size"] == 2
    assert ck["engine"]["step"] == 2 * 4  # epoch 1 recomputed in 2-rank steps, plus epoch 2
    recs = records(run)
    assert [x["epoch"] for x in recs] == [1, 2]
    one = eval_in_one_process(run / "checkpoint.pt")
    for k in ("acc1", "nll", "ece"):
        assert recs[-1]["test"][k] == pytest.approx(one[k], rel=1e-6, abs=1e-7), k


# ---- the sharding rules, in one process ---------------------------------------------------------

@pytest.fixture
def pipe():
    bundle = load_dataset("synthetic:10:20", image_size=16)
    return ImagePipeline(bundle, torch.device("cpu"), batch_size=32, eval_batch_size=EVAL_BATCH, seed=3)


def test_epoch_batches_deal_the_permutation_to_ranks(pipe, monkeypatch):
    full = torch.cat(pipe.epoch_batches(2))
    for world in (2, 3, 7):
        monkeypatch.setattr(dist, "world_size", lambda w=world: w)
        parts = []
        for r in range(world):
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            parts.append(torch.cat(pipe.epoch_batches(2)))
        per_rank = -(-200 // world)
        assert all(len(p) == per_rank for p in parts)  # ranks step together
        dealt = torch.stack(parts, 1)  # [per_rank, world]
        # DistributedSampler's rule: the permutation, padded by wrapping, dealt round-robin
        assert torch.equal(dealt.reshape(-1)[:200], full)
        assert set(torch.cat(parts).tolist()) == set(range(200))


def test_eval_shards_are_blocks_of_the_unchanged_batches(pipe):
    whole = list(pipe.eval_batches("test"))
    assert [len(y) for _, y in whole] == [16, 16, 8]
    for world in (1, 2, 3, 5):
        got = [b for r in range(world) for b in pipe.eval_batches("test", (r, world))]
        assert len(got) == len(whole)
        for (x, y), (x1, y1) in zip(got, whole, strict=True):
            assert torch.equal(x, x1) and torch.equal(y, y1)
    with pytest.raises(LabelenhError):
        list(pipe.eval_batches("test", (2, 2)))


def test_helpers_are_identities_in_one_process():
    t = torch.arange(6.0).view(3, 2)
    assert torch.equal(dist.gather_rows(t), t)
    assert dist.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.all_gather_object(3) == [3]
    assert dist.cli_process(["teach"]) is True  # not under torchrun: nothing changes


def test_both_stages_shard_their_evaluation():
    """The engine's Task protocol: every stage takes `shard` (the engine always passes it)."""
    import inspect

    from labelenh.engine import Task
    from labelenh.student import StudentTask
    from labelenh.teach import TeacherTask

    want = inspect.signature(Task.eval_batches).parameters["shard"].default
    for cls in (TeacherTask, StudentTask):
        assert inspect.signature(cls.eval_batches).parameters["shard"].default == want == (0, 1)


@pytest.mark.slow
def test_add_teacher_on_two_ranks_equals_one_export_with_both(stores, tmp_path):
    """`store add-teacher` under torchrun deals the chunks out like an export; the joined store
    is the single-process export with both teachers, byte for byte."""
    from labelenh.checkpoint import save_checkpoint

    root, _, one = stores
    g = torch.Generator().manual_seed(5)
    model = build_model("resnet8", 10)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    t2 = tmp_path / "t2.pt"
    save_checkpoint(t2, {"model_name": "resnet8", "num_classes": 10, "in_chans": 3, "model": model.state_dict()})
    grown = tmp_path / "grown.h5"
    shutil.copy(one, grown)
    r = torchrun("store", "add-teacher", grown, "-t", t2, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    both = tmp_path / "both.h5"
    c = run_cli("export-soft-labels", "-t", root / "runs" / "t", "-t", t2, "--out", both, *EXPORT)
    assert c.code == 0, c.err
    assert_same_store(grown, both)
    assert find_shards(grown) == []
