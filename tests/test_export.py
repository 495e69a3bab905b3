"""export-soft-labels: resume after kill -9 / Ctrl-C equals an uninterrupted export bit for bit,
locking, --overwrite, --dry-run, --verify, NaN teachers, and the CLI's one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from storetools import contents, restamp
from tinynet import TinyNet
from torch import nn

from labelenh.data import TensorImages
from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore, export_soft_labels, store_info, teacher_from_model
from labelenh.store.export import TeacherRunner, compute_chunk
from labelenh.store.lock import ExportLock, lock_path
from labelenh.store.writer import StoreWriter, create_store
from labelenh.views import ViewSpec

N, C, V, CS, HW = 96, 10, 3, 8, 8
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_source() -> TensorImages:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, HW, HW), generator=g, dtype=torch.uint8)
    return TensorImages(x, torch.randint(0, C, (N,), generator=g))


def make_teachers(delay: float = 0.0):
    out = []
    for seed, name in ((1, "a"), (2, "b")):
        m = TinyNet(seed)
        if delay:  # a slow teacher with the same weights (a hook leaves the state_dict alone)
            m.register_forward_pre_hook(lambda *_: time.sleep(delay))
        out.append(teacher_from_model(m, name))
    return out


def run_export(path, fmt="topk:4", teachers=None, **kw):
    kw.setdefault("num_views", V)
    kw.setdefault("view_seed", 3)
    spec = ViewSpec("mixup", pad=2) if kw["num_views"] else None
    return export_soft_labels(path, teachers or make_teachers(), make_source(), dataset="toy", num_classes=C,
                              mean=MEAN, std=STD, spec=spec, fmt=fmt, chunk_size=CS, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted export of the default arguments."""
    p = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = run_export(p)
    assert r.chunks_written == N // CS and r.chunks_resumed == 0
    return p


DRIVER = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_export import make_teachers, run_export
    run_export({out!r}, teachers=make_teachers(delay=0.05),
               on_chunk=lambda c: print("chunk", c, flush=True))
    print("done", flush=True)
