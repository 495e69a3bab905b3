"""Store integrity: the disk space a store needs is reserved (or refused) before any work, a disk
that fills up on a real filesystem never leaves a store that looks valid, every flipped bit of
data or attributes is found by the checksums, a damaged file is one line — and schema-1 stores
still open, verify and resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from smallfs import fill, free_bytes, small_fs
from storetools import contents, data_ranges, flip_bit
from tinynet import TinyNet

from labelenh.data import load_dataset
from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore, export_soft_labels, store_info, teacher_from_model
from labelenh.store import writer as store_writer
from labelenh.store.inspect import verify_store
from labelenh.views import ViewSpec

DATASET, IMAGE_SIZE = "synthetic:2:24", 8  # N = 48 train images of 8x8, 2 classes
DS = ["--dataset", DATASET, "--image-size", str(IMAGE_SIZE)]
CS = 4  # samples per chunk: 12 chunks
V1 = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture(scope="module")
def bundle():
    return load_dataset(DATASET, image_size=IMAGE_SIZE)


BIG = 120  # views of the full-disk tests: a store of ~150 KB, mostly pages no write touched yet


def export(bundle, out: Path, *, views: int = 6, fmt: str = "fp16", op: str = "cutmix", **kw):
    teacher = teacher_from_model(TinyNet(1, num_classes=bundle.num_classes), "t")
    return export_soft_labels(out, [teacher], bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
                              mean=bundle.mean, std=bundle.std, num_views=views,
                              spec=ViewSpec(op, pad=2) if views else None, view_seed=3, fmt=fmt,
                              chunk_size=CS, device="cpu", dataset_meta=bundle.meta, **kw)


@pytest.fixture(scope="module")
def reference(bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "s.h5"
    export(bundle, out)
    return out


def make_ckpt(folder: Path, classes: int) -> Path:
    """A resnet8 checkpoint for the CLI (seeded weights; what it predicts does not matter)."""
    from labelenh.checkpoint import save_checkpoint
    from labelenh.models import build_model

    path = folder / f"teacher{classes}.pt"
    g = torch.Generator().manual_seed(0)
    model = build_model("resnet8", classes)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_checkpoint(path, {"model_name": "resnet8", "num_classes": classes, "in_chans": 3,
                           "model": model.state_dict(), "metrics": {}})
    return path


@pytest.fixture(scope="module")
def big_reference(bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "big.h5"
    export(bundle, out, views=BIG)
    return out


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("teacher"), 2)


def flagged(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["progress"][()].astype(bool).sum())


def assert_flagged_chunks_hold_the_reference(path: Path, ref: Path) -> None:
    """Every chunk flagged as written holds exactly the uninterrupted export's bytes."""
    with h5py.File(path, "r") as f, h5py.File(ref, "r") as g:
        done = np.repeat(f["progress"][()].astype(bool), CS)[: f["labels"].shape[0]]
        for name in ("labels", "views/recipes", "teachers/t/clean", "teachers/t/views"):
            assert np.array_equal(f[name][()][done], g[name][()][done]), name


# ---- disk space ------------------------------------------------------------------------------

def test_the_issue_case_is_refused_up_front_with_the_numbers(tmp_path):
    """1 MiB tmpfs with 700 KB used; 60 cutmix views of 200 images of 10 classes: once a sparse
    store that claimed to be complete with most rows zero; now one line before any file appears."""
    ckpt = make_ckpt(tmp_path, 10)
    with small_fs(tmp_path, 1024) as mnt:
        (mnt / "used.bin").write_bytes(b"\x01" * 700_000)
        out = mnt / "s.h5"
        r = run_cli("export-soft-labels", "-t", ckpt, "--dataset", "synthetic:10:20", "--image-size", "16",
                    "--aug", "cutmix", "--views", "60", "--batch-size", "4", "--device", "cpu", "--out", out)
        assert_one_line_error(r, "not enough free space", f"for {out}", "it needs", "free", "nothing was written")
        assert sorted(p.name for p in mnt.iterdir()) == ["used.bin"]


def test_a_billion_views_are_refused_before_a_sparse_file_exists(bundle, tmp_path):
    with small_fs(tmp_path, 256) as mnt:
        out = mnt / "s.h5"
        size = export(bundle, out, views=10**9, dry_run=True).size_bytes
        assert size > 10**11  # --dry-run knows the size ...
        with pytest.raises(LabelenhError, match=r"not enough free space .* it needs 938.8 GiB .* KiB free"):
            export(bundle, out, views=10**9)  # ... and so does the export, before creating anything
        assert list(mnt.iterdir()) == []


