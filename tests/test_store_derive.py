"""Stores made from stores: `store add-teacher`, `store merge`, `store convert` give exactly the
bytes of an export that had every teacher (or the new format) from the start, carry their
provenance and pass `store verify`; an interrupted add-teacher keeps the old store readable
and resumes."""

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
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from tinynet import TinyNet

from labelenh.checkpoint import save_checkpoint
from labelenh.data import load_dataset
from labelenh.errors import LabelenhError
from labelenh.models import build_model
from labelenh.store import SoftLabelStore, export_soft_labels, store_info, teacher_from_model
from labelenh.store.derive import add_teacher
from labelenh.views import ViewSpec

DATASET, IMAGE_SIZE = "synthetic:3:20", 8  # N = 60 train images of 8x8, 3 classes
DS = ["--dataset", DATASET, "--image-size", str(IMAGE_SIZE)]
CS, V = 8, 3


@pytest.fixture(scope="module")
def bundle():
    return load_dataset(DATASET, image_size=IMAGE_SIZE)


def teachers(*seeds: int):
    return [teacher_from_model(TinyNet(s, num_classes=3), f"t{s}") for s in seeds]


def export(bundle, out: Path, seeds: tuple[int, ...], fmt: str = "fp16", op: str = "mixup", **kw):
    return export_soft_labels(out, teachers(*seeds), bundle.train, dataset=bundle.name, num_classes=3,
                              mean=bundle.mean, std=bundle.std, num_views=V, spec=ViewSpec(op, pad=2),
                              view_seed=7, fmt=fmt, chunk_size=CS, device="cpu", dataset_meta=bundle.meta, **kw)


