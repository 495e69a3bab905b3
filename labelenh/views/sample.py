"""`sample_views`: draw view recipes from (seed, sample, view) alone.

Every number of a recipe comes from `labelenh.rng.CounterRNG` keyed by (seed, sample, view) on
a fixed stream per quantity, so a recipe depends only on (seed, sample, view, spec, num_samples,
image_size) — never on which other recipes are drawn with it, their order, the batch size, the
number of loader workers or of ranks. The base crop/flip of source k uses the same streams for
every op, so e.g. a mixup view's own image is cropped exactly like the crop-flip view.

Semantics (image H x W, pad p):
- base: offsets dy, dx uniform in [-p, p] into the zero-padded image (torchvision
  RandomCrop(H, padding=p)); then a horizontal flip with probability 0.5 when spec.flip.
- mixup: one partner j, lam ~ Beta(alpha, alpha); x = lam * x_i + (1 - lam) * x_j.
- cutmix: one partner j, lam ~ Beta(beta, beta); r = sqrt(1 - lam); cut_h = int(H r),
  cut_w = int(W r); centre (cy, cx) uniform over the pixels; box rows
  [clip(cy - cut_h // 2), clip(cy + cut_h // 2)) and likewise for columns (the CutMix
  reference's rounding; timm uses (cut + 1) // 2 for the upper edge); lam = 1 - area / (H W).
- ricap (Takahashi's reference): w = round(W Beta(beta, beta)), h = round(H Beta(beta, beta))
  (round half to even, as np.round); patch sizes (w, h), (W-w, h), (w, H-h), (W-w, H-h) laid
  out top-left, top-right, bottom-left, bottom-right; patch k is cut from source k at an offset
  uniform in [0, W - w_k] x [0, H - h_k]. Source 0 is the sample itself (the reference draws a
  permutation for every patch; here the store keys rows by sample, so the sample contributes
  patch 0), sources 1..3 are partners. The reference names tensor dim 2 "x"; here w runs along
  the width. Label weights = patch areas / (H W).
- Partners are absolute indices uniform over [0, num_samples) (the sample itself included).
- With probability 1 - mix_prob a mix op does not mix: partners repeat the sample, lam = 1, the
  box is empty, the RICAP boundary is (W, H) with zero offsets — the base crop/flip of the sample.
"""

from __future__ import annotations

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.rng import CounterRNG
from labelenh.views.recipes import Recipes, cutmix_lam, ricap_areas
from labelenh.views.spec import ViewSpec

# Stream ids: one per drawn quantity; never reuse an id for another quantity.
_S_MIX = 1
_S_CROP = 16  # + 4 * source + {0: dy, 1: dx, 2: flip}
_S_PARTNER = 48  # + partner slot
_S_LAM = 64
_S_CUT_CY, _S_CUT_CX = 65, 66
_S_RICAP_W, _S_RICAP_H = 80, 81
_S_RICAP_OFF = 96  # + 2 * patch + {0: oy, 1: ox}
MAX_SAMPLES = 2**32  # partners are stored as uint32
MAX_SIDE = 2**16 - 1  # boxes and RICAP geometry are stored as uint16


