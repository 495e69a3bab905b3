"""`apply_views`: the one function that turns source images + recipes into view images and
mixed label weights. Export and student training both call it; nothing else mixes.

Batched on the tensors' device, no Python loop over samples; each op's module renders its own
views (`Op.render_base`, `Op.render`). Every output element depends on its own inputs only
(copies, per-pixel selects, elementwise blends materialised one by one), so results are
bit-identical however the recipes are batched.
"""

from __future__ import annotations

from typing import Protocol

import torch

from labelenh.errors import LabelenhError
from labelenh.views.ops import get_op
from labelenh.views.ops.base import Op
from labelenh.views.recipes import Recipes


class _Source(Protocol):
    labels: torch.Tensor

    def load(self, indices: torch.Tensor) -> torch.Tensor: ...


def _render(sources: torch.Tensor, r: Recipes) -> torch.Tensor:
    """float32 [B, C, H, W] view images (0..255): every source through the base op (or the op
    itself when it is one), then the op combines them."""
    spec = r.spec
    op = get_op(spec.op)
    if spec.base is not None:
        views = get_op(spec.base.op).render_base(spec.base, sources, r)
    elif op.is_base:
        views = op.render_base(spec, sources, r)
    else:
        views = sources
    return op.render(spec, views, r)


def _label_weights(r: Recipes, source_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 [B, K]: sum over sources of weight_s * onehot(label_s), one materialised add per
    source (S <= 4), so no reduction whose order could depend on the batch layout."""
    w = r.source_weights()  # [B, S]
    oh = torch.nn.functional.one_hot(source_labels, num_classes).to(torch.float32)  # [B, S, K]
    out = oh[:, 0] * w[:, 0:1]
    for s in range(1, w.shape[1]):
        out = out + oh[:, s] * w[:, s : s + 1]
    return out


def _check(sources: torch.Tensor, recipes: Recipes, source_labels: torch.Tensor, num_classes: int):
    if not isinstance(recipes, Recipes):
        raise LabelenhError(f"recipes must be Recipes, got {type(recipes).__name__}")
    S = recipes.spec.num_sources
    if sources.dtype != torch.uint8 or sources.dim() != 5:
        raise LabelenhError(f"sources must be uint8 [B, S, C, H, W], got {sources.dtype} {tuple(sources.shape)}")
    B, s, _, H, W = sources.shape
    if B != len(recipes) or s != S:
        raise LabelenhError(f"sources [B={B}, S={s}] do not match {len(recipes)} recipes with {S} sources")
    if (H, W) != tuple(recipes.image_size):
        raise LabelenhError(f"images are {H}x{W} but the recipes were drawn for {recipes.image_size}")
    if tuple(source_labels.shape) != (B, S):
        raise LabelenhError(f"source_labels must be [B, S] = [{B}, {S}], got {tuple(source_labels.shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LabelenhError(f"num_classes must be a positive integer, got {num_classes!r}")
    if source_labels.numel() and (int(source_labels.min()) < 0 or int(source_labels.max()) >= num_classes):
        raise LabelenhError(f"labels must lie in [0, {num_classes})")


def apply_views(
    sources: torch.Tensor, recipes: Recipes, source_labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the view images and their label weights.

    sources        uint8 [B, S, C, H, W]: the images named by `recipes.sources()`
    source_labels  int64 [B, S]: their labels
    returns        images float32 [B, C, H, W] in 0..255, weights float32 [B, num_classes]
                   (rows sum to 1 up to float rounding), on the sources' device.
    """
    _check(sources, recipes, source_labels, num_classes)
    device = sources.device
    r = recipes.to(device)
    source_labels = source_labels.to(device=device, dtype=torch.int64)
    return _render(sources.contiguous(), r), _label_weights(r, source_labels, num_classes)


def gather_and_apply(
    source: _Source, recipes: Recipes, num_classes: int, *, uint8_ok: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the recipes' source images from `source` (`.load(idx) -> uint8 [n, C, H, W]`,
    `.labels` int64 [N]) and apply them; returns what `apply_views` returns.

    A base op that can make its views from the source itself does so (rrc on an image folder
    crops the original files); stores holding several ops are rendered op by op.
    uint8_ok: the images may come back as uint8 (the same values) when the op only selects its
    base's views: a quarter of the bytes for loader workers to send, and no float pass."""
    if not isinstance(recipes, Recipes):
        raise LabelenhError(f"recipes must be Recipes, got {type(recipes).__name__}")
    parts = get_op(recipes.spec.op).split(recipes.spec, recipes)
    if len(parts) == 1 and parts[0][0] is None:
        return _gather_one(source, recipes, num_classes, uint8_ok)
    x = w = None
    for mask, r in parts:
        xg, wg = _gather_one(source, r, num_classes)
        if x is None:
            x = xg.new_empty((len(recipes), *xg.shape[1:]))
            w = wg.new_empty((len(recipes), num_classes))
        m = mask.to(xg.device)
        x[m], w[m] = xg, wg
    return x, w


def _gather_one(source: _Source, recipes: Recipes, num_classes: int,
                uint8_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    idx = recipes.sources()  # [B, S]
    B, S = idx.shape
    labels = source.labels[idx.reshape(-1).to(source.labels.device)].view(B, S)
    spec = recipes.spec
    base = spec.base if spec.base is not None else (spec if get_op(spec.op).is_base else None)
    views = get_op(base.op).render_from_source(base, source, recipes) if base is not None else None
    if views is None:
        imgs = source.load(idx.reshape(-1))  # [B*S, C, H, W]
        return apply_views(imgs.view(B, S, *imgs.shape[1:]), recipes, labels, num_classes)
    _check(views, recipes, labels, num_classes)
    r = recipes.to(views.device)
    labels = labels.to(device=views.device, dtype=torch.int64)
    op = get_op(spec.op)
    if uint8_ok and type(op).render is Op.render:  # the default render selects source 0: exact
        return views[:, 0], _label_weights(r, labels, num_classes)
    return op.render(spec, views, r), _label_weights(r, labels, num_classes)