def test_reserved_space_survives_a_disk_that_fills_during_the_export(bundle, big_reference, tmp_path):
    """The store's extent is reserved when it is created: another process filling the disk
    while chunks are written takes none of it."""
    with small_fs(tmp_path, 384) as mnt:
        out = mnt / "s.h5"

        def fill_up(c: int) -> None:
            if c == 2:
                fill(mnt, 0)

        export(bundle, out, views=BIG, on_chunk=fill_up)
        assert free_bytes(mnt) < 8192  # the disk really is full
        assert contents(out) == contents(big_reference)
        SoftLabelStore.open(out).close()


@pytest.mark.parametrize("full_from", [0, 5, 11])
def test_a_disk_that_fills_mid_export_leaves_an_incomplete_store_that_resumes(
        bundle, big_reference, tmp_path, monkeypatch, full_from):
    """Without the reservation (patched out: a filesystem or a tool that lost it), a real tmpfs
    answers a chunk's writes with ENOSPC: the export ends in one LabelenhError, the store says
    incomplete, every flagged chunk is sound, and a rerun with space completes it bit-identically."""
    monkeypatch.setattr(store_writer, "reserve", lambda path, size: None)
    with small_fs(tmp_path, 384) as mnt:
        out = mnt / "s.h5"
        filler: list[Path] = []
        real_write = store_writer.StoreWriter.write_chunk

        def write_on_a_full_disk(self, c, *a):
            if c == full_from and not filler:
                filler.append(fill(mnt, 0))
            real_write(self, c, *a)

        with monkeypatch.context() as mp:
            mp.setattr(store_writer.StoreWriter, "write_chunk", write_on_a_full_disk)
            with pytest.raises(LabelenhError, match="no space left on device.*chunks already written are kept"):
                export(bundle, out, views=BIG)
        assert flagged(out) == full_from
        assert not store_info(out)["complete"]
        assert_flagged_chunks_hold_the_reference(out, big_reference)
        with pytest.raises(LabelenhError, match="incomplete"):
            SoftLabelStore.open(out)
        with pytest.raises(LabelenhError, match="incomplete"):
            verify_store(out)
        filler[0].unlink()
        r = export(bundle, out, views=BIG)
        assert r.chunks_resumed == full_from
        assert contents(out) == contents(big_reference)


def test_a_full_disk_mid_export_is_one_line_from_the_cli(teacher_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "reserve", lambda path, size: None)
    args = ["export-soft-labels", "-t", teacher_ckpt, *DS, "--aug", "ricap", "--views", "40", "--format", "fp32",
            "--batch-size", "4", "--device", "cpu"]
    ref = tmp_path / "ref.h5"
    assert run_cli(*args, "--out", ref).code == 0
    with small_fs(tmp_path, 384) as mnt:
        out = mnt / "s.h5"
        real_write = store_writer.StoreWriter.write_chunk
        filler: list[Path] = []

        def write_on_a_full_disk(self, c, *a):
            if c == 3 and not filler:
                filler.append(fill(mnt, 0))
            real_write(self, c, *a)

        with monkeypatch.context() as mp:
            mp.setattr(store_writer.StoreWriter, "write_chunk", write_on_a_full_disk)
            r = run_cli(*args, "--out", out)
        assert_one_line_error(r, "no space left on device", str(out), "chunks already written are kept")
        r = run_cli("store", "info", out)
        assert r.code == 0 and "NO (3/12 chunks)" in r.out
        filler[0].unlink()
        r = run_cli(*args, "--out", out)
        assert r.code == 0 and "resumed after 3 of 12 chunks" in r.out, r.err
        assert contents(out) == contents(ref)


# ---- checksums -------------------------------------------------------------------------------

def _fp16_exponent_flip(path: Path, name: str) -> tuple[int, int]:
    """Flip one exponent bit of one fp16 value in the middle of dataset `name` (the value stays
    finite); returns (its flat index, its chunk)."""
    start, end = data_ranges(path)[name]
    with h5py.File(path, "r") as f:
        shape = f[name].shape
        flat = np.asarray(f[name][()]).reshape(-1)
    i = flat.size // 2  # |x| < 2^15: flipping exponent bit 10 doubles or halves it, finite
    assert abs(float(flat[i])) < 2**15
    flip_bit(path, start + 2 * i + 1, 2)  # high byte, bit 2 = bit 10 of the half: an exponent bit
    with h5py.File(path, "r") as f:
        after = np.asarray(f[name][()]).reshape(-1)[i]
    assert np.isfinite(after) and after != flat[i]
    row = i // int(np.prod(shape[1:]))
    return i, row // CS