""")


def test_kill9_then_rerun_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "store.h5"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).parent), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        seen = []
        while len(seen) < 3:
            line = proc.stdout.readline()
            assert line, f"driver ended early (exit {proc.poll()})"
            if line.startswith("chunk"):
                seen.append(int(line.split()[1]))
        # while it runs, a second export into the same path is refused; `store info` shows progress
        with pytest.raises(LabelenhError, match="another export is writing"):
            run_export(out)
        info = store_info(out)
        assert not info["complete"] and info["chunks_done"] >= 3
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with h5py.File(out, "r") as f:
        flagged = int(f["progress"][()].sum())
        assert not f.attrs["complete"] and 3 <= flagged < N // CS
    r = run_export(out)  # same arguments: resumes
    assert r.chunks_resumed == flagged and r.chunks_written == N // CS - flagged
    assert contents(out) == contents(reference)
    SoftLabelStore.open(out).close()


def test_ctrl_c_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "store.h5"

    def interrupt(c):
        if c == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_export(out, on_chunk=interrupt)
    assert not lock_path(out).exists()  # the lock went with the interrupted export
    r = run_export(out)
    assert r.chunks_resumed == 5
    assert contents(out) == contents(reference)


def test_chunk_order_does_not_change_the_bytes(tmp_path, reference):
    # chunks computed last-to-first by a fresh runner: no state flows between chunks
    out = tmp_path / "reversed.h5"
    full = run_export(tmp_path / "tmp.h5")  # for its plan
    plan = full.plan
    create_store(out, plan)
    runner = TeacherRunner(make_teachers(), make_source(), num_classes=C, mean=MEAN, std=STD,
                           device=torch.device("cpu"), amp="off")
    w = StoreWriter(out, plan)
    for c in reversed(range(plan.num_chunks)):
        w.write_chunk(c, *compute_chunk(plan, runner, ViewSpec("mixup", pad=2), c))
    w.finish()
    w.close()
    assert contents(out) == contents(reference)


def test_in_memory_teachers_are_named_by_their_weights():
    from labelenh.store.export import weights_sha256

    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))  # 0-d num_batches_tracked buffer
    a = weights_sha256(bn)
    assert a == weights_sha256(bn) and len(a) == 64
    with torch.no_grad():
        bn[1].running_mean += 1
    assert weights_sha256(bn) != a


def test_locked_path_is_refused(tmp_path):
    out = tmp_path / "s.h5"
    with ExportLock(out), pytest.raises(LabelenhError, match="another export is writing"):
        run_export(out, num_views=0)
    assert not out.exists()
    run_export(out, num_views=0)  # free again


def test_rerun_with_other_arguments_needs_overwrite(tmp_path, reference):
    out = tmp_path / "s.h5"
    run_export(out, num_views=0, fmt="fp16")
    for kw in ({"num_views": 0, "fmt": "fp32"}, {"num_views": 0, "fmt": "fp16", "teachers": make_teachers()[:1]},
               {"num_views": V, "fmt": "fp16"}):
        with pytest.raises(LabelenhError, match="different arguments.*--overwrite"):
            run_export(out, **kw)
    # the same arguments on a complete store: nothing to do
    r = run_export(out, num_views=0, fmt="fp16")
    assert r.already_complete and r.chunks_written == 0
    # --overwrite starts over, with the new arguments
    r = run_export(out, overwrite=True)
    assert r.chunks_written == N // CS
    assert contents(out) == contents(reference)
    # a file that is not a store is not silently replaced
    junk = tmp_path / "junk.h5"
    junk.write_text("x")
    with pytest.raises(LabelenhError, match="not a resumable store.*--overwrite"):
        run_export(junk)


@pytest.mark.parametrize("fmt,views", [("fp32", V), ("fp16", 0), ("topk:4", V)])
def test_dry_run_writes_nothing_and_predicts_the_size(tmp_path, fmt, views):
    out = tmp_path / "s.h5"
    r = run_export(out, fmt=fmt, num_views=views, dry_run=True)
    assert r.dry_run and not out.exists() and not lock_path(out).exists()
    assert list(tmp_path.iterdir()) == []
    real = run_export(out, fmt=fmt, num_views=views).size_bytes
    assert real == out.stat().st_size
    # an upper bound (the free-space check relies on it), and a close one
    assert real <= r.size_bytes <= real * 1.03 + 4096, (r.size_bytes, real)


def test_verify_passes_on_a_good_store_and_fails_on_a_tampered_one(tmp_path):
    out = tmp_path / "s.h5"
    r = run_export(out, fmt="fp16", verify=12)
    assert r.verify["ok"] and r.verify["rows"] == 12 and r.verify["max_abs_diff"] < 0.02
    with h5py.File(out, "r+") as f:
        ds = f["teachers/b/views"]
        ds[...] = ds[()] + np.float16(0.5)
    with pytest.raises(LabelenhError, match="chunk 0 .* of /teachers/b/views fails its checksum"):
        run_export(out, fmt="fp16", verify=12)  # an edit that is not re-signed is damage
    restamp(out)  # signed logits that are not the teachers': only the re-run finds them
    with pytest.raises(LabelenhError, match="--verify: stored logits .* differ"):
        run_export(out, fmt="fp16", verify=12)  # complete already: just verifies


class _NaNAfter(nn.Module):
    """A teacher whose outputs turn NaN after `ok` forwards."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.net, self.ok, self.calls = TinyNet(1), ok, 0

    def forward(self, x):
        self.calls += 1
        z = self.net(x)
        return z if self.calls <= self.ok else z * float("nan")


def test_nan_logits_stop_the_export(tmp_path):
    out = tmp_path / "s.h5"
    bad = teacher_from_model(_NaNAfter(ok=9), "bad")  # 4 forwards per chunk: dies in chunk 2
    with pytest.raises(LabelenhError, match="teacher bad produced NaN/Inf logits .*stays incomplete"):
        run_export(out, teachers=[bad])
    with h5py.File(out, "r") as f:
        assert f["progress"][()].tolist()[:3] == [1, 1, 0] and not f.attrs["complete"]
    with pytest.raises(LabelenhError, match="incomplete"):
        SoftLabelStore.open(out)


