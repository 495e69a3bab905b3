"""Lazy sources (image folders) train through loader workers: the batches are bit-identical
with 0, 1 and 2 workers and on each rank, and a worker's bad file is one line."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from labelenh import distributed as dist
from labelenh.data import load_dataset
from labelenh.data.loader import BatchLoader, resolve_workers
from labelenh.errors import LabelenhError
from labelenh.pipeline import ImagePipeline
from labelenh.store.dataset import StoreBatches
from labelenh.views import ViewSpec

SIZES = [(37, 53), (64, 30), (20, 20), (100, 80), (45, 45), (30, 90), (48, 64), (80, 60)]


def make_folder(root, sizes=SIZES, per_class: int = 2, fmt: str = "JPEG"):
    """train/ and val/ with two classes of small JPEGs of several sizes."""
    from PIL import Image

    g = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, (h, w) in enumerate(sizes * per_class):
            d = root / split / f"c{k % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{k}.jpg", fmt, quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return load_dataset(f"folder:{make_folder(tmp_path_factory.mktemp('jpegs'))}", image_size=16)


def epoch_images(bundle, workers: int, spec: ViewSpec, epochs=(0, 1)) -> list[torch.Tensor]:
    pipe = ImagePipeline(bundle, torch.device("cpu"), batch_size=5, seed=3, workers=workers)
    make = pipe.view_maker(spec, seed=7, num_views=4)
    out = []
    for e in epochs:
        for idx, (x, w) in pipe.made_batches(e, make):
            out += [idx, x, w]
    return out


@pytest.mark.parametrize("spec", [ViewSpec("rrc"), ViewSpec("cutmix", base="rrc")], ids=["rrc", "cutmix"])
def test_batches_are_bit_identical_with_0_1_2_workers(folder, spec):
    ref = epoch_images(folder, 0, spec)
    assert ref[1].dtype == torch.float32 and ref[1].shape[1:] == (3, 16, 16)
    for w in (1, 2):
        got = epoch_images(folder, w, spec)
        assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref, strict=True)), w
    # and two epochs differ: the epoch reaches the workers, though they persist
    assert not torch.equal(ref[1], epoch_images(folder, 0, spec, epochs=(1,))[1])


def test_each_rank_makes_only_its_samples_and_the_same_images(folder, monkeypatch):
    spec = ViewSpec("rrc")
    pipe = ImagePipeline(folder, torch.device("cpu"), batch_size=4, seed=3, workers=0)
    make = pipe.view_maker(spec, seed=7, num_views=4)
    whole = {}
    for idx, (x, _) in pipe.made_batches(0, make):
        whole.update({int(i): x[k] for k, i in enumerate(idx)})
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        monkeypatch.setattr(dist, "rank", lambda r=rank: r)
        p = ImagePipeline(folder, torch.device("cpu"), batch_size=4, seed=3, workers=2)
        m = p.view_maker(spec, seed=7, num_views=4)
        for idx, (x, _) in p.made_batches(0, m):
            seen += idx.tolist()
            for k, i in enumerate(idx.tolist()):
                assert torch.equal(x[k], whole[i]) if i in whole else True
    assert sorted(set(seen)) == list(range(len(folder.train)))


def test_student_batches_through_workers_equal_store_batches(folder):
    spec = ViewSpec("rrc")
    batches = StoreBatches(None, folder.train, aug=False, spec=spec, num_classes=2, seed=1)
    pipe = ImagePipeline(folder, torch.device("cpu"), batch_size=6, seed=1, workers=2)
    make = functools.partial(batches.images, uint8_ok=True)
    for idx, images in pipe.made_batches(2, make):
        x, inp = batches.batch(idx, 2, images)
        x0, inp0 = batches.batch(idx, 2)
        assert torch.equal(x, x0) and torch.equal(inp.hard, inp0.hard)


def test_a_corrupt_file_in_a_worker_is_one_line_naming_it(tmp_path):
    root = make_folder(tmp_path / "d")
    bundle = load_dataset(f"folder:{root}", image_size=16)
    bad = bundle.train.root / bundle.train.paths[5]
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated JPEG in the middle of the folder
    pipe = ImagePipeline(bundle, torch.device("cpu"), batch_size=4, seed=0, workers=2)
    with pytest.raises(LabelenhError) as e:
        for _ in pipe.made_batches(0, pipe.view_maker(ViewSpec("crop-flip", pad=2), 0, 1)):
            pass
    assert "\n" not in str(e.value) and bundle.train.paths[5] in str(e.value)


def test_float_images_travel_exactly():
    """Mixup blends are not whole grey levels: they must come back as float, unchanged."""
    def make(idx, epoch):
        g = torch.Generator().manual_seed(int(idx[0]) + 100 * epoch)
        return (torch.rand(len(idx), 3, 4, 4, generator=g) * 255, idx.clone())

    loader = BatchLoader(make, 1)
    batches = list(torch.arange(12).split(4))
    for (x, i), idx in zip(loader.run(1, batches), batches, strict=True):
        assert torch.equal(x, make(idx, 1)[0]) and torch.equal(i, idx)


@pytest.mark.parametrize("bad", [-1, 1.5, 10**6])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(LabelenhError, match="--workers"):
        resolve_workers(bad)
    assert resolve_workers(None) >= 1


@pytest.mark.parametrize("command", ["teach", "student"])
def test_negative_workers_on_the_command_line_is_one_line(command, tmp_path):
    from clitools import assert_one_line_error, run_cli

    r = run_cli(command, "--dataset", "synthetic:10:20", "--image-size", "16", "--epochs", "1",
                "--device", "cpu", "--workers", "-1", "--runs-dir", tmp_path)
    assert r.code == 2
    assert_one_line_error(r, "--workers")
    assert not any(tmp_path.iterdir())


def test_student_aug_rrc_replays_the_exported_views_through_workers(tmp_path):
    """An rrc export of a JPEG folder, then the student's first batch (2 loader workers) shows
    exactly the images the teacher saw in the export, with their stored logits."""
    from concurrent.futures import ThreadPoolExecutor

    from tinynet import TinyNet

    from labelenh.data.decoded import ChunkImages
    from labelenh.engine import TrainConfig
    from labelenh.store import SoftLabelStore
    from labelenh.store.export import export_soft_labels, teacher_from_model
    from labelenh.student import StudentSettings, build_task
    from labelenh.teach import DataSettings
    from labelenh.views import gather_and_apply

    root = make_folder(tmp_path / "d")
    data = DataSettings(dataset=f"folder:{root}", image_size=16)
    bundle = data.load()
    path = tmp_path / "rrc.h5"
    export_soft_labels(path, [teacher_from_model(TinyNet(3, num_classes=2), "t")], bundle.train,
                       dataset=bundle.name, num_classes=2, mean=bundle.mean, std=bundle.std, num_views=3,
                       spec=ViewSpec("rrc"), view_seed=4, chunk_size=8)
    s = StudentSettings(model="resnet8", method="sl", store=str(path), aug="rrc", data=data,
                        train=TrainConfig(epochs=2, batch_size=6, milestones=[1]), device="cpu", workers=2)
    task = build_task(s, torch.device("cpu"))
    store = SoftLabelStore.open(path)
    for epoch in (0, 1):
        batch = next(iter(task.train_batches(epoch)))
        idx = task.pipe.epoch_batches(epoch)[0]
        views = task.batches.views(idx, epoch)
        with ThreadPoolExecutor(2) as pool:  # the export's path: one decode per file of a chunk
            x, _ = gather_and_apply(ChunkImages(bundle.train, idx.tolist(), pool), store.recipes(idx, views), 2)
        assert torch.equal(batch.x, task.pipe.normalize(x))
        assert torch.equal(batch.inputs.teacher_logits, store.view_logits(idx, views))


def test_a_teacher_trains_bit_identically_with_0_and_2_workers(tmp_path):
    from clitools import run_cli

    root = make_folder(tmp_path / "d")
    weights = []
    for w in (0, 2):
        r = run_cli("teach", "--dataset", f"folder:{root}", "--image-size", "16", "--model", "resnet8",
                    "--aug", "rrc", "--epochs", "2", "--batch-size", "6", "--milestones", "1", "--device", "cpu",
                    "--workers", str(w), "--name", f"w{w}", "--runs-dir", tmp_path / "runs")
        assert r.code == 0, r.err
        weights.append(torch.load(tmp_path / "runs" / f"w{w}" / "checkpoint.pt", weights_only=False)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_evaluation_batches_of_a_folder_are_the_same_through_workers(folder):
    def batches(w):
        pipe = ImagePipeline(folder, torch.device("cpu"), batch_size=4, eval_batch_size=5, seed=0, workers=w)
        return [t for pair in pipe.eval_batches("test") for t in pair]

    ref, got = batches(0), batches(2)
    assert len(ref) == len(got) == 2 * -(-len(folder.test) // 5)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_teacher_with_0_and_2_workers(tmp_path):
    """Under torchrun (2 CPU ranks, gloo) each rank renders its own samples in its own loader
    workers: the trained weights do not depend on the number of workers."""
    from test_distributed import torchrun

    root = make_folder(tmp_path / "d")
    weights = []
    for w in (0, 2):
        r = torchrun("teach", "--dataset", f"folder:{root}", "--image-size", "16", "--model", "resnet8",
                     "--aug", "rrc", "--epochs", "1", "--batch-size", "4", "--milestones", "1", "--device", "cpu",
                     "--workers", w, "--name", f"w{w}", "--runs-dir", tmp_path / "runs", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        weights.append(torch.load(tmp_path / "runs" / f"w{w}" / "checkpoint.pt", weights_only=False)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _marking_make(folder):
    """A picklable-by-fork make that leaves a file per job it made: which jobs a worker ran."""
    def make(idx, epoch):
        (folder / f"e{epoch}-i{int(idx[0])}").touch()
        g = torch.Generator().manual_seed(int(idx[0]) + 1000 * epoch)
        return (torch.randint(0, 256, (len(idx), 3, 4, 4), generator=g).float(), idx.clone())
    return make


def _epoch(e: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(e)
    return list(torch.randperm(24, generator=g).split(4))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_next_epoch_queued_ahead_gives_the_same_batches(tmp_path, workers):
    """Passes that run on into the next epoch, passes that start afresh (a repeated epoch, an
    abandoned pass), and a new loader per epoch all give the same batches."""
    make = _marking_make(tmp_path)
    loader = BatchLoader(make, workers)
    want = {e: [make(idx, e) for idx in _epoch(e)] for e in range(4)}

    def check(got, e):
        assert len(got) == len(want[e])
        for (x, i), (wx, wi) in zip(got, want[e], strict=True):
            assert torch.equal(x, wx) and torch.equal(i, wi)

    check(list(loader.run(0, _epoch(0), upcoming=(1, _epoch(1)))), 0)
    check(list(loader.run(1, _epoch(1), upcoming=(2, _epoch(2)))), 1)  # continues
    check(list(loader.run(1, _epoch(1), upcoming=(2, _epoch(2)))), 1)  # not what was queued: afresh
    part = loader.run(2, _epoch(2), upcoming=(3, _epoch(3)))
    next(part)  # abandoned after one batch
    part.close()
    check(list(loader.run(2, _epoch(2), upcoming=(3, _epoch(3)))), 2)
    check(list(loader.run(3, _epoch(3))), 3)
    check(list(BatchLoader(make, workers).run(3, _epoch(3))), 3)


def test_workers_start_on_the_next_epoch_before_it_is_asked_for(tmp_path):
    import time

    loader = BatchLoader(_marking_make(tmp_path), 1)
    for _ in loader.run(0, _epoch(0), upcoming=(1, _epoch(1))):
        pass
    first = tmp_path / f"e1-i{int(_epoch(1)[0][0])}"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the worker did not start on epoch 1 while the main process was elsewhere"
