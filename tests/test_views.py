"""Views as replayable recipes: the counter-based samplers, recipe sampling (shard/order
invariance), replay (bit-identical across batchings), semantics against torchvision, timm and a
per-sample reference of the original RICAP/CutMix code, the compact HDF5 records, bad input,
the PNG grid and the `views show` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data.mixup import mixup_target

import labelenh
from labelenh.data import TensorImages
from labelenh.errors import LabelenhError
from labelenh.rng import CounterRNG
from labelenh.views import (
    OPS,
    Recipes,
    ViewSpec,
    apply_views,
    from_draws,
    gather_and_apply,
    get_op,
    recipe_dtype,
    sample_views,
)
from labelenh.viz import render_views_grid

N, K, H, W = 60, 7, 12, 10  # non-square, so a swapped axis shows
GEN = torch.Generator().manual_seed(0)
IMAGES = torch.randint(0, 256, (N, 3, H, W), dtype=torch.uint8, generator=GEN)
LABELS = torch.randint(0, K, (N,), generator=GEN)
SOURCE = TensorImages(IMAGES, LABELS)


def spec_for(op: str, **kw) -> ViewSpec:
    """`op` with these options where it (or its base) has them: one call serves every op."""
    return ViewSpec.build(op, {"pad": 3, **kw}, **get_op(op).example())


def apply_rec(rec: Recipes) -> tuple[torch.Tensor, torch.Tensor]:
    return gather_and_apply(SOURCE, rec, K)


# ---- the counter-based samplers -----------------------------------------------------------

RNG = CounterRNG(123, np.arange(100_000), 5)


@pytest.mark.parametrize("a", [0.3, 1.0, 2.0])
def test_beta_moments(a):
    x = RNG.beta(7, a, a)
    mean, var = 0.5, 1.0 / (4 * (2 * a + 1))  # Beta(a, a)
    assert ((x > 0) & (x <= 1)).all()
    assert abs(x.mean() - mean) < 0.006
    assert abs(x.var() - var) < 0.004


@pytest.mark.parametrize("a", [0.3, 2.5])
def test_gamma_moments(a):
    g = RNG.gamma(9, a)  # mean = var = a
    assert abs(g.mean() - a) / a < 0.02
    assert abs(g.var() - a) / a < 0.05


def _ks_uniform(u: np.ndarray) -> float:
    u = np.sort(u)
    n = len(u)
    return float(max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max()))


def test_uniform_ks_and_normal_moments():
    n = 100_000
    crit = 1.95 / np.sqrt(n)  # KS critical value at p = 0.001
    assert _ks_uniform(RNG.uniform(1)) < crit
    assert _ks_uniform(RNG.beta(3, 1.0, 1.0)) < crit  # Beta(1, 1) is uniform
    z = RNG.normal(2)
    assert abs(z.mean()) < 0.015 and abs(z.var() - 1) < 0.02
    # distinct streams / keys are uncorrelated
    assert abs(np.corrcoef(RNG.uniform(1), RNG.uniform(2))[0, 1]) < 0.015
    other = CounterRNG(124, np.arange(n), 5).uniform(1)
    assert abs(np.corrcoef(RNG.uniform(1), other)[0, 1]) < 0.015
    ints = RNG.integers(4, -3, 4)
    assert ints.min() == -3 and ints.max() == 3
    assert abs(np.bincount(ints + 3) / n - 1 / 7).max() < 0.01


def test_draws_depend_only_on_their_key():
    full = RNG.beta(11, 0.3, 0.3)
    part = CounterRNG(123, np.arange(100_000)[977:5000][::-1], 5).beta(11, 0.3, 0.3)
    assert np.array_equal(part, full[977:5000][::-1])


# ---- ViewSpec ------------------------------------------------------------------------------


@pytest.mark.parametrize("op,kw", [
    ("bogus", {}), ("mixup", {"mixup_alpha": 0}), ("mixup", {"mixup_alpha": -1.0}),
    ("cutmix", {"cutmix_beta": 0.0}), ("ricap", {"ricap_beta": -0.3}),
    ("ricap", {"ricap_beta": float("nan")}), ("cutmix", {"mix_prob": 1.5}),
    ("cutmix", {"mix_prob": -0.1}), ("crop-flip", {"pad": -1}), ("crop-flip", {"pad": 1.5}),
    ("crop-flip", {"pad": 200}), ("mixup", {"beta": 1.0}), ("none", {"pad": 1}),
    ("crop-flip", {"mix_prob": 0.5}), ("mixup", {"base": "mixup"}), ("mixup", {"base": "bogus"}),
])
def test_bad_spec(op, kw):
    with pytest.raises(LabelenhError) as e:
        ViewSpec.parse(op, **kw)
    assert "\n" not in str(e.value)


def test_spec_round_trip_and_sources():
    s = ViewSpec.parse("CutMix", cutmix_beta=0.5, mix_prob=0.25, pad=2, mixup_alpha=None)
    assert s.op == "cutmix" and s.beta == 0.5 and s.pad == 2
    assert s.to_dict() == {"op": "cutmix", "beta": 0.5, "mix_prob": 0.25,
                           "base": {"op": "crop-flip", "pad": 2, "flip": True}}
    assert ViewSpec.parse("mixup", alpha=0.2) == ViewSpec("mixup", mixup_alpha=0.2)  # schema-1 name
    assert ViewSpec().to_dict() == {"op": "crop-flip", "pad": 4, "flip": True}
    for op in OPS:
        spec = ViewSpec(op, **get_op(op).example())
        assert ViewSpec.from_dict(spec.to_dict()) == spec
        assert spec.num_sources == get_op(op).sources(spec) >= 1
        # a spec records its own op's options only: other ops' options never enter its identity
        own = {p.name for p in get_op(op).params} | ({"base"} if get_op(op).takes_base else set())
        assert set(spec.to_dict()) - {"op"} == own


def test_schema1_spec_dicts_are_read_as_meant():
    v1 = {"op": "mixup", "pad": 2, "flip": True, "mixup_alpha": 0.2, "cutmix_beta": 0.7,
          "mix_prob": 0.5, "ricap_beta": 0.3}
    s = ViewSpec.from_dict(v1)
    assert s == ViewSpec("mixup", alpha=0.2, mix_prob=0.5, pad=2)
    assert s.record() == v1  # what an identity recorded from it keeps
    none = ViewSpec.from_dict({**v1, "op": "none"})
    assert none == ViewSpec("none") and none.to_dict() == {"op": "none"}


# ---- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_shards_and_order_give_the_same_recipes(op):
    spec = spec_for(op, mix_prob=0.7)
    full = sample_views(N, 4, spec, 5, (H, W))  # sample-major [N * 4]
    assert len(full) == N * 4
    assert torch.equal(full.sample, torch.arange(N).repeat_interleave(4))
    assert torch.equal(full.view, torch.arange(4).repeat(N))
    # two ranks, different sample subsets, sampled in a scrambled order
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    for shard in (perm[: N // 3], perm[N // 3 :]):
        part = sample_views(N, 4, spec, 5, (H, W), samples=shard)
        rows = (shard[:, None] * 4 + torch.arange(4)).reshape(-1)
        assert part.equal(full[rows])
    # view subsets
    part = sample_views(N, 4, spec, 5, (H, W), views=torch.tensor([3, 1]))
    rows = (torch.arange(N)[:, None] * 4 + torch.tensor([3, 1])).reshape(-1)
    assert part.equal(full[rows])
    # another seed gives other recipes
    if get_op(op).augments:  # the clean image has nothing random
        other = sample_views(N, 4, spec, 6, (H, W))
        assert not other.equal(full)


@pytest.mark.parametrize("op", ["mixup", "cutmix", "ricap"])
def test_partners_span_the_whole_dataset(op):
    n = 10_000
    rec = sample_views(n, 2, spec_for(op), 0, (H, W), samples=torch.arange(50))
    p = rec.partners
    assert p.min() >= 0 and p.max() < n
    assert p.float().mean() > n / 4 and p.max() > n / 2  # not confined to the batch (0..49)
    assert torch.equal(rec.sources()[:, 0], rec.sample)


def test_sample_ranges_and_mix_prob():
    rec = sample_views(2000, 1, spec_for("cutmix", mix_prob=0.3, pad=2), 0, (H, W))
    assert rec.crop.min() == -2 and rec.crop.max() == 2
    assert abs(rec.flip.float().mean() - 0.5) < 0.05
    assert abs(rec.mixed.float().mean() - 0.3) < 0.05
    unmixed = ~rec.mixed
    assert torch.equal(rec.partners[unmixed, 0], rec.sample[unmixed])
    assert (rec.source_weights()[unmixed, 0] == 1).all()
    noflip = sample_views(100, 1, ViewSpec("crop-flip", flip=False, pad=0), 0, (H, W))
    assert not noflip.flip.any() and not noflip.crop.any()
    ric = sample_views(2000, 1, spec_for("ricap"), 0, (H, W))
    w, h = ric.wh[:, 0], ric.wh[:, 1]
    assert w.min() >= 0 and w.max() <= W and h.min() >= 0 and h.max() <= H
    # Beta(0.3, 0.3) piles up at the edges: many boundaries at 0 or the full side
    assert ((w == 0) | (w == W)).float().mean() > 0.2


@pytest.mark.parametrize("kw", [
    {"num_views": 0}, {"num_samples": 0}, {"samples": torch.tensor([0, N])},
    {"samples": torch.tensor([-1])}, {"views": torch.tensor([2])}, {"samples": torch.tensor([0.5])},
    {"image_size": (0, 4)}, {"seed": 1.5}, {"spec": "mixup"},
])
def test_bad_sampling_input(kw):
    args = {"num_samples": N, "num_views": 2, "spec": spec_for("mixup"), "seed": 0,
            "image_size": (H, W)}
    args.update(kw)
    with pytest.raises(LabelenhError):
        sample_views(**args)


# ---- replay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_replay_is_bit_identical_across_batchings(op):
    rec = sample_views(N, 3, spec_for(op, mix_prob=0.8), 11, (H, W))
    x7 = torch.cat([apply_rec(rec[i : i + 7])[0] for i in range(0, len(rec), 7)])
    w7 = torch.cat([apply_rec(rec[i : i + 7])[1] for i in range(0, len(rec), 7)])
    perm = torch.randperm(len(rec), generator=torch.Generator().manual_seed(2))
    xs, ws = [], []
    for i in range(0, len(rec), 64):
        x, w = apply_rec(rec[perm[i : i + 64]])
        xs.append(x)
        ws.append(w)
    inv = torch.argsort(perm)
    x64, w64 = torch.cat(xs)[inv], torch.cat(ws)[inv]
    assert torch.equal(x7, x64) and torch.equal(w7, w64)
    # and the stored form replays the same
    table = rec.to_struct().reshape(N, 3)
    back = Recipes.from_struct(table, rec.spec, (H, W))
    assert back.equal(rec)
    assert torch.equal(apply_rec(back)[0], x7)
    assert x7.dtype == torch.float32 and x7.shape == (N * 3, 3, H, W)
    assert x7.min() >= 0 and x7.max() <= 255


_OTHER_PROCESS = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
import test_views as t
out = {}
for op in t.OPS:
    rec = t.sample_views(t.N, 3, t.spec_for(op, mix_prob=0.8), 11, (t.H, t.W))
    x, w = t.apply_rec(rec[torch.randperm(len(rec), generator=torch.Generator().manual_seed(5))])
    out[op + "/records"], out[op + "/x"], out[op + "/w"] = rec.to_struct(), x.numpy(), w.numpy()
np.savez(sys.argv[1], **out)
"""