def _index_arg(x, n: int, what: str) -> np.ndarray:
    """1-D int64 indices in [0, n), from a tensor / array / sequence (None -> arange(n))."""
    if x is None:
        return np.arange(n, dtype=np.int64)
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise LabelenhError(f"{what} must be a 1-D array of integer indices, got shape {a.shape} {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise LabelenhError(f"{what} index out of range: must lie in [0, {n}), got [{a.min()}, {a.max()}]")
    return a


def _check_sizes(num_samples: int, num_views: int, image_size) -> tuple[int, int]:
    if not isinstance(num_samples, (int, np.integer)) or not 1 <= num_samples <= MAX_SAMPLES:
        raise LabelenhError(f"num_samples must be an integer in [1, 2**32], got {num_samples!r}")
    if not isinstance(num_views, (int, np.integer)) or num_views < 1:
        raise LabelenhError(f"num_views must be an integer >= 1, got {num_views!r}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise LabelenhError(f"image_size must be (H, W), got {image_size!r}") from None
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise LabelenhError(f"image size must be within 1..{MAX_SIDE} per side, got {(h, w)}")
    return h, w


def sample_views(
    num_samples: int,
    num_views: int,
    spec: ViewSpec,
    seed: int,
    image_size: tuple[int, int],
    *,
    samples: torch.Tensor | np.ndarray | None = None,
    views: torch.Tensor | np.ndarray | None = None,
) -> Recipes:
    """Recipes for every pair of `samples` x `views` (defaults: all), flattened sample-major.

    Each recipe depends only on (seed, sample, view, spec, num_samples, image_size).
    Returns CPU tensors; `Recipes.to(device)` moves them.
    """
    if not isinstance(spec, ViewSpec):
        raise LabelenhError(f"spec must be a ViewSpec, got {type(spec).__name__}")
    if not isinstance(seed, (int, np.integer)):
        raise LabelenhError(f"seed must be an integer, got {seed!r}")
    H, W = _check_sizes(num_samples, num_views, image_size)
    smp = _index_arg(samples, num_samples, "samples")
    vws = _index_arg(views, num_views, "views")
    sample = np.repeat(smp, len(vws))  # [B] sample-major
    view = np.tile(vws, len(smp))  # [B]
    b, s, p = len(sample), spec.num_sources, spec.pad
    rng = CounterRNG(int(seed), sample, view)

    crop = np.zeros((b, s, 2), dtype=np.int64)
    flip = np.zeros((b, s), dtype=bool)
    if spec.op != "none":
        for k in range(s):
            crop[:, k, 0] = rng.integers(_S_CROP + 4 * k, -p, p + 1)
            crop[:, k, 1] = rng.integers(_S_CROP + 4 * k + 1, -p, p + 1)
            if spec.flip:
                flip[:, k] = rng.uniform(_S_CROP + 4 * k + 2) < 0.5

    mixed = np.zeros(b, dtype=bool)
    if spec.is_mix:
        mixed = rng.uniform(_S_MIX) < spec.mix_prob if spec.mix_prob < 1.0 else np.ones(b, bool)
    partners = np.stack(
        [rng.integers(_S_PARTNER + k, 0, num_samples) for k in range(s - 1)], axis=1
    ) if s > 1 else np.zeros((b, 0), dtype=np.int64)
    partners = np.where(mixed[:, None], partners, sample[:, None])  # unmixed: the sample again

    lam = np.ones(b, dtype=np.float32)
    box = np.zeros((b, 4), dtype=np.int64)
    wh = np.zeros((b, 2), dtype=np.int64)
    off = np.zeros((b, 4, 2), dtype=np.int64)
    if spec.op == "mixup":
        lam = np.where(mixed, rng.beta(_S_LAM, spec.mixup_alpha, spec.mixup_alpha), 1.0)
        lam = lam.astype(np.float32)
    elif spec.op == "cutmix":
        lam0 = rng.beta(_S_LAM, spec.cutmix_beta, spec.cutmix_beta)
        r = np.sqrt(1.0 - lam0)
        cut_h = np.floor(H * r).astype(np.int64)  # int() of a non-negative float
        cut_w = np.floor(W * r).astype(np.int64)
        cy = rng.integers(_S_CUT_CY, 0, H)
        cx = rng.integers(_S_CUT_CX, 0, W)
        box = np.stack([np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H),
                        np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)], axis=1)
        box = np.where(mixed[:, None], box, 0)
    elif spec.op == "ricap":
        w = np.rint(W * rng.beta(_S_RICAP_W, spec.ricap_beta, spec.ricap_beta)).astype(np.int64)
        h = np.rint(H * rng.beta(_S_RICAP_H, spec.ricap_beta, spec.ricap_beta)).astype(np.int64)
        w = np.where(mixed, w, W)
        h = np.where(mixed, h, H)
        wk = np.stack([w, W - w, w, W - w], axis=1)  # [B, 4] patch widths
        hk = np.stack([h, h, H - h, H - h], axis=1)  # [B, 4] patch heights
        for k in range(4):
            off[:, k, 0] = rng.integers(_S_RICAP_OFF + 2 * k, 0, H - hk[:, k] + 1)
            off[:, k, 1] = rng.integers(_S_RICAP_OFF + 2 * k + 1, 0, W - wk[:, k] + 1)
        wh = np.stack([w, h], axis=1)

    t = torch.from_numpy
    box_t, wh_t = t(box), t(wh)
    lam_t = t(np.ascontiguousarray(lam, dtype=np.float32))
    if spec.op == "cutmix":
        lam_t = cutmix_lam(box_t, (H, W))  # the same formula `from_struct` uses
    elif spec.op == "ricap":
        lam_t = ricap_areas(wh_t, (H, W))[:, 0].to(torch.float32) / float(H * W)
    return Recipes(spec=spec, image_size=(H, W), sample=t(sample), view=t(view),
                   mixed=t(mixed), crop=t(crop), flip=t(flip), partners=t(partners),
                   lam=lam_t, box=box_t, ricap_wh=wh_t, ricap_off=t(off))
