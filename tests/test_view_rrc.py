"""`rrc`: boxes equal torchvision's `RandomResizedCrop.get_params` given the same draws, the
rendered crop equals torchvision's `resized_crop` within interpolation rounding (1 grey level),
rrc composes as the base of the mixing ops, and image folders are cropped from their original
files (through a store too)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from tinynet import TinyNet
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import transforms as tv_transforms

from labelenh.data import TensorImages
from labelenh.errors import LabelenhError
from labelenh.store import SoftLabelStore, StoreBatches, export_soft_labels, teacher_from_model
from labelenh.views import (
    ViewSpec,
    apply_views,
    from_draws,
    gather_and_apply,
    recipe_dtype,
    sample_views,
)
from labelenh.views.ops.rrc import TRIES, get_params, log_ratio_bounds

H, W, N, K = 24, 40, 30, 5
GEN = torch.Generator().manual_seed(0)
IMAGES = torch.randint(0, 256, (N, 3, H, W), dtype=torch.uint8, generator=GEN)
SOURCE = TensorImages(IMAGES, torch.randint(0, K, (N,), generator=GEN))


class _Draws:
    """Stands in for `torch` inside torchvision's transforms module: `empty(1).uniform_(a, b)`
    and `randint(lo, hi, size)` return the given draws; everything else is torch's."""

    def __init__(self, area, logr, top_u, left_u) -> None:
        self.uniforms = [v for pair in zip(area, logr, strict=True) for v in pair]
        self.ints = [top_u, left_u]

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *_):
        def uniform_(lo, hi):
            return torch.tensor([self.uniforms.pop(0)], dtype=torch.float32)
        return types.SimpleNamespace(uniform_=uniform_)

    def randint(self, lo, hi, size):
        return torch.tensor([lo + int(np.floor(self.ints.pop(0) * (hi - lo)))])


