"""The student's data path: the store's views are replayed exactly (images bit for bit, the
logits of the chosen view), the view schedule is seeded, and the Python API (`StoreBatches`,
`StoreDataset` + `collate` in a DataLoader) yields exactly what `labelenh student` trains on."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from clitools import run_cli
from torch.utils.data import DataLoader

from labelenh.checkpoint import load_teacher
from labelenh.data import normalize
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError
from labelenh.methods import build_method
from labelenh.store import SoftLabelStore
from labelenh.store.dataset import StoreBatches, StoreDataset, collate, epoch_views
from labelenh.student import StudentSettings, build_task
from labelenh.teach import DataSettings
from labelenh.utils import derive_seed
from labelenh.views import Recipes, ViewSpec, gather_and_apply, sample_views

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]
V = 3  # views per sample in the store



@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny teacher and one store of its clean logits + V ricap views per sample."""
    root = tmp_path_factory.mktemp("api")
    r = run_cli("teach", *DS, "--model", "resnet8", "--epochs", "1", "--batch-size", "64",
                "--milestones", "5", "--device", "cpu", "--name", "t", "--runs-dir", root)
    assert r.code == 0, r.err
    store = root / "ricap.h5"
    r = run_cli("export-soft-labels", "-t", root / "t", "--out", store, *DS, "--aug", "ricap",
                "--views", V, "--format", "fp32", "--device", "cpu")
    assert r.code == 0, r.err
    return {"teacher": root / "t", "store": store}


def settings(made, method="sl", aug="ricap", seed=0, store=True, **kw) -> StudentSettings:
    return StudentSettings(model="resnet8", method=method, store=str(made["store"]) if store else None, aug=aug,
                           data=DataSettings(dataset="synthetic:10:20", image_size=16),
                           train=TrainConfig(epochs=2, batch_size=64, seed=seed), device="cpu", **kw)


def raw(made):
    """The store's arrays read with h5py, independently of the reader under test."""
    with h5py.File(made["store"], "r") as f:
        return {"views": torch.from_numpy(f["teachers/t/views"][()]),  # [N, V, C]
                "clean": torch.from_numpy(f["teachers/t/clean"][()]),  # [N, C]
                "recipes": f["views/recipes"][()]}  # [N, V] records


def test_student_batches_replay_the_stored_views_exactly(made):
    task = build_task(settings(made))
    b = task.pipe.bundle
    arr = raw(made)
    spec = SoftLabelStore.open(made["store"]).view_spec
    teacher, _ = load_teacher(made["teacher"], "cpu")
    for epoch in (0, 1):
        views = task.epoch_views(epoch)  # [N]
        order = task.pipe.epoch_batches(epoch)
        batches = list(task.train_batches(epoch))
        assert len(batches) == len(order) == task.steps_per_epoch
        for idx, batch in zip(order, batches, strict=True):
            v = views[idx]
            rec = Recipes.from_struct(arr["recipes"][idx.numpy(), v.numpy()], spec, (16, 16),
                                      samples=idx, views=v)
            x, w = gather_and_apply(b.train, rec, b.num_classes)
            assert torch.equal(batch.x, normalize(x, b.mean, b.std))  # the teacher's exact image
            assert torch.equal(batch.inputs.hard, w)  # ricap's area-weighted labels
            assert torch.equal(batch.labels, b.train.labels[idx])
            t = batch.inputs.teacher_logits  # [B, M=1, C]
            assert torch.equal(t[:, 0], arr["views"][idx, v])  # that view's stored logits
            # and they are the teacher's logits of the very input the student gets
            with torch.no_grad():
                torch.testing.assert_close(teacher(batch.x), t[:, 0], atol=1e-4, rtol=1e-4)


def test_view_schedule_is_seeded_and_changes_every_epoch(made):
    a, b, c = (build_task(settings(made, seed=s)) for s in (0, 0, 1))
    runs = [torch.stack([t.epoch_views(e) for e in range(2 * V)]) for t in (a, b, c)]  # [E, N]
    assert torch.equal(runs[0], runs[1])  # same seed, same views
    assert not torch.equal(runs[0], runs[2])  # another seed, other views
    first = runs[0][:V]
    assert (first[0] != first[1]).all()  # every sample changes view from epoch 0 to 1
    # within a cycle of V epochs each sample shows every view once; the next cycle reshuffles
    assert torch.equal(first.sort(dim=0).values, torch.arange(V).view(V, 1).expand_as(first))
    assert torch.equal(runs[0][V:].sort(dim=0).values, first.sort(dim=0).values)
    assert not torch.equal(runs[0][V:], first)
    # each epoch's choice is spread over the views, and depends on (seed, epoch, sample) alone
    assert set(first[0].tolist()) == set(range(V))
    some = torch.tensor([7, 3, 150])
    assert torch.equal(epoch_views(V, 0, 4, some), runs[0][4][some])


