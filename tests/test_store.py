"""The soft-label store: round trips per format, top-k reconstruction and its reported error,
refusal of wrong/incomplete/foreign/truncated files, and the reader's modes."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tinynet import TinyNet

from labelenh.data import TensorImages, normalize
from labelenh.engine import predict
from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore, export_soft_labels, store_info, teacher_from_model
from labelenh.store.topk import kl_rows, topk_compress, topk_dense
from labelenh.views import ViewSpec, gather_and_apply, sample_views

N, C, V, CS, HW = 90, 10, 3, 16, 8
MEAN, STD = (0.45, 0.5, 0.55), (0.25, 0.2, 0.3)
SPEC = ViewSpec("ricap", pad=2)




def make_source(n: int = N, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, HW, HW), generator=g, dtype=torch.uint8)
    return TensorImages(x, torch.randint(0, C, (n,), generator=g))


def export(path, teachers, src, fmt="fp32", views=V, **kw):
    return export_soft_labels(path, teachers, src, dataset="toy", num_classes=C, mean=MEAN, std=STD,
                              num_views=views, spec=SPEC if views else None, view_seed=7, fmt=fmt,
                              chunk_size=CS, **kw)


@torch.inference_mode()
def expected_logits(model, src, views=V):
    """The teacher run directly on the store's fixed blocks: clean [N, C], views [N, V, C]."""
    n = len(src)
    clean, view = [], []
    for s0 in range(0, n, CS):
        idx = torch.arange(s0, min(n, s0 + CS))
        clean.append(model(normalize(src.load(idx), MEAN, STD)))
        if views:
            rec = sample_views(n, views, SPEC, 7, (HW, HW), samples=idx)
            for i in range(0, len(rec), CS):
                x, _ = gather_and_apply(src, rec[i:i + CS], C)
                view.append(model(normalize(x, MEAN, STD)))
    return torch.cat(clean), (torch.cat(view).view(n, views, C) if views else None)


@pytest.fixture(scope="module")
def data():
    return make_source()


@pytest.fixture(scope="module")
def teachers():
    return [teacher_from_model(TinyNet(1), "a", metrics={"acc1": 0.7, "nll": 0.9, "ece": 0.04}),
            teacher_from_model(TinyNet(2), "b")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data, teachers):
    d = tmp_path_factory.mktemp("stores")
    out = {}
    for fmt in ("fp32", "fp16", "topk:3", "topk:10"):
        p = d / f"{fmt.replace(':', '')}.h5"
        export(p, teachers, data, fmt=fmt)
        out[fmt] = p
    return out


ALL = torch.arange(N)


def all_views(store):
    s = ALL.repeat_interleave(V)
    v = torch.arange(V).repeat(N)
    return store.view_logits(s, v).view(N, V, -1, C)  # [N, V, M, C]


def test_fp32_round_trip_is_exact(stores, data, teachers):
    with SoftLabelStore.open(stores["fp32"]) as s:
        assert (s.num_samples, s.num_classes, s.num_views, s.teachers) == (N, C, V, ["a", "b"])
        assert torch.equal(s.labels(), data.labels)
        clean, views = s.clean_logits(ALL), all_views(s)
        for m, t in enumerate(teachers):
            zc, zv = expected_logits(t.model, data)
            assert torch.equal(clean[:, m], zc)
            assert torch.equal(views[:, :, m], zv)


def test_clean_logits_equal_the_evaluate_path(stores, data, teachers):
    # engine.predict is the teacher's evaluate(): eval mode, normalised clean images
    batches = [(normalize(data.load(idx), MEAN, STD), data.labels[idx]) for idx in ALL.split(CS)]
    logits, _ = predict(teachers[0].model, batches, device=torch.device("cpu"))
    with SoftLabelStore.open(stores["fp32"]) as s:
        assert torch.equal(s.clean_logits(ALL, ["a"])[:, 0], logits)


def test_fp16_round_trip_within_fp16_rounding(stores, data, teachers):
    with SoftLabelStore.open(stores["fp16"]) as s:
        clean, views = s.clean_logits(ALL), all_views(s)
    for m, t in enumerate(teachers):
        zc, zv = expected_logits(t.model, data)
        assert torch.equal(clean[:, m], zc.half().float())
        assert torch.equal(views[:, :, m], zv.half().float())


def test_recipes_replay_the_stored_views(stores, data):
    with SoftLabelStore.open(stores["fp16"]) as s:
        samples = torch.tensor([5, 0, 5, 89])
        views = torch.tensor([2, 0, 1, 2])
        got = s.recipes(samples, views)
    want = [sample_views(N, V, SPEC, 7, (HW, HW), samples=[i], views=[v]) for i, v in zip(samples, views, strict=True)]
    for k, w in enumerate(want):
        assert got[k].equal(w)


