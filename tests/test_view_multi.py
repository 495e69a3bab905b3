"""Stores that hold views of several ops: blocks (`--aug mixup:2,cutmix:2`) and a per-view
switch (`--aug mixup,cutmix --switch-prob p`); every view equals the single-op view of the same
(seed, sample, view); export -> student replays them as stored; bad lists are one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from tinynet import TinyNet

from labelenh.data import TensorImages, load_dataset
from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore, StoreBatches, export_soft_labels, teacher_from_model
from labelenh.views import Recipes, ViewSpec, gather_and_apply, recipe_dtype, sample_views

N, K, H, W = 40, 6, 10, 12
GEN = torch.Generator().manual_seed(0)
SOURCE = TensorImages(torch.randint(0, 256, (N, 3, H, W), dtype=torch.uint8, generator=GEN),
                      torch.randint(0, K, (N,), generator=GEN))


@pytest.mark.parametrize("text,kw", [
    ("mixup:2,cutmix:2", {"pad": 2, "mix_prob": 0.7}),
    ("crop-flip:1,ricap:2,mixup:1", {"pad": 1}),
    ("mixup,cutmix", {"switch_prob": 0.4, "base": "rrc"}),
    ("cutmix,ricap,rrc", {}),
])
def test_each_view_is_the_single_op_view(text, kw):
    spec = ViewSpec.parse(text, **kw)
    rec = sample_views(N, 4, spec, 7, (H, W))
    x, w = gather_and_apply(SOURCE, rec, K)
    torch.testing.assert_close(w.sum(1), torch.ones(len(rec)))
    seen = 0
    for k, sub in enumerate(spec.ops):
        rows = rec.op == k
        single = sample_views(N, 4, sub, 7, (H, W))
        xs, ws = gather_and_apply(SOURCE, single, K)
        assert torch.equal(x[rows], xs[rows]) and torch.equal(w[rows], ws[rows])
        assert torch.equal(rec.partners[rows][:, : sub.num_sources - 1], single.partners[rows])
        seen += int(rows.sum())
    assert seen == len(rec)
    if spec.counts is not None:  # blocks in the listed order
        want = np.repeat(np.arange(len(spec.counts)), spec.counts)
        assert torch.equal(rec.op.view(N, 4), torch.as_tensor(want).repeat(N, 1))
    back = Recipes.from_struct(rec.to_struct().reshape(N, 4), spec, (H, W))
    assert back.equal(rec)


def test_switch_prob_is_the_share_of_the_second_op():
    rec = sample_views(3000, 1, ViewSpec.parse("mixup,cutmix", switch_prob=0.3), 0, (H, W))
    assert abs(rec.op.float().mean() - 0.3) < 0.03
    three = sample_views(3000, 1, ViewSpec.parse("mixup,cutmix,ricap"), 0, (H, W))
    assert all(abs((three.op == k).float().mean() - 1 / 3) < 0.03 for k in range(3))


def test_spec_dict_and_record_size():
    spec = ViewSpec.parse("mixup:8,cutmix:8")
    assert ViewSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.to_dict()["ops"] == [ViewSpec("mixup").to_dict(), ViewSpec("cutmix").to_dict()]
    # op id + the union of the two layouts (partners, crops and flags shared)
    assert recipe_dtype(spec).itemsize == 1 + 4 + 4 + 8 + 4 + 1


@pytest.mark.parametrize("text,kw", [
    ("mixup:8,cutmix", {}), ("mixup,bogus", {}), ("mixup:0,cutmix:2", {}), ("mixup:x,cutmix:2", {}),
    ("mixup,mixup", {}), ("mixup,cutmix,ricap", {"switch_prob": 0.5}), ("mixup:1,cutmix:1", {"switch_prob": 0.5}),
    ("mixup,cutmix", {"switch_prob": 1.5}), ("mixup,,cutmix", {}), ("mixup,mixup:1,cutmix", {}),
])
def test_bad_lists(text, kw):
    with pytest.raises(LabelenhError) as e:
        ViewSpec.parse(text, **kw)
    assert "\n" not in str(e.value)


DS = ["--dataset", "synthetic:3:6", "--image-size", "8"]


@pytest.mark.parametrize("args,needle", [
    (["--aug", "mixup:8,cutmix:8", "--views", "10"], "16 views"),
    (["--aug", "mixup,cutmix", "--views", "2", "--ricap-beta", "0.5"], "--ricap-beta"),
    (["--aug", "mixup,bogus", "--views", "2"], "bogus"),
    (["--aug", "mixup", "--views", "2", "--switch-prob", "0.5"], "--switch-prob"),
    (["--aug", "rrc", "--views", "2", "--rrc-scale", "0.5,0.1"], "LO <= HI"),
    (["--aug", "rrc", "--views", "2", "--rrc-scale", "0,1"], "(0, 1]"),
    (["--aug", "rrc", "--views", "2", "--rrc-ratio", "-1,2"], "positive"),
    (["--aug", "rrc", "--views", "2", "--rrc-scale", "1.5"], "LO,HI"),
    (["--aug", "mixup", "--views", "2", "--pad", "-1"], "--pad"),
    (["--aug", "cutout", "--views", "2", "--cutout-size", "0"], "--cutout-size"),
    (["--aug", "mixup,cutmix", "--views", "2", "--switch-prob", "1.5"], "--switch-prob"),
    (["--aug", "mixup", "--views", "2", "--base", "bogus"], "bogus"),
    (["--aug", "mixup", "--views", "2", "--base", "mixup"], "cannot be a base"),
    (["--aug", "rrc", "--views", "2", "--rrc-scale", "0.5,1.5"], "(0, 1]"),
    (["--aug", "crop-flip", "--views", "2", "--cutout-size", "8"], "does not apply"),
])
def test_bad_view_flags_are_one_line(args, needle, tmp_path):
    r = run_cli("export-soft-labels", "-t", tmp_path / "no-teacher", "--out", tmp_path / "s.h5", *DS, *args)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "s.h5").exists()


def test_export_then_student_replays_a_multi_store(tmp_path, monkeypatch):
    bundle = load_dataset("synthetic:3:6", image_size=8)
    spec = ViewSpec.parse("mixup:2,cutmix:1", pad=1)
    path = tmp_path / "multi.h5"
    export_soft_labels(path, [teacher_from_model(TinyNet(1, num_classes=3), "t")], bundle.train,
                       dataset=bundle.name, num_classes=3, mean=bundle.mean, std=bundle.std, num_views=3,
                       spec=spec, view_seed=4, fmt="fp16", chunk_size=8, device="cpu", dataset_meta=bundle.meta)
    store = SoftLabelStore.open(path)
    assert store.view_spec == spec
    r = run_cli("store", "verify", path, *DS)
    assert r.code == 0, r.err
    # the student's batches are the stored recipes rendered, with the stored logits
    batches = StoreBatches(path, bundle.train, aug=True, seed=0)
    idx = torch.arange(len(bundle.train))
    x, inp = batches.batch(idx, 0)
    views = batches.views(idx, 0)
    want, _ = gather_and_apply(bundle.train, store.recipes(idx, views), 3)
    assert torch.equal(x.cpu(), want)
    torch.testing.assert_close(inp.teacher_logits[:, 0], store.view_logits(idx, views)[:, 0])
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
    common = ["student", *DS, "--model", "resnet8", "--epochs", "1", "--batch-size", "6", "--device", "cpu",
              "--method", "sl", "--store", path, "--runs-dir", tmp_path]
    r = run_cli(*common, "--aug", "mixup:2,cutmix:1", "--name", "ok")
    assert r.code == 0, r.err
    assert_one_line_error(run_cli(*common, "--aug", "cutmix", "--name", "no"), "holds views of multi")