def test_without_aug_store_methods_get_the_clean_logits(made):
    task = build_task(settings(made, aug=None))
    b = task.pipe.bundle
    clean = raw(made)["clean"]
    spec = ViewSpec("crop-flip", pad=b.crop_pad)
    assert task.epoch_views(0) is None
    for epoch in (0, 1):
        for idx, batch in zip(task.pipe.epoch_batches(epoch), task.train_batches(epoch), strict=True):
            assert torch.equal(batch.inputs.teacher_logits[:, 0], clean[idx])
            # a fresh crop/flip view of the sample, replayable from (seed, sample, epoch)
            rec = sample_views(len(b.train), epoch + 1, spec, derive_seed(0, "student-views"), (16, 16),
                               samples=idx, views=torch.tensor([epoch]))
            x, w = gather_and_apply(b.train, rec, b.num_classes)
            assert torch.equal(batch.x, normalize(x, b.mean, b.std))
            assert torch.equal(w, torch.nn.functional.one_hot(b.train.labels[idx], 10).float())


def test_teacher_free_methods_read_no_logits(made):
    task = build_task(settings(made, method="ls", aug="ricap"))
    batch = next(iter(task.train_batches(0)))
    assert batch.inputs.teacher_logits is None
    assert (batch.inputs.hard > 0).sum(1).max() > 1  # still the store's mixed views
    task = build_task(settings(made, method="vanilla", aug="mixup", store=False))  # on the fly
    batch = next(iter(task.train_batches(0)))
    assert batch.inputs.teacher_logits is None and (batch.inputs.hard > 0).sum(1).max() == 2


def student_batches(task, epoch):
    """(sample order, batches) the student stage trains on in `epoch`."""
    return task.pipe.epoch_batches(epoch), list(task.train_batches(epoch))


def assert_same(x, inp, batch, b):
    assert torch.equal(normalize(x, b.mean, b.std), batch.x)
    assert torch.equal(inp.hard, batch.inputs.hard)
    assert torch.equal(inp.labels, batch.inputs.labels)
    assert torch.equal(inp.teacher_logits, batch.inputs.teacher_logits)


def test_store_batches_yield_what_the_student_trains_on(made):
    task = build_task(settings(made, method="kd-sl"))
    b = task.pipe.bundle
    batches = StoreBatches(made["store"], b.train, aug=True, seed=0)
    method = build_method("kd-sl", b.num_classes, T=3.0)
    for epoch in (0, 1):
        _, want = student_batches(task, epoch)
        got = list(batches.iter_epoch(epoch, batch_size=64))
        assert len(got) == len(want)
        for (x, inp), batch in zip(got, want, strict=True):
            assert x.dtype == torch.float32 and x.shape == (len(inp.labels), 3, 16, 16)
            assert_same(x, inp, batch, b)
            terms = method.loss(torch.zeros(len(x), 10), inp)
            assert set(terms) == {"ce", "kd"} and all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("workers, by_path", [(0, False), (2, True)])
def test_store_dataset_in_a_dataloader_matches_the_student(made, workers, by_path):
    task = build_task(settings(made))
    b = task.pipe.bundle
    store = made["store"] if by_path else SoftLabelStore.open(made["store"])
    ds = StoreDataset(store, b.train, aug=True, seed=0)
    assert len(ds) == len(b.train)
    for epoch in (0, 1):
        order, want = student_batches(task, epoch)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_sampler=[i.tolist() for i in order], num_workers=workers,
                            collate_fn=collate)
        got = list(loader)
        assert len(got) == len(want)
        for (x, inp), batch in zip(got, want, strict=True):
            assert_same(x, inp, batch, b)
    # single items: the rows of the batch, with their sample and view
    views = task.epoch_views(1)
    item = ds[17]
    assert item["index"] == 17 and item["view"] == int(views[17])
    assert item["image"].shape == (3, 16, 16) and item["teacher_logits"].shape == (1, 10)
    assert torch.equal(item["teacher_logits"][0], raw(made)["views"][17, views[17]])
    # what a spawned worker gets: the store is reopened (memory-mapped) from its path
    clone = pickle.loads(pickle.dumps(ds))
    assert (clone._batches is None) == by_path
    assert all(torch.equal(clone[17][k], item[k]) for k in ("image", "hard", "labels", "teacher_logits"))
    x, inp = collate([ds[i] for i in (17, 3)])
    bx, binp = StoreBatches(made["store"], b.train, aug=True).batch(torch.tensor([17, 3]), 1)
    assert torch.equal(x, bx) and torch.equal(inp.teacher_logits, binp.teacher_logits)


def test_api_refuses_mismatched_input(made, tmp_path):
    from labelenh.data import TensorImages, load_dataset

    train = load_dataset("synthetic:10:20", image_size=16).train
    other = TensorImages(train.images.flip(0), train.labels.flip(0))
    with pytest.raises(LabelenhError, match="was made for"):
        StoreDataset(made["store"], other, aug=True)
    with pytest.raises(LabelenhError, match="does not exist"):
        StoreDataset(tmp_path / "none.h5", train, aug=True)
    with pytest.raises(LabelenhError, match="pass a store"):
        StoreBatches(None, train, aug=True, num_classes=10)
    with pytest.raises(LabelenhError, match="no teacher"):
        StoreBatches(made["store"], train, aug=True, teachers=["zz"])
    ds = StoreDataset(made["store"], train, aug=True)
    with pytest.raises(IndexError):
        ds[len(train)]
    assert np.isfinite(collate([ds[0]])[1].teacher_logits.numpy()).all()