def test_topk_reconstruction_formula():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(64, 12, generator=g) * 4
    idx, lp, lse = topk_compress(z, 4)
    rec = topk_dense(idx, lp, lse, 12)
    assert torch.equal(idx, z.topk(4).indices)
    # the stored logits come back to fp16 precision of the log-probabilities
    torch.testing.assert_close(rec.gather(1, idx), z.gather(1, idx), atol=1e-2, rtol=2e-3)
    p_top = torch.softmax(z, -1).gather(1, idx)
    q = torch.softmax(rec, -1)
    others = torch.ones_like(z, dtype=torch.bool).scatter_(1, idx, False)
    q_rest = q[others].view(64, 8)
    # the remaining mass 1 - sum p_k is spread evenly over the other C - k classes
    torch.testing.assert_close(q_rest.sum(-1), 1 - p_top.sum(-1), atol=2e-3, rtol=0)
    torch.testing.assert_close(q_rest, q_rest[:, :1].expand(64, 8))
    # with k = C nothing is lost but fp16 rounding
    full = topk_dense(*topk_compress(z, 12), 12)
    torch.testing.assert_close(full, z, atol=1e-2, rtol=2e-3)


def test_topk_store_and_its_reported_error(stores, data, teachers):
    with SoftLabelStore.open(stores["fp32"]) as d, SoftLabelStore.open(stores["topk:3"]) as t:
        dense_c, dense_v = d.clean_logits(ALL), all_views(d)
        top_c, top_v = t.clean_logits(ALL), all_views(t)
    for m, teacher in enumerate(teachers):
        zc, zv = expected_logits(teacher.model, data)
        # what the reader returns is the reconstruction of the exact teacher logits
        assert torch.equal(top_c[:, m], topk_dense(*topk_compress(zc, 3), C))
        info = t.teacher_info(teacher.name)
        for dense, top, key in ((dense_c[:, m], top_c[:, m], "topk_kl_clean"),
                                (dense_v[:, :, m].reshape(-1, C), top_v[:, :, m].reshape(-1, C), "topk_kl_views")):
            direct = F.kl_div(torch.log_softmax(top.double(), -1), torch.log_softmax(dense.double(), -1),
                              log_target=True, reduction="sum").item() / dense.shape[0]
            assert direct > 1e-4  # top-3 of 10 classes does lose information
            assert info[key] == pytest.approx(direct, rel=1e-9)
        assert info["acc1"] == pytest.approx(0.7) if teacher.name == "a" else np.isnan(info["acc1"])
    # k = C: reconstruction within fp16 rounding, near-zero error
    with SoftLabelStore.open(stores["topk:10"]) as t:
        torch.testing.assert_close(t.clean_logits(ALL), dense_c, atol=2e-2, rtol=2e-3)
        assert t.teacher_info("a")["topk_kl_clean"] < 1e-5
    info = store_info(stores["topk:3"])
    assert info["teachers"][0]["topk_kl_clean"] == pytest.approx(
        float(kl_rows(dense_c[:, 0], top_c[:, 0]).mean()), rel=1e-9)
    assert info["bytes_per_view"] == {"per_teacher": 3 * (2 + 2) + 4, "recipe": 41, "total": 2 * 16 + 41}


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "topk:3"])
def test_preloaded_and_lazy_agree_on_unsorted_repeated_rows(stores, fmt):
    samples = torch.tensor([7, 3, 7, 89, 0, 3, 3, 45])
    views = torch.tensor([2, 0, 2, 1, 0, 2, 0, 1])
    mixed = torch.tensor([-1, 0, 2, -1, 1, -1, 0, 2])
    pre = SoftLabelStore.open(stores[fmt], preload=True)
    lazy = SoftLabelStore.open(stores[fmt], preload=False)
    assert pre.preloaded and not lazy.preloaded
    for a, b in ((pre.clean_logits(samples), lazy.clean_logits(samples)),
                 (pre.view_logits(samples, views), lazy.view_logits(samples, views)),
                 (pre.logits(samples, mixed, ["b"]), lazy.logits(samples, mixed, ["b"])),
                 (pre.labels(samples), lazy.labels(samples))):
        assert torch.equal(a, b)
    assert pre.recipes(samples, views).equal(lazy.recipes(samples, views))
    # row by row equals the batched gather (the un-sort puts rows back in the caller's order)
    one = torch.cat([lazy.view_logits(samples[i:i + 1], views[i:i + 1]) for i in range(len(samples))])
    assert torch.equal(one, pre.view_logits(samples, views))
    assert pre.teacher_names([1, "a"]) == ["b", "a"] and pre.teacher_names() == ["a", "b"]
    # -1 means the clean sample; ensemble selection by name or index
    assert torch.equal(pre.logits(samples, mixed, [1])[mixed < 0], pre.clean_logits(samples[mixed < 0], ["b"]))
    # a lazy store survives pickling (spawned workers) and reopens its maps
    clone = pickle.loads(pickle.dumps(lazy))
    assert torch.equal(clone.view_logits(samples, views), pre.view_logits(samples, views))
    for s in (pre, lazy, clone):
        s.close()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, store: SoftLabelStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.num_samples

    def __getitem__(self, i: int):
        s = torch.tensor([i])
        return self.store.view_logits(s, torch.tensor([i % V]))[0], self.store.clean_logits(s)[0]