@pytest.fixture(scope="module")
def other_process(tmp_path_factory):
    """Every op's recipes drawn and rendered in a fresh Python process (in a scrambled order)."""
    path = tmp_path_factory.mktemp("proc") / "views.npz"
    tests_dir = str(Path(__file__).parent)
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(path), tests_dir], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(labelenh.__file__).parents[1]), tests_dir])})
    with np.load(path) as z:
        return dict(z)


@pytest.mark.parametrize("op", OPS)
def test_another_process_draws_and_renders_the_same(op, other_process):
    rec = sample_views(N, 3, spec_for(op, mix_prob=0.8), 11, (H, W))
    perm = torch.randperm(len(rec), generator=torch.Generator().manual_seed(5))
    x, w = apply_rec(rec)
    assert other_process[f"{op}/records"].tobytes() == rec.to_struct().tobytes()
    assert other_process[f"{op}/x"].tobytes() == x[perm].numpy().tobytes()
    assert other_process[f"{op}/w"].tobytes() == w[perm].numpy().tobytes()


@pytest.mark.parametrize("op", OPS)
def test_label_weights_sum_to_one(op):
    rec = sample_views(N, 4, spec_for(op, mix_prob=0.7), 2, (H, W))
    sw = rec.source_weights()
    assert sw.shape == (len(rec), rec.spec.num_sources) and (sw >= 0).all()
    torch.testing.assert_close(sw.sum(1), torch.ones(len(rec)), rtol=0, atol=1e-6)
    _, w = apply_rec(rec)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(len(rec)), rtol=0, atol=1e-6)


