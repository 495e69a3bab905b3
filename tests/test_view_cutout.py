"""`cutout`: the reference code's square (DeVries & Taylor, `util/cutout.py`) on the base view,
given the same centre; the label is the sample's own; bad sizes are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelenh.data import TensorImages
from labelenh.errors import LabelenhError
from labelenh.views import ViewSpec, from_draws, gather_and_apply, sample_views

N, K, H, W = 40, 5, 12, 14
GEN = torch.Generator().manual_seed(0)
SOURCE = TensorImages(torch.randint(1, 256, (N, 3, H, W), dtype=torch.uint8, generator=GEN),
                      torch.randint(0, K, (N,), generator=GEN))


def reference_cutout(img: torch.Tensor, y: int, x: int, length: int) -> torch.Tensor:
    """DeVries & Taylor's Cutout.__call__ with n_holes = 1 and the centre given."""
    h, w = img.size(1), img.size(2)
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * torch.from_numpy(mask).expand_as(img)


@pytest.mark.parametrize("size", [1, 5, 16])
def test_cutout_matches_the_reference(size):
    spec = ViewSpec("cutout", size=size, pad=2)
    rec = sample_views(N, 3, spec, 4, (H, W))
    x, w = gather_and_apply(SOURCE, rec, K)
    base = from_draws(ViewSpec("crop-flip", pad=2), (H, W), rec.sample, crop=rec.crop, flip=rec.flip)
    xb, wb = gather_and_apply(SOURCE, base, K)
    ref = torch.stack([reference_cutout(img, int(c[0]), int(c[1]), size) for img, c in zip(xb, rec.centre, strict=True)])
    assert torch.equal(x, ref)
    assert torch.equal(w, wb)  # the sample's own label, weight 1
    assert (rec.centre[:, 0] < H).all() and (rec.centre[:, 1] < W).all()
    if size > 1:
        assert (x == 0).any()


def test_bad_cutout_size():
    for bad in (0, -3, 1.5):
        with pytest.raises(LabelenhError) as e:
            ViewSpec("cutout", size=bad)
        assert "\n" not in str(e.value)
