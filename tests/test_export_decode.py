"""The export of an image folder decodes each file once per chunk and renders the clean image
and every view from that decode: the same store as decoding per view, with fewer decodes; a
corrupt file stops it with one line and a rerun resumes after the fix."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_loader import make_folder
from tinynet import TinyNet

import labelenh.data.decoded as decoded_mod
import labelenh.data.folder as folder_mod
from labelenh.data import load_dataset
from labelenh.errors import LabelenhError
from labelenh.store.export import TeacherRunner, export_soft_labels, teacher_from_model
from labelenh.views import ViewSpec

V = 8


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_dataset(f"folder:{make_folder(tmp_path_factory.mktemp('jpegs'))}", image_size=16)


def export(bundle, path, spec, **kw):
    torch.manual_seed(0)
    teacher = teacher_from_model(TinyNet(3, num_classes=2), "t")
    return export_soft_labels(path, [teacher], bundle.train, dataset=bundle.name, num_classes=2,
                              mean=bundle.mean, std=bundle.std, num_views=V, spec=spec, view_seed=5,
                              chunk_size=4, **kw)


def contents(path) -> dict[str, bytes]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, d: out.__setitem__(k, d[()].tobytes()) if isinstance(d, h5py.Dataset) else None)
    return out


def count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = folder_mod.open_rgb

    def counting(path):
        calls[0] += 1
        return real(path)

    monkeypatch.setattr(folder_mod, "open_rgb", counting)
    monkeypatch.setattr(decoded_mod, "open_rgb", counting)
    return calls


@pytest.mark.parametrize("spec,fewer", [(ViewSpec("crop-flip", pad=2), 4), (ViewSpec("rrc"), 2),
                                        (ViewSpec("cutmix", base="rrc"), 1.5)], ids=["crop-flip", "rrc", "cutmix"])
def test_one_decode_per_chunk_gives_the_same_store(bundle, tmp_path, monkeypatch, spec, fewer):
    n = len(bundle.train)
    calls = count_decodes(monkeypatch)
    export(bundle, tmp_path / "once.h5", spec)
    once = calls[0]
    with monkeypatch.context() as m:  # the path before: every clean image and view decodes its files
        m.setattr(TeacherRunner, "chunk_source", lambda self, plan, c: self.source)
        calls[0] = 0
        export(bundle, tmp_path / "per-view.h5", spec)
        before = calls[0]
    if spec.num_sources == 1:
        assert once == n  # each file exactly once, for the clean image and all V views
    assert before >= fewer * once, (before, once)
    a, b = contents(tmp_path / "once.h5"), contents(tmp_path / "per-view.h5")
    assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)


def test_a_corrupt_file_stops_the_export_and_a_rerun_resumes_after_the_fix(bundle, tmp_path):
    root = make_folder(tmp_path / "d")
    data = load_dataset(f"folder:{root}", image_size=16)
    spec = ViewSpec("rrc")
    bad = data.train.root / data.train.paths[9]  # in chunk 2 of 8 (chunks of 4)
    good = bad.read_bytes()
    bad.write_bytes(good[:40])
    with pytest.raises(LabelenhError) as e:
        export(data, tmp_path / "s.h5", spec)
    assert "\n" not in str(e.value) and data.train.paths[9] in str(e.value)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        done = np.asarray(f["progress"][()]).astype(bool)
    assert done[:2].all() and not done[2:].any()  # the chunks before the bad file are kept
    bad.write_bytes(good)
    res = export(data, tmp_path / "s.h5", spec)
    assert res.chunks_written == len(done) - 2  # resumed, not restarted
    export(data, tmp_path / "fresh.h5", spec)
    a, b = contents(tmp_path / "s.h5"), contents(tmp_path / "fresh.h5")
    assert all(a[k] == b[k] for k in a if k != "progress")


def test_export_cli_takes_workers_and_refuses_negative(bundle, tmp_path):
    from clitools import assert_one_line_error, run_cli

    r = run_cli("export-soft-labels", "-t", tmp_path / "none", "--out", tmp_path / "s.h5",
                "--dataset", "synthetic:10:20", "--workers", "-2", "--device", "cpu")
    assert_one_line_error(r, "--workers")
    assert not (tmp_path / "s.h5").exists()
    for w in (0, 3):  # any thread count: the same store
        export(bundle, tmp_path / f"w{w}.h5", ViewSpec("rrc"), workers=w)
    a, b = contents(tmp_path / "w0.h5"), contents(tmp_path / "w3.h5")
    assert all(a[k] == b[k] for k in a)