# ---- the CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A tiny npz dataset, a resnet8 teacher checkpoint and a NaN one."""
    from labelenh.checkpoint import save_checkpoint
    from labelenh.models import build_model

    d = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 8, 8, 3), generator=g, dtype=torch.uint8).numpy()
    y = (torch.arange(40) % C).numpy()
    np.savez(d / "toy.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    np.savez(d / "other.npz", x_train=x, y_train=(y + 1) % C, x_test=x[:10], y_test=y[:10])
    model = build_model("resnet8", C)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    meta = {"model_name": "resnet8", "num_classes": C, "in_chans": 3,
            "metrics": {"acc1": 0.3, "nll": 2.0, "ece": 0.1}}
    save_checkpoint(d / "teach.pt", {**meta, "model": model.state_dict()})
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["fc.bias"] = torch.full_like(bad["fc.bias"], float("nan"))
    save_checkpoint(d / "nan.pt", {**meta, "model": bad})
    return d


def test_cli_export_info_verify(cli_setup, tmp_path):
    d = cli_setup
    ds = ["--dataset", f"npz:{d / 'toy.npz'}"]
    out = tmp_path / "s.h5"
    args = ["export-soft-labels", "-t", d / "teach.pt", "-t", d / "teach.pt", *ds, "--out", out,
            "--aug", "cutmix", "--views", "2", "--format", "topk:5", "--batch-size", "16", "--device", "cpu"]
    r = run_cli(*args, "--dry-run")
    assert r.code == 0 and "dry run" in r.out and "nothing written" in r.out and not out.exists(), r.err
    r = run_cli(*args, "--verify", "8")
    assert r.code == 0, r.err
    assert "wrote" in r.out and "verify: 8 rows" in r.out and "OK" in r.out
    r = run_cli(*[a for a in args if a not in ("--batch-size", "16")])  # a rerun reuses the store's
    assert r.code == 0 and "already complete" in r.out, r.err
    r = run_cli("store", "info", out)
    assert r.code == 0, r.err
    for needle in ("N=40", "C=10", "2 x cutmix", "topk:5", "teach ", "teach-2", "acc1 0.3000",
                   "bytes/view   65 = 24 per teacher x 2 + 17 recipe", "complete     yes (3/3 chunks)", "top-k KL"):
        assert needle in r.out, (needle, r.out)
    info = json.loads(run_cli("store", "info", out, "--json").out)
    assert info["complete"] and info["teachers"][1]["name"] == "teach-2"
    r = run_cli("store", "verify", out, *ds)
    assert r.code == 0 and "OK" in r.out, r.err
    # the same store against another dataset (labels differ): refused, one line
    r = run_cli("store", "verify", out, "--dataset", f"npz:{d / 'other.npz'}")
    assert_one_line_error(r, "was made for", "fingerprint", "--dataset")
    # rerun with other arguments: one line naming --overwrite
    r = run_cli(*args[:-2], "--device", "cpu", "--view-seed", "5")
    assert_one_line_error(r, "different arguments", "view_seed", "--overwrite")


def test_cli_refusals_are_one_line(cli_setup, tmp_path):
    d = cli_setup
    ds = ["--dataset", f"npz:{d / 'toy.npz'}"]
    out = tmp_path / "s.h5"
    base = ["export-soft-labels", "-t", d / "teach.pt", *ds, "--out", out, "--device", "cpu"]
    assert_one_line_error(run_cli(*base, "-t", d / "nan.pt"), "NaN/Inf", "incomplete")
    assert_one_line_error(run_cli("store", "verify", out, *ds), "failed verification", "incomplete")
    assert_one_line_error(run_cli("store", "info", tmp_path / "none.h5"), "does not exist")
    text = tmp_path / "t.h5"
    text.write_text("hello")
    assert_one_line_error(run_cli("store", "verify", text, *ds), "not an HDF5 file")
    assert_one_line_error(run_cli(*base, "--aug", "ricap"), "--views")
    assert_one_line_error(run_cli(*base, "--format", "topk:11", "--overwrite"), "exceeds")
    assert_one_line_error(run_cli(*base, "--format", "int8", "--overwrite"), "fp16, fp32, topk:K")
    good = tmp_path / "g.h5"
    assert run_cli(*base[:-4], "--out", good, "--device", "cpu").code == 0
    half = tmp_path / "half.h5"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(run_cli("store", "verify", half, *ds), "truncated")
    assert_one_line_error(run_cli("store", "info", half), "truncated")


class FloatSource:
    """A source that hands out its own float32 storage (a view, not a copy)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[: len(idx)]  # a view of the stored images


def test_runner_normalises_like_the_library_without_touching_the_source():
    from labelenh.data import normalize

    src = make_source()
    runner = TeacherRunner(make_teachers(), src, num_classes=C, mean=MEAN, std=STD,
                           device=torch.device("cpu"), amp="off")
    idx = torch.arange(5)
    # bit-identical to labelenh.data.normalize (the in-place path changes memory, not numbers)
    assert torch.equal(runner.clean_images(idx), normalize(src.load(idx), MEAN, STD))
    images = src.images.float()
    before = images.clone()
    runner.source = FloatSource(images)
    assert torch.equal(runner.clean_images(idx), normalize(before[:5], MEAN, STD))
    assert torch.equal(images, before)  # the source's own float storage is left alone