@pytest.mark.parametrize("hw,scale,ratio", [
    ((24, 40), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((224, 224), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((10, 100), (0.5, 1.0), (3 / 4, 4 / 3)),   # a wide image: the fallback is frequent
    ((100, 10), (0.9, 1.0), (0.5, 2.0)),      # a tall one
    ((32, 32), (0.35, 0.35), (1.0, 1.0)),     # degenerate ranges
])
def test_boxes_equal_torchvision_get_params(hw, scale, ratio, monkeypatch):
    h, w = hw
    rng = np.random.default_rng(0)
    b = 300
    lr = log_ratio_bounds(ratio)
    area = (scale[0] + (scale[1] - scale[0]) * rng.random((b, TRIES))).astype(np.float32)
    logr = (lr[0] + (lr[1] - lr[0]) * rng.random((b, TRIES))).astype(np.float32)
    top_u, left_u = rng.random(b), rng.random(b)
    ours = get_params(h, w, scale, ratio, area, logr, top_u, left_u)
    img = torch.zeros(3, h, w)
    fallbacks = 0
    for i in range(b):
        draws = _Draws(area[i], logr[i], top_u[i], left_u[i])
        monkeypatch.setattr(tv_transforms, "torch", draws)
        theirs = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        monkeypatch.undo()
        assert tuple(int(v) for v in ours[i]) == tuple(theirs), i
        fallbacks += len(draws.uniforms) == 0 and len(draws.ints) == 2
    if hw == (10, 100):
        assert fallbacks > 0  # the centre-crop fallback was compared too


def test_sampled_boxes_follow_the_params():
    spec = ViewSpec("rrc", scale=(0.25, 0.5), ratio=(0.5, 2.0))
    rec = sample_views(2000, 1, spec, 0, (H, W))
    top, left, h, w = rec.crop_box[:, 0].unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    frac = (h * w).double() / (H * W)
    assert frac.min() > 0.2 and frac.max() < 0.56  # rounding widens the range a little
    assert abs(rec.flip.float().mean() - 0.5) < 0.05
    assert recipe_dtype(spec).itemsize <= 10


def test_rendered_crop_matches_torchvision_resized_crop():
    """Tolerance: at most 1 grey level per pixel (torchvision's uint8 kernel rounds fixed-point
    weights; ours are float32), and most pixels equal."""
    rec = sample_views(N, 4, ViewSpec("rrc", flip=False), 3, (H, W))
    x, wgt = gather_and_apply(SOURCE, rec, K)
    ref = torch.stack([
        TF.resized_crop(IMAGES[s], *[int(v) for v in box[0]], [H, W], antialias=True)
        for s, box in zip(rec.sample.tolist(), rec.crop_box, strict=True)
    ]).float()
    diff = (x - ref).abs()
    assert diff.max() <= 1
    assert (diff == 0).float().mean() > 0.95
    torch.testing.assert_close(wgt.sum(1), torch.ones(len(rec)))
    # the float pipeline of torchvision (no uint8 rounding inside) agrees as closely
    ref_f = torch.stack([
        TF.resized_crop(IMAGES[s].float(), *[int(v) for v in box[0]], [H, W], antialias=True)
        for s, box in zip(rec.sample.tolist(), rec.crop_box, strict=True)
    ]).round().clamp(0, 255)
    assert (x - ref_f).abs().max() <= 1


def test_flip_mirrors_the_crop():
    box = [[[2, 5, 12, 30]]]
    a = gather_and_apply(SOURCE, from_draws(ViewSpec("rrc"), (H, W), [7], crop_box=box, flip=[[False]]), K)[0]
    b = gather_and_apply(SOURCE, from_draws(ViewSpec("rrc"), (H, W), [7], crop_box=box, flip=[[True]]), K)[0]
    assert torch.equal(a.flip(-1), b)
    full = gather_and_apply(SOURCE, from_draws(ViewSpec("rrc"), (H, W), [7], crop_box=[[[0, 0, H, W]]]), K)[0]
    assert torch.equal(full[0], IMAGES[7].float())  # the whole image at its own size is itself


@pytest.mark.parametrize("op", ["mixup", "cutmix", "ricap"])
def test_rrc_is_the_base_of_the_mixing_ops(op):
    """Each source of a mixed view is its own rrc crop: with λ = 1 / an empty box / the full
    boundary, the view is the sample's rrc crop."""
    spec = ViewSpec(op, base="rrc")
    rec = sample_views(N, 2, spec, 1, (H, W))
    assert rec.crop_box.shape == (2 * N, spec.num_sources, 4)
    alone = from_draws(ViewSpec("rrc"), (H, W), rec.sample, crop_box=rec.crop_box[:, :1], flip=rec.flip[:, :1])
    neutral = {"mixup": {"lam": np.ones(len(rec))}, "cutmix": {"box": np.zeros((len(rec), 4))},
               "ricap": {"wh": np.tile([W, H], (len(rec), 1)), "offsets": np.zeros((len(rec), 4, 2))}}[op]
    kept = from_draws(spec, (H, W), rec.sample, partners=rec.partners, crop_box=rec.crop_box, flip=rec.flip,
                      **neutral)
    x_alone, w_alone = gather_and_apply(SOURCE, alone, K)
    x_kept, w_kept = gather_and_apply(SOURCE, kept, K)
    assert torch.equal(x_alone, x_kept) and torch.equal(w_alone, w_kept)
    assert recipe_dtype(spec).itemsize == recipe_dtype(ViewSpec(op)).itemsize + 6 * spec.num_sources  # 8 B box vs 2 B crop


@pytest.mark.parametrize("kw", [
    {"scale": (0.5, 0.1)}, {"scale": (0.0, 1.0)}, {"scale": (0.5, 1.5)}, {"ratio": (2.0, 1.0)},
    {"ratio": (0.0, 1.0)}, {"scale": "a,b"}, {"scale": (0.1,)}, {"flip": "maybe"},
])
def test_bad_rrc_options(kw):
    with pytest.raises(LabelenhError) as e:
        ViewSpec("rrc", **kw)
    assert "\n" not in str(e.value)


# ---- image folders: crops of the original files ------------------------------------------------

SIZES = [(37, 53), (64, 30), (20, 20), (100, 80), (45, 45), (30, 90)]  # (H, W) of the files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder whose files have different sizes, all larger or smaller than 16 px."""
    from PIL import Image

    from labelenh.data import load_dataset

    root = tmp_path_factory.mktemp("folder")
    g = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, (h, w) in enumerate(SIZES):
            d = root / split / f"c{k % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{k}.png")
    return load_dataset(f"folder:{root}", image_size=16)


def _original(train, i: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(train.root / train.paths[i]) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy())


def test_rrc_of_an_image_folder_crops_the_original_files(folder):
    train = folder.train
    n = len(train)
    rec = sample_views(n, 8, ViewSpec("rrc"), 2, (16, 16), source=train)
    sizes = train.original_sizes(rec.sample)
    top, left, h, w = rec.crop_box[:, 0].unbind(-1)
    assert (top + h <= torch.as_tensor(sizes[:, 0])).all() and (left + w <= torch.as_tensor(sizes[:, 1])).all()
    assert (h > 16).any() and (w > 16).any()  # boxes in file pixels, not in the 16 px decode
    # the boxes are what torchvision draws on each file's own size, given the same draws
    again = sample_views(n, 8, ViewSpec("rrc"), 2, tuple(SIZES[0]), source=train)
    assert torch.equal(again.crop_box, rec.crop_box)
    x, _ = gather_and_apply(train, rec, folder.num_classes)
    ref = torch.stack([
        TF.resized_crop(_original(train, int(s)), *[int(v) for v in box[0]], [16, 16], antialias=True)
        for s, box in zip(rec.sample, rec.crop_box, strict=True)
    ])
    ref = torch.where(rec.flip[:, 0].view(-1, 1, 1, 1), ref.flip(-1), ref).float()
    assert (x - ref).abs().max() <= 1
    # the 16 px decode cannot stand in for the files: refused, not silently wrong
    with pytest.raises(LabelenhError, match="larger"):
        src = train.load(rec.sources().reshape(-1)).view(len(rec), 1, 3, 16, 16)
        apply_views(src, rec, train.labels[rec.sources()], folder.num_classes)


def test_mixed_views_of_a_folder_crop_each_source_from_its_file(folder):
    train = folder.train
    spec = ViewSpec("cutmix", base="rrc")
    rec = sample_views(len(train), 4, spec, 3, (16, 16), source=train)
    for k in range(2):
        sizes = torch.as_tensor(train.original_sizes(rec.sources()[:, k]))
        box = rec.crop_box[:, k]
        assert (box[:, 0] + box[:, 2] <= sizes[:, 0]).all() and (box[:, 1] + box[:, 3] <= sizes[:, 1]).all()
    x, w = gather_and_apply(train, rec, folder.num_classes)
    x2, w2 = gather_and_apply(train, rec[torch.arange(len(rec)).flip(0)], folder.num_classes)
    assert torch.equal(x, x2.flip(0)) and torch.equal(w, w2.flip(0))
    torch.testing.assert_close(w.sum(1), torch.ones(len(rec)))


def test_a_store_of_folder_rrc_views_replays_the_crops(folder, tmp_path):
    train = folder.train
    path = tmp_path / "rrc.h5"
    res = export_soft_labels(path, [teacher_from_model(TinyNet(1, num_classes=2), "t")], train, dataset=folder.name,
                             num_classes=2, mean=folder.mean, std=folder.std, num_views=3,
                             spec=ViewSpec("mixup", base="rrc"), view_seed=1, chunk_size=4, verify=4)
    assert res.verify is not None  # the teachers re-run on re-rendered stored views agree
    store = SoftLabelStore.open(path)
    idx = torch.arange(len(train))
    want = sample_views(len(train), 3, ViewSpec("mixup", base="rrc"), 1, (16, 16), source=train)
    assert store.recipes(idx.repeat_interleave(3), torch.arange(3).repeat(len(train))).equal(want)
    batches = StoreBatches(path, train, aug=True, seed=0)
    x, _ = batches.batch(idx, 0)
    assert torch.equal(x.cpu(), gather_and_apply(train, store.recipes(idx, batches.views(idx, 0)), 2)[0])