# ---- semantics -------------------------------------------------------------------------------


def _base_view(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """torchvision: RandomCrop(size, padding=pad) at offsets (pad+dy, pad+dx), then hflip."""
    x = TF.crop(TF.pad(img, [pad]), pad + dy, pad + dx, img.shape[1], img.shape[2])
    return TF.hflip(x) if flip else x


def test_crop_flip_matches_torchvision_and_none_is_identity():
    for pad in (0, 3, 11):  # 11 > W: whole-padding crops included
        rec = sample_views(N, 2, spec_for("crop-flip", pad=pad), 3, (H, W))
        x, w = apply_rec(rec)
        ref = torch.stack([
            _base_view(IMAGES[s], int(c[0, 0]), int(c[0, 1]), bool(f[0]), pad)
            for s, c, f in zip(rec.sample.tolist(), rec.crop, rec.flip, strict=True)
        ])
        assert torch.equal(x, ref.float())
        assert torch.equal(w, torch.eye(K)[LABELS[rec.sample]])
    rec = sample_views(N, 1, ViewSpec("none"), 0, (H, W))
    x, w = apply_rec(rec)
    assert torch.equal(x, IMAGES.float()) and torch.equal(w, torch.eye(K)[LABELS])


def _reference(rec: Recipes) -> torch.Tensor:
    """Per-sample re-implementation of the original code on explicit recipes: base views by
    torchvision, mixup blend, CutMix paste, RICAP crops concatenated (Takahashi)."""
    pad, out = rec.spec.pad, []
    for b in range(len(rec)):
        src = rec.sources()[b].tolist()
        base = [_base_view(IMAGES[s], int(rec.crop[b, k, 0]), int(rec.crop[b, k, 1]),
                           bool(rec.flip[b, k]), pad).float() for k, s in enumerate(src)]
        if rec.spec.op == "mixup":
            lam = rec.lam[b]
            out.append(base[0] * lam + base[1] * (1 - lam))
        elif rec.spec.op == "cutmix":
            y0, y1, x0, x1 = rec.box[b].tolist()
            x = base[0].clone()
            x[:, y0:y1, x0:x1] = base[1][:, y0:y1, x0:x1]
            out.append(x)
        else:
            w, h = rec.wh[b].tolist()
            ws, hs = [w, W - w, w, W - w], [h, h, H - h, H - h]
            crops = [base[k][:, oy : oy + hs[k], ox : ox + ws[k]]
                     for k, (oy, ox) in enumerate(rec.offsets[b].tolist())]
            out.append(torch.cat([torch.cat(crops[:2], 2), torch.cat(crops[2:], 2)], 1))
    return torch.stack(out)


@pytest.mark.parametrize("op", ["mixup", "cutmix", "ricap"])
def test_mixed_views_match_the_reference(op):
    rec = sample_views(N, 2, spec_for(op, mix_prob=0.8), 4, (H, W))
    x, w = apply_rec(rec)
    assert torch.equal(x, _reference(rec))
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(len(rec)), rtol=0, atol=1e-6)
    # label weights: per-source weights scattered onto the source labels
    sw = rec.source_weights()
    dense = torch.zeros(len(rec), K).index_put_(
        (torch.arange(len(rec))[:, None].expand_as(sw), LABELS[rec.sources()]), sw, accumulate=True)
    torch.testing.assert_close(w, dense, rtol=0, atol=1e-7)