def test_dataloader_with_two_workers_reads_lazily(stores):
    lazy = SoftLabelStore.open(stores["fp16"], preload=False)
    lazy.clean_logits(torch.tensor([0]))  # maps opened in the parent first: workers must not reuse them
    loader = torch.utils.data.DataLoader(_Rows(lazy), batch_size=8, num_workers=2)
    got_v, got_c = zip(*loader, strict=True)
    with SoftLabelStore.open(stores["fp16"], preload=True) as pre:
        assert torch.equal(torch.cat(got_v), pre.view_logits(ALL, ALL % V))
        assert torch.equal(torch.cat(got_c), pre.clean_logits(ALL))


def test_bad_gathers_are_refused(stores):
    with SoftLabelStore.open(stores["fp16"]) as s:
        for call in (lambda: s.clean_logits(torch.tensor([N])), lambda: s.clean_logits(torch.tensor([-1])),
                     lambda: s.view_logits(torch.tensor([0]), torch.tensor([V])),
                     lambda: s.clean_logits(torch.tensor([0.5])),
                     lambda: s.logits(torch.tensor([0, 1, 2]), torch.tensor([0, -1])),
                     lambda: s.logits(torch.tensor([0]), torch.tensor([-2])),
                     lambda: s.clean_logits(torch.tensor([0]), ["nobody"])):
            with pytest.raises(LabelenhError):
                call()


def test_check_dataset_refuses_another_dataset(stores, data):
    with SoftLabelStore.open(stores["fp16"]) as s:
        s.check_dataset("toy", data.fingerprint(), N, C)  # the right one passes
        other = make_source(seed=1)
        for args in (("toy", other.fingerprint(), N, C), ("toy", data.fingerprint(), N - 1, C),
                     ("toy", data.fingerprint(), N, C + 1)):
            with pytest.raises(LabelenhError, match=r"was made for toy \(fingerprint .*N=90.*re-export") as e:
                s.check_dataset(*args)
            assert "\n" not in str(e.value)


def _refused(path, *needles):
    with pytest.raises(LabelenhError) as e:
        SoftLabelStore.open(path)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_foreign_truncated_and_damaged_files_are_refused(stores, tmp_path):
    _refused(tmp_path / "missing.h5", "does not exist")
    text = tmp_path / "notes.h5"
    text.write_text("not a store\n")
    _refused(text, "not an HDF5 file")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    _refused(plain, "not a labelenh soft-label store")
    raw = stores["fp16"].read_bytes()
    half = tmp_path / "half.h5"
    half.write_bytes(raw[: len(raw) // 2])
    _refused(half, "truncated")
    tail = tmp_path / "tail.h5"
    tail.write_bytes(raw[:-10])
    _refused(tail, "truncated")
    future = tmp_path / "future.h5"
    future.write_bytes(raw)
    with h5py.File(future, "r+") as f:
        f.attrs["schema"] = 3
    _refused(future, "schema 3")
    gone = tmp_path / "gone.h5"
    gone.write_bytes(raw)
    with h5py.File(gone, "r+") as f:
        del f["teachers/b/views"]
    _refused(gone, "lacks dataset /teachers/b/views")


def test_incomplete_store_is_refused(tmp_path, data, teachers):
    p = tmp_path / "part.h5"

    def stop(c):
        if c == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(p, teachers, data, fmt="fp16", on_chunk=stop)
    _refused(p, "incomplete (2 of 6 chunks written)", "rerun")
    info = store_info(p)
    assert not info["complete"] and info["chunks_done"] == 2