@pytest.mark.parametrize("name", ["teachers/t/clean", "teachers/t/views"])
def test_a_flipped_exponent_bit_is_found_by_verify_and_by_readers(reference, tmp_path, name):
    p = tmp_path / "rot.h5"
    shutil.copy(reference, p)
    _, chunk = _fp16_exponent_flip(p, name)
    r = run_cli("store", "verify", p, *DS)
    assert_one_line_error(r, "failed verification", f"chunk {chunk} ", f"of /{name} fails its checksum",
                          "restore it from a good copy")
    with pytest.raises(LabelenhError, match=f"chunk {chunk} .* of /{name} fails its checksum"):
        SoftLabelStore.open(p)  # preloaded: every chunk checked at once
    lazy = SoftLabelStore.open(p, preload=False)  # lazy: each chunk when first read
    other = (chunk + 1) % 12
    good = SoftLabelStore.open(reference)
    rows = torch.arange(other * CS, other * CS + CS)
    read = lazy.view_logits if name.endswith("views") else lazy.clean_logits
    want = good.view_logits if name.endswith("views") else good.clean_logits
    args = (rows, 0) if name.endswith("views") else (rows,)
    assert torch.equal(read(*args), want(*args))  # sound chunks stay readable
    bad = torch.arange(chunk * CS, chunk * CS + CS)
    with pytest.raises(LabelenhError, match=f"chunk {chunk} .* fails its checksum"):
        read(*((bad, 0) if name.endswith("views") else (bad,)))
    lazy.close()
    good.close()


def test_an_edited_attribute_fails_the_attribute_checksum(reference, tmp_path):
    p = tmp_path / "s.h5"
    shutil.copy(reference, p)
    with h5py.File(p, "r+") as f:
        f.attrs["view_seed"] = np.int64(4)  # still a valid seed: only the checksum can tell
    for argv in (["store", "info", p], ["store", "verify", p]):
        assert_one_line_error(run_cli(*argv), "attributes fail their checksum", "restore it from a good copy")


def test_verify_and_info_report_the_checksums(reference):
    r = run_cli("store", "verify", reference, *DS)
    assert r.code == 0 and "checksums: crc32 of 12 chunks" in r.out, r.err
    assert "crc32 per chunk and dataset" in run_cli("store", "info", reference).out


# ---- bit-flip fuzz ---------------------------------------------------------------------------

def _all_logits(path: Path, preload: bool) -> tuple[torch.Tensor, ...]:
    with SoftLabelStore.open(path, preload=preload) as s:
        n, v = s.num_samples, s.num_views
        idx = torch.arange(n)
        views = torch.stack([s.view_logits(idx, j) for j in range(v)])
        rec = s.recipes(idx.repeat_interleave(v), torch.arange(v).repeat(n)).to_struct(s.view_spec)
        return s.labels(), s.clean_logits(idx), views, torch.from_numpy(rec.view(np.uint8).copy())


@pytest.mark.parametrize("fmt", ["fp16", "topk:1"])
def test_bit_flips_anywhere_are_refused_in_one_line_or_harmless(bundle, tmp_path, fmt):
    """Seeded single-bit flips over a whole small store — HDF5 metadata, attributes, data,
    checksums, unused space: `store info`, `store verify` and a reader (preloaded and lazy)
    each end with exit 0 and exactly the original data, or with one line and exit 2."""
    src = tmp_path / "s.h5"
    export(bundle, src, views=3, fmt=fmt)
    original = {pre: _all_logits(src, pre) for pre in (True, False)}
    size = src.stat().st_size
    data = data_ranges(src)
    rng = np.random.default_rng(2026)
    # half the flips in the datasets' bytes, half anywhere else (metadata and unused space)
    in_data = [b for a, e in data.values() for b in range(a, e)]
    elsewhere = sorted(set(range(size)) - set(in_data))
    bytes_ = np.concatenate([rng.choice(in_data, 40), rng.choice(elsewhere, 60)])
    outcomes = {"refused": 0, "harmless": 0, "checksum": 0}
    p = tmp_path / "flipped.h5"
    for k, byte in enumerate(bytes_):
        shutil.copy(src, p)
        flip_bit(p, int(byte), int(rng.integers(8)))
        for argv in (["store", "info", p], ["store", "verify", p]):
            r = run_cli(*argv)
            assert r.code in (0, 2) and "Traceback" not in r.err, (k, byte, argv, r.err)
            if r.code == 2:
                assert len(r.err.strip().splitlines()) == 1, (k, byte, r.err)
        for pre in (True, False):
            try:
                got = _all_logits(p, pre)
            except LabelenhError as e:
                assert "\n" not in str(e)
                outcomes["refused"] += 1
                outcomes["checksum"] += "checksum" in str(e)
                continue
            outcomes["harmless"] += 1
            for a, b in zip(got, original[pre], strict=True):  # never silently wrong data
                assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()), (k, byte)
    # both kinds happen: the fuzz reaches the checksums, and flips in unused bytes are let through
    assert outcomes["checksum"] >= 40 and outcomes["harmless"] > 0, outcomes