def test_cutmix_lambda_is_box_area_and_ricap_weights_are_patch_areas():
    rec = sample_views(500, 1, spec_for("cutmix"), 0, (H, W))
    y0, y1, x0, x1 = rec.box.T
    area = ((y1 - y0) * (x1 - x0)).double()
    lam = rec.source_weights()[:, 0]
    torch.testing.assert_close(lam.double(), 1 - area / (H * W), rtol=0, atol=1e-7)
    assert (lam < 1).float().mean() > 0.5  # boxes are real
    cut = (y1 > y0) & (x1 > x0)
    assert (y0[cut] >= 0).all() and (y1[cut] <= H).all() and (x1[cut] <= W).all()
    # the CutMix reference's rounding: [c - cut//2, c + cut//2), so unclipped sides are even
    inner = (y0 > 0) & (y1 < H)
    assert inner.sum() > 50 and ((y1 - y0)[inner] % 2 == 0).all()
    rec = sample_views(500, 1, spec_for("ricap"), 0, (H, W))
    w, h = rec.wh.T
    areas = torch.stack([w * h, (W - w) * h, w * (H - h), (W - w) * (H - h)], 1)
    torch.testing.assert_close(rec.source_weights().double(), areas.double() / (H * W),
                               rtol=0, atol=1e-7)
    hk = torch.stack([h, h, H - h, H - h], 1)
    wk = torch.stack([w, W - w, w, W - w], 1)
    assert (rec.offsets[:, :, 0] <= H - hk).all() and (rec.offsets[:, :, 1] <= W - wk).all()


