"""`rrc`: boxes equal torchvision's `RandomResizedCrop.get_params` given the same draws, the
rendered crop equals torchvision's `resized_crop` within interpolation rounding, and rrc composes
as the base of the mixing ops."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import transforms as tv_transforms

from labelenh.data import TensorImages
from labelenh.errors import LabelenhError
from labelenh.views import ViewSpec, from_draws, gather_and_apply, recipe_dtype, sample_views
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