def test_a_student_on_a_flipped_store_trains_on_the_original_or_stops_in_one_line(bundle, tmp_path):
    """The student command itself, on stores with one flipped metadata or attribute bit."""
    src = tmp_path / "s.h5"
    export(bundle, src, views=0)
    data = data_ranges(src)
    in_data = {b for a, e in data.values() for b in range(a, e)}
    rng = np.random.default_rng(7)
    flips = rng.choice(sorted(set(range(src.stat().st_size)) - in_data), 8)
    for k, byte in enumerate(flips):
        p = tmp_path / f"f{k}.h5"
        shutil.copy(src, p)
        flip_bit(p, int(byte), int(rng.integers(8)))
        r = run_cli("student", *DS, "--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                    "--method", "sl", "--store", p, "--runs-dir", tmp_path / "runs", "--name", f"r{k}")
        assert r.code in (0, 2) and "Traceback" not in r.err, (byte, r.err)
        if r.code == 2:
            assert len(r.err.strip().splitlines()) == 1, r.err
            assert not (tmp_path / "runs" / f"r{k}" / "checkpoint.pt").exists()


# ---- schema 1 --------------------------------------------------------------------------------

def test_a_schema_1_store_opens_and_verify_says_it_has_no_checksums():
    r = run_cli("store", "verify", V1 / "crop-flip.h5", "--dataset", "synthetic:2:4", "--image-size", "8")
    assert r.code == 0 and "schema 1 store carries no checksums" in r.out, r.err
    info = run_cli("store", "info", V1 / "crop-flip.h5")
    assert "v1" in info.out and "bit rot cannot be detected" in info.out
    SoftLabelStore.open(V1 / "crop-flip.h5").close()


def test_an_interrupted_schema_1_export_resumes_as_schema_1(tmp_path):
    """The crop-flip export of the v1 fixture, killed after 1 of 2 chunks by the schema-1 code,
    finished by this code: the same store as the schema-1 code's uninterrupted one."""
    p = tmp_path / "partial.h5"
    shutil.copy(V1 / "crop-flip-partial.h5", p)
    small = load_dataset("synthetic:2:4", image_size=8)
    teacher = teacher_from_model(TinyNet(1, num_classes=2), "t")
    r = export_soft_labels(p, [teacher], small.train, dataset=small.name, num_classes=2, mean=small.mean,
                           std=small.std, num_views=2, spec=ViewSpec("crop-flip", pad=2), view_seed=5,
                           fmt="fp16", chunk_size=4, device="cpu", dataset_meta=small.meta)
    assert r.chunks_resumed == 1 and r.chunks_written == 1
    assert contents(p) == contents(V1 / "crop-flip.h5")
    # and rerunning the command on the complete schema-1 store finds it complete
    r = export_soft_labels(p, [teacher], small.train, dataset=small.name, num_classes=2, mean=small.mean,
                           std=small.std, num_views=2, spec=ViewSpec("crop-flip", pad=2), view_seed=5,
                           fmt="fp16", chunk_size=4, device="cpu", dataset_meta=small.meta)
    assert r.already_complete


# ---- shards of a multi-process export --------------------------------------------------------

@pytest.mark.parametrize("damaged", [False, True])
def test_a_shard_chunk_that_fails_its_checksum_is_redone_not_merged(bundle, tmp_path, damaged):
    """Rank 0 merges the chunks other ranks wrote in their shards: one whose bytes changed
    since (its checksums no longer match) is left for the rerun, with the chunks after it."""
    from labelenh.store import shards
    from labelenh.store.writer import StoreWriter, create_store

    ref = tmp_path / "ref.h5"
    plan = export(bundle, ref).plan
    out = tmp_path / "s.h5"
    create_store(out, plan)
    mine = [1, 3, 6]
    sp = shards.create_shard(shards.shard_path(out, 1), plan, mine, 1, 2)
    with h5py.File(ref, "r") as f:
        payloads = [shards._read_chunk(f, plan, c) for c in mine]  # a store: a shard of every chunk
    w = StoreWriter(shards.shard_path(out, 1), sp)
    for j, payload in enumerate(payloads):
        w.write_chunk(j, *payload)
    w.close()
    if damaged:  # one bit of the shard's second chunk (store chunk 3) of the view logits
        start, _ = data_ranges(shards.shard_path(out, 1))["teachers/t/views"]
        row_bytes = 6 * 2 * 2  # V x C x fp16
        flip_bit(shards.shard_path(out, 1), start + CS * row_bytes + 5, 0)
    writer = StoreWriter(out, plan)
    copied = shards.absorb(writer, plan, shards.shard_path(out, 1))
    done = writer.done()
    writer.close()
    assert copied == (1 if damaged else 3)
    assert list(np.flatnonzero(done)) == ([1] if damaged else mine)
    assert not shards.shard_path(out, 1).exists()
    assert_flagged_chunks_hold_the_reference(out, ref)