def _flipped_batch(op: str, lam: float, box=None) -> Recipes:
    """B = 8 recipes for samples 0..7 whose partner is the flipped batch (timm's convention),
    no crop, no flip, one lambda / box for the batch."""
    b = 8
    spec, partners = ViewSpec(op, pad=0, flip=False), torch.arange(b).flip(0)[:, None]
    if op == "mixup":
        return from_draws(spec, (H, W), torch.arange(b), partners=partners, lam=[lam] * b)
    return from_draws(spec, (H, W), torch.arange(b), partners=partners, box=[box] * b)


def test_targets_match_timm_mixup_target():
    y, x = LABELS[:8], IMAGES[:8].float()
    out, w = apply_rec(_flipped_batch("mixup", 0.3))
    torch.testing.assert_close(w, mixup_target(y, K, lam=0.3, smoothing=0.0), rtol=0, atol=1e-6)
    timm_x = x.clone().mul_(0.3).add_(x.flip(0).mul_(1.0 - 0.3))  # timm Mixup._mix_batch
    torch.testing.assert_close(out, timm_x, rtol=1e-6, atol=1e-4)
    # cutmix: timm pastes x.flip(0) into the box and corrects lambda to the box area
    yl, yh, xl, xh = 2, 9, 1, 6
    lam = 1 - (yh - yl) * (xh - xl) / (H * W)
    rec = _flipped_batch("cutmix", lam, (yl, yh, xl, xh))
    out, w = apply_rec(rec)
    timm_x = x.clone()
    timm_x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
    assert torch.equal(out, timm_x)
    torch.testing.assert_close(w, mixup_target(y, K, lam=lam, smoothing=0.0), rtol=0, atol=1e-6)


