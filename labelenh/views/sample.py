"""`sample_views`: draw view recipes from (seed, sample, view) alone.

Every number of a recipe comes from `labelenh.rng.CounterRNG` keyed by (seed, sample, view) on
a fixed stream per quantity (each op declares the streams it uses; the registry refuses two ops
sharing one), so a recipe depends only on (seed, sample, view, spec, num_samples, image_size) —
never on which other recipes are drawn with it, their order, the batch size, the number of
loader workers or of ranks. A base op draws source k's transform from the same streams whatever
op it serves, so e.g. a mixup view's own image is cropped exactly like the crop-flip view.

What each op draws is documented in its module (`labelenh/views/ops/<op>.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.rng import CounterRNG
from labelenh.views.ops import Draw, get_op
from labelenh.views.recipes import Recipes
from labelenh.views.spec import ViewSpec

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
    source: Any = None,
) -> Recipes:
    """Recipes for every pair of `samples` x `views` (defaults: all), flattened sample-major.

    Each recipe depends only on (seed, sample, view, spec, num_samples, image_size) and, for
    ops that crop the original image (rrc) of a `source` whose files keep their own sizes (an
    image folder: `source.original_sizes`), on those sizes. Returns CPU tensors;
    `Recipes.to(device)` moves them.
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
    d = Draw(CounterRNG(int(seed), sample, view), sample, view, spec.num_sources, int(num_samples), (H, W),
             getattr(source, "original_sizes", None))
    data = draw_fields(spec, d)
    partners = data.pop("partners")
    return Recipes.from_fields(spec, (H, W), sample, view, partners, data)


def draw_fields(spec: ViewSpec, d: Draw) -> dict[str, np.ndarray]:
    """Every field of `spec`'s recipes for the elements of `d`, plus "partners" [B, S-1]."""
    data = get_op(spec.op).sample(spec, d)
    if spec.base is not None:
        d.partners = data.get("partners")  # the base transforms every source, partners included
        data.update(get_op(spec.base.op).sample(spec.base, d))
    data.setdefault("partners", np.zeros((d.size, 0), dtype=np.int64))
    return data
