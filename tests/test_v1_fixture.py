"""Stores written by the schema-1 code (tests/fixtures/v1, made by scripts/make_v1_fixture.py at
the last commit before views became one module per op) still open, verify and replay exactly:
the same recipes, the same rendered images and label weights, and a rerun of the export that
made them finds them complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run_cli
from tinynet import TinyNet

from labelenh.data import load_dataset
from labelenh.store import SoftLabelStore, export_soft_labels, teacher_from_model
from labelenh.views import ViewSpec, gather_and_apply

FIXTURE = Path(__file__).parent / "fixtures" / "v1"
OPS = ("none", "crop-flip", "mixup", "cutmix", "ricap")  # the ops schema 1 knew
DATASET, IMAGE_SIZE, VIEWS, SEED, CHUNK = "synthetic:2:4", 8, 2, 5, 4
# recipe tensors as the schema-1 code named them -> today's names
FIELDS = {"sample": "sample", "view": "view", "mixed": "mixed", "crop": "crop", "flip": "flip",
          "partners": "partners", "lam": "lam", "box": "box", "ricap_wh": "wh", "ricap_off": "offsets"}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def bundle():
    return load_dataset(DATASET, image_size=IMAGE_SIZE)


@pytest.mark.parametrize("op", OPS)
def test_v1_store_verifies(op):
    r = run_cli("store", "verify", FIXTURE / f"{op}.h5", "--dataset", DATASET, "--image-size", str(IMAGE_SIZE))
    assert r.code == 0, r.err
    assert "OK" in r.out


@pytest.mark.parametrize("op", OPS)
def test_v1_store_replays_exactly(op, expected, bundle):
    store = SoftLabelStore.open(FIXTURE / f"{op}.h5")
    assert store.num_views == VIEWS
    n = store.num_samples
    samples = torch.arange(n).repeat_interleave(VIEWS)
    views = torch.arange(VIEWS).repeat(n)
    rec = store.recipes(samples, views)
    have = rec.tensors()
    for old, new in FIELDS.items():
        want = expected[f"{op}/{old}"]
        if new in have:
            np.testing.assert_array_equal(have[new].numpy(), want, err_msg=f"{op}: recipe field {new}")
        elif old == "lam":  # cutmix/ricap derive it from their geometry: the weights below check it
            assert op in ("none", "crop-flip") or want.dtype == np.float32
            if op in ("none", "crop-flip"):
                assert (want == 1).all()
        else:  # schema 1 filled fields an op does not use with zeros
            assert not want.any(), (op, old)
    images, weights = gather_and_apply(bundle.train, rec, bundle.num_classes)
    # bit for bit: the student must see the very image the teacher saw
    assert images.numpy().tobytes() == expected[f"{op}/images"].tobytes()
    assert weights.numpy().tobytes() == expected[f"{op}/weights"].tobytes()


@pytest.mark.parametrize("op", OPS)
def test_rerunning_the_v1_export_finds_it_complete(op, expected, bundle, tmp_path):
    path = tmp_path / f"{op}.h5"
    shutil.copy(FIXTURE / f"{op}.h5", path)
    before = path.read_bytes()
    # the spec a rerun of the same command builds today: the schema-1 dict's meaning, in today's form
    spec = ViewSpec.from_dict(ViewSpec.from_dict(json.loads(str(expected[f"{op}/spec"]))).to_dict())
    teacher = teacher_from_model(TinyNet(1, num_classes=bundle.num_classes), "t")
    res = export_soft_labels(path, [teacher], bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
                             mean=bundle.mean, std=bundle.std, num_views=VIEWS, spec=spec, view_seed=SEED,
                             fmt="fp16", chunk_size=CHUNK, device="cpu", dataset_meta=bundle.meta)
    assert res.already_complete
    assert path.read_bytes() == before


@pytest.mark.parametrize("op", OPS)
def test_an_interrupted_v1_export_resumes_with_the_same_bytes(op, expected, bundle, tmp_path):
    """Today's code finishes a schema-1 store whose last chunk was never written: the recipes
    it draws and the views it renders give the bytes the schema-1 code wrote."""
    import h5py

    path = tmp_path / f"{op}.h5"
    shutil.copy(FIXTURE / f"{op}.h5", path)
    with h5py.File(FIXTURE / f"{op}.h5", "r") as f:
        want = {k: f[k][()].tobytes() for k in ("labels", "views/recipes", "teachers/t/clean", "teachers/t/views")}
    with h5py.File(path, "r+") as f:  # as a kill before the last chunk leaves it
        f["progress"][-1] = 0
        f.attrs["complete"] = False
        for k in ("views/recipes", "teachers/t/clean", "teachers/t/views"):
            f[k][CHUNK:] = np.zeros_like(f[k][CHUNK:])
    spec = ViewSpec.from_dict(ViewSpec.from_dict(json.loads(str(expected[f"{op}/spec"]))).to_dict())
    teacher = teacher_from_model(TinyNet(1, num_classes=bundle.num_classes), "t")
    res = export_soft_labels(path, [teacher], bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
                             mean=bundle.mean, std=bundle.std, num_views=VIEWS, spec=spec, view_seed=SEED,
                             fmt="fp16", chunk_size=CHUNK, device="cpu", dataset_meta=bundle.meta)
    assert res.chunks_written == 1 and res.chunks_resumed == 1
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"])
        for k, v in want.items():
            assert f[k][()].tobytes() == v, k


def _no_plot(monkeypatch) -> None:
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)


TRAIN = ["--dataset", DATASET, "--image-size", str(IMAGE_SIZE), "--model", "resnet8", "--batch-size", "4",
         "--device", "cpu"]


def test_a_student_on_a_v1_store_records_its_spec_as_written_and_resumes(tmp_path, monkeypatch):
    """The run records the store's schema-1 spec dict verbatim (what the schema-1 code
    recorded), so runs started before the change resume after it."""
    _no_plot(monkeypatch)
    store = tmp_path / "mixup.h5"
    shutil.copy(FIXTURE / "mixup.h5", store)
    args = ["student", *TRAIN, "--method", "sl", "--store", store, "--aug", "mixup", "--name", "s",
            "--runs-dir", tmp_path]
    r = run_cli(*args, "--epochs", "1")
    assert r.code == 0, r.err
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["store_record"]["view_spec"] == SoftLabelStore.open(store).view_spec.record()
    assert set(cfg["store_record"]["view_spec"]) == {"op", "pad", "flip", "mixup_alpha", "cutmix_beta",
                                                     "mix_prob", "ricap_beta"}
    r = run_cli(*args, "--epochs", "2", "--resume")
    assert r.code == 0, r.err


def test_a_teacher_run_recorded_with_a_v1_aug_dict_resumes(tmp_path, monkeypatch):
    """Teacher runs recorded `aug` as the schema-1 flat dict; resuming one keeps that record."""
    _no_plot(monkeypatch)
    args = ["teach", *TRAIN, "--name", "t", "--runs-dir", tmp_path]
    r = run_cli(*args, "--epochs", "1")
    assert r.code == 0, r.err
    ck_path = tmp_path / "t" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    v1 = {"op": "crop-flip", "pad": 4, "flip": True, "mixup_alpha": 1.0, "cutmix_beta": 1.0, "mix_prob": 1.0,
          "ricap_beta": 0.3}
    assert ViewSpec.from_dict(v1) == ViewSpec.from_dict(ck["config"]["aug"])
    ck["config"]["aug"] = v1  # as the schema-1 code wrote it
    torch.save(ck, ck_path)
    r = run_cli(*args, "--epochs", "2", "--resume")
    assert r.code == 0, r.err
    assert torch.load(ck_path, weights_only=True)["config"]["aug"] == v1