def test_lambda_one_and_unmixed_views_are_the_base_view():
    spec = spec_for("mixup")
    rec = sample_views(N, 1, spec, 8, (H, W))
    ones = from_draws(spec, (H, W), rec.sample, partners=rec.partners, lam=torch.ones(N),
                      crop=rec.crop, flip=rec.flip)
    base = from_draws(spec_for("crop-flip"), (H, W), rec.sample, crop=rec.crop[:, :1], flip=rec.flip[:, :1])
    x_mix, w_mix = apply_rec(ones)
    x_base, w_base = apply_rec(base)
    assert torch.equal(x_mix, x_base) and torch.equal(w_mix, w_base)
    # mix_prob = 0: every mix op gives the same image as the crop-flip view of the same seed
    crop_flip = apply_rec(sample_views(N, 1, spec_for("crop-flip"), 8, (H, W)))
    for op in ("mixup", "cutmix", "ricap"):
        x, w = apply_rec(sample_views(N, 1, spec_for(op, mix_prob=0.0), 8, (H, W)))
        assert torch.equal(x, crop_flip[0]) and torch.equal(w, crop_flip[1])


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
def test_cuda_replays_the_cpu_views(op):
    rec = sample_views(N, 3, spec_for(op, mix_prob=0.8), 11, (H, W))
    src, lab = IMAGES[rec.sources()], LABELS[rec.sources()]
    x, w = apply_views(src, rec, lab, K)
    xc, wc = apply_views(src.cuda(), rec, lab.cuda(), K)
    assert xc.is_cuda and torch.equal(xc.cpu(), x) and torch.equal(wc.cpu(), w)


# ---- records ---------------------------------------------------------------------------------


def test_record_sizes_and_hdf5_round_trip(tmp_path):
    # the schema-1 ops keep their record layout (BENCHMARKS.md lists every op's size)
    v1_sizes = {"none": 1, "crop-flip": 3, "mixup": 13, "cutmix": 17, "ricap": 41}
    assert {op: recipe_dtype(ViewSpec(op)).itemsize for op in v1_sizes} == v1_sizes
    path = tmp_path / "r.h5"
    recs = {op: sample_views(N, 2, spec_for(op, mix_prob=0.6), 1, (H, W)) for op in OPS}
    with h5py.File(path, "w") as f:
        for op, rec in recs.items():
            f.create_dataset(op, data=rec.to_struct().reshape(N, 2))
    with h5py.File(path, "r") as f:
        for op, rec in recs.items():
            arr = f[op][()]
            assert arr.dtype == recipe_dtype(rec.spec)
            assert Recipes.from_struct(arr, rec.spec, (H, W)).equal(rec)
            # rows read by (sample, view) as a store reader does
            s, v = torch.tensor([5, 0, 5]), torch.tensor([1, 0, 0])
            part = Recipes.from_struct(arr[s.numpy(), v.numpy()], rec.spec, (H, W), samples=s, views=v)
            assert part.equal(rec[s * 2 + v])