def datasets(path: Path) -> dict[str, bytes]:
    """Every dataset's dtype, shape and bytes (the byte-for-byte comparison the stores owe)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (str(obj.dtype), obj.shape, obj[()].tobytes())
        f.visititems(visit)
    return out


def provenance(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["provenance"])


@pytest.mark.parametrize("fmt,op", [("fp16", "mixup"), ("topk:2", "ricap")])
def test_add_teacher_equals_one_export_with_every_teacher(bundle, tmp_path, fmt, op):
    ref = tmp_path / "ref.h5"
    export(bundle, ref, (1, 2, 3), fmt=fmt, op=op)
    s = tmp_path / "s.h5"
    export(bundle, s, (1, 2), fmt=fmt, op=op)
    r = add_teacher(s, teachers(3), bundle.train, device="cpu")
    assert r.chunks_written == -(-60 // CS)
    assert datasets(s) == datasets(ref)
    prov = provenance(s)
    assert prov["operation"] == "add-teacher" and prov["added"] == ["t3"] and prov["sources"][0]["teachers"] == ["t1", "t2"]
    assert store_info(s)["teachers"][2]["name"] == "t3"
    assert run_cli("store", "verify", s, *DS).code == 0


def test_merge_equals_one_export_with_both_teachers(bundle, tmp_path):
    ref, a, b, m = (tmp_path / f"{n}.h5" for n in ("ref", "a", "b", "m"))
    export(bundle, ref, (1, 2))
    export(bundle, a, (1,))
    export(bundle, b, (2,))
    r = run_cli("store", "merge", a, b, "--out", m)
    assert r.code == 0, r.err
    assert datasets(m) == datasets(ref)
    assert [s["teachers"] for s in provenance(m)["sources"]] == [["t1"], ["t2"]]
    assert run_cli("store", "verify", m, *DS).code == 0


def test_convert_fp32_to_top2_equals_an_export_straight_to_top2(bundle, tmp_path):
    ref, dense, small = tmp_path / "ref.h5", tmp_path / "dense.h5", tmp_path / "small.h5"
    export(bundle, ref, (1, 2), fmt="topk:2")
    export(bundle, dense, (1, 2), fmt="fp32")
    r = run_cli("store", "convert", dense, "--format", "topk:2", "--out", small)
    assert r.code == 0, r.err
    assert datasets(small) == datasets(ref)
    assert "top-k KL" in r.out  # the approximation error, per teacher
    with SoftLabelStore.open(small) as s:
        assert s.teacher_info("t1")["topk_kl_views"] == pytest.approx(
            SoftLabelStore.open(ref).teacher_info("t1")["topk_kl_views"])


def test_convert_keeps_a_subset_of_teachers_and_views(bundle, tmp_path):
    src, out = tmp_path / "s.h5", tmp_path / "o.h5"
    export(bundle, src, (1, 2))
    r = run_cli("store", "convert", src, "--format", "fp16", "--teachers", "t2", "--views", "2", "--out", out)
    assert r.code == 0, r.err
    a, b = SoftLabelStore.open(src), SoftLabelStore.open(out)
    assert b.teachers == ["t2"] and b.num_views == 2
    idx = torch.arange(60)
    for v in range(2):
        assert torch.equal(b.view_logits(idx, v), a.view_logits(idx, v, teachers=["t2"]))
        assert b.recipes(idx, v).to_struct(b.view_spec).tobytes() == a.recipes(idx, v).to_struct(a.view_spec).tobytes()
    assert torch.equal(b.clean_logits(idx), a.clean_logits(idx, teachers=["t2"]))


# ---- refusals --------------------------------------------------------------------------------

def test_merging_stores_of_other_data_or_recipes_is_refused(bundle, tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    export(bundle, a, (1,))
    export_soft_labels(b, teachers(2), bundle.train, dataset=bundle.name, num_classes=3, mean=bundle.mean,
                       std=bundle.std, num_views=V, spec=ViewSpec("mixup", pad=2), view_seed=8, fmt="fp16",
                       chunk_size=CS, device="cpu", dataset_meta=bundle.meta)
    assert_one_line_error(run_cli("store", "merge", a, b, "--out", c), "cannot merge", "differ in view_seed (7 vs 8)")
    other = load_dataset("synthetic:3:21", image_size=IMAGE_SIZE)
    export_soft_labels(b, teachers(2), other.train, dataset=other.name, num_classes=3, mean=other.mean,
                       std=other.std, num_views=V, spec=ViewSpec("mixup", pad=2), view_seed=7, fmt="fp16",
                       chunk_size=CS, device="cpu", dataset_meta=other.meta, overwrite=True)
    assert_one_line_error(run_cli("store", "merge", a, b, "--out", c), "cannot merge", "differ in dataset")
    assert_one_line_error(run_cli("store", "merge", a, a, "--out", c), "also in", "different teachers")
    assert not c.exists()


def test_convert_to_a_format_the_store_cannot_hold_is_refused(bundle, tmp_path):
    src = tmp_path / "s.h5"
    export(bundle, src, (1,))
    for fmt in ("topk:3", "topk:9"):
        assert_one_line_error(run_cli("store", "convert", src, "--format", fmt, "--out", tmp_path / "o.h5"),
                              fmt, "3 classes")
    assert_one_line_error(run_cli("store", "convert", src, "--format", "fp16", "--teachers", "zz", "--out",
                                  tmp_path / "o.h5"), "has no teacher 'zz'")
    assert_one_line_error(run_cli("store", "convert", src, "--format", "fp16", "--views", "4", "--out",
                                  tmp_path / "o.h5"), "--views 4")
    assert not (tmp_path / "o.h5").exists()


def test_adding_a_teacher_of_another_class_count_is_refused(bundle, tmp_path):
    src = tmp_path / "s.h5"
    export(bundle, src, (1,))
    ckpt = tmp_path / "ten.pt"
    save_checkpoint(ckpt, {"model_name": "resnet8", "num_classes": 10, "in_chans": 3,
                           "model": build_model("resnet8", 10).state_dict(), "metrics": {}})
    before = datasets(src)
    r = run_cli("store", "add-teacher", src, "--teacher", ckpt, *DS)
    assert_one_line_error(r, "10 classes")
    assert datasets(src) == before  # untouched and still a store
    SoftLabelStore.open(src).close()
    with pytest.raises(LabelenhError, match="already in store"):
        add_teacher(src, teachers(1), bundle.train)


# ---- kill -9 during add-teacher ----------------------------------------------------------------

SLOW_ADD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from tinynet import TinyNet
    from labelenh.data import load_dataset
    from labelenh.store import teacher_from_model
    from labelenh.store.derive import add_teacher

    b = load_dataset({dataset!r}, image_size={size})
    t = teacher_from_model(TinyNet(3, num_classes=3), "t3")
    def tick(c):
        print("chunk", c, flush=True)
        time.sleep(0.3)
    add_teacher({store!r}, [t], b.train, on_chunk=tick)
    print("done", flush=True)
""")


def test_kill9_during_add_teacher_keeps_the_old_store_readable_and_a_rerun_completes(bundle, tmp_path):
    ref, s = tmp_path / "ref.h5", tmp_path / "s.h5"
    export(bundle, ref, (1, 2, 3))
    export(bundle, s, (1, 2))
    before = datasets(s)
    script = SLOW_ADD.format(tests=str(Path(__file__).parent), dataset=DATASET, size=IMAGE_SIZE, store=str(s))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < 3 and time.monotonic() < deadline:
        line = p.stdout.readline()
        seen += line.startswith("chunk")
        with SoftLabelStore.open(s) as st:  # the old teachers stay readable all along
            assert st.teachers == ["t1", "t2"]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert seen == 3
    assert datasets(s) == before  # untouched: the add builds its store beside it
    info = run_cli("store", "info", s)
    assert info.code == 0 and "an interrupted add-teacher" in info.out, info.out
    r = add_teacher(s, teachers(3), bundle.train)
    assert r.chunks_resumed >= 3 and r.chunks_resumed + r.chunks_written == -(-60 // CS)
    assert datasets(s) == datasets(ref)