def test_bad_records():
    rec = sample_views(N, 1, spec_for("mixup"), 0, (H, W))
    arr = rec.to_struct()
    with pytest.raises(LabelenhError):
        Recipes.from_struct(arr, spec_for("cutmix"), (H, W), samples=rec.sample)
    with pytest.raises(LabelenhError):
        Recipes.from_struct(arr, rec.spec, (H, W))  # 1-D records need samples=
    with pytest.raises(LabelenhError):
        Recipes.from_struct(arr, rec.spec, (H, W), samples=rec.sample, num_samples=2)
    with pytest.raises(LabelenhError):
        rec.to_struct(spec_for("cutmix"))
    with pytest.raises(LabelenhError):  # crops larger than the spec's pad
        Recipes.from_struct(arr, spec_for("mixup", pad=1), (H, W), samples=rec.sample)
    ric = sample_views(N, 1, spec_for("ricap"), 0, (H, W)).to_struct()
    with pytest.raises(LabelenhError):  # records read for a smaller image
        Recipes.from_struct(ric, spec_for("ricap"), (H // 2, W // 2), samples=torch.arange(N))
    cut = sample_views(N, 1, spec_for("cutmix"), 0, (H, W)).to_struct()
    cut["box"][0] = (5, 2, 0, 1)
    with pytest.raises(LabelenhError):
        Recipes.from_struct(cut, spec_for("cutmix"), (H, W), samples=torch.arange(N))


def test_recipes_container():
    rec = sample_views(N, 2, spec_for("ricap"), 0, (H, W))
    assert len(rec) == 2 * N and rec.sources().shape == (2 * N, 4)
    assert len(rec[3]) == 1 and rec[3].equal(rec[3:4]) and rec[-1].equal(rec[2 * N - 1 :])
    mask = rec.sample % 2 == 0
    assert len(rec[mask]) == N
    assert Recipes.cat([rec[:10], rec[10:]]).equal(rec)
    with pytest.raises(LabelenhError):
        Recipes.cat([rec[:2], sample_views(N, 1, spec_for("mixup"), 0, (H, W))])


def test_bad_apply_input():
    rec = sample_views(N, 1, spec_for("cutmix"), 0, (H, W))[:4]
    src = IMAGES[rec.sources()]  # [4, 2, 3, H, W]
    lab = LABELS[rec.sources()]
    with pytest.raises(LabelenhError):
        apply_views(src[:, :1], rec, lab[:, :1], K)  # wrong S
    with pytest.raises(LabelenhError):
        apply_views(src.float(), rec, lab, K)
    with pytest.raises(LabelenhError):
        apply_views(src[:3], rec, lab[:3], K)
    with pytest.raises(LabelenhError):
        apply_views(src, rec, lab + K, K)
    with pytest.raises(LabelenhError):
        apply_views(src[..., :-1], rec, lab, K)  # other image size


# ---- picture and command -----------------------------------------------------------------------


def test_png_grid(tmp_path):
    rec = sample_views(N, 1, spec_for("ricap"), 0, (H, W), samples=torch.arange(5))
    x, w = apply_rec(rec)
    path = render_views_grid(x, w, [f"class{i}" for i in range(K)], tmp_path / "sub" / "g.png")
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 3 * W and im.size[1] >= 2 * H
    with pytest.raises(LabelenhError):
        render_views_grid(x, w, ["too", "few"], tmp_path / "x.png")


@pytest.mark.parametrize("op", OPS)
def test_cli_views_show(op, tmp_path, monkeypatch):
    from clitools import assert_one_line_error, run_cli

    from labelenh.cli import views as cli_views
    from labelenh.data import DatasetBundle

    bundle = DatasetBundle(name="tiny", num_classes=K, classes=[f"c{i}" for i in range(K)],
                           mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=2, train=SOURCE, val=None,
                           test=SOURCE)
    monkeypatch.setattr(cli_views, "_load_bundle", lambda dataset, root: bundle)
    out = tmp_path / "v.png"
    r = run_cli("views", "show", "--aug", get_op(op).example_aug(), "--n", "6", "--out", str(out))
    assert r.code == 0, r.err
    assert r.out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert_one_line_error(run_cli("views", "show", "--aug", "mixup", "--mix-prob", "2"), "mix_prob")


def test_cli_bad_aug_exits_2():
    r = subprocess.run([sys.executable, "-m", "labelenh", "views", "show", "--aug", "bogus"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "bogus" in lines[0] and "Traceback" not in r.stderr


# ---- the registry ------------------------------------------------------------------------------


def test_a_new_op_changes_no_existing_spec_or_record():
    """What made adding an op invalidate stores: specs and records of the other ops must not
    change when one registers."""
    from labelenh.views.ops import Op, Param, register_op
    from labelenh.views.ops import base as registry

    before = {op: (ViewSpec(op, **get_op(op).example()).to_dict(),
                   recipe_dtype(ViewSpec(op, **get_op(op).example()))) for op in OPS
              if not get_op(op).example()}  # (an example listing every op grows with them)

    class Dummy(Op):
        name = "dummy-test-op"
        summary = "a test op"
        params = (Param("strength", 0.5, "a new option"),)
        takes_base = True
        streams = range(10_000, 10_001)

    try:
        register_op(Dummy)
        after = {op: (ViewSpec(op, **get_op(op).example()).to_dict(),
                      recipe_dtype(ViewSpec(op, **get_op(op).example()))) for op in before}
        assert after == before
        assert ViewSpec("dummy-test-op", pad=1).to_dict() == {
            "op": "dummy-test-op", "strength": 0.5, "base": {"op": "crop-flip", "pad": 1, "flip": True}}
    finally:
        registry.OPS.pop("dummy-test-op", None)

    class Clash(Op):
        name = "clash-test-op"
        summary = "draws from crop-flip's streams"
        streams = range(16, 17)

    with pytest.raises(RuntimeError, match="share RNG streams"):
        register_op(Clash)
    assert "clash-test-op" not in OPS
