"""Pictures of views: a PNG grid of images, each captioned with its top label weights.

Pillow only (it comes with torchvision), so no plotting extra is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from labelenh.errors import LabelenhError
from labelenh.files import atomic_write


def _to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[n, C, H, W] uint8 or float in 0..255 -> uint8 [n, H, W, 3]."""
    x = images.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.to(torch.float32).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise LabelenhError(f"can draw 1- or 3-channel images, got {x.shape[1]} channels")
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def _captions(weights: torch.Tensor, class_names: Sequence[str], top: int,
              titles: Sequence[str] | None) -> list[list[str]]:
    """Each view's caption lines: its title, then its `top` largest label weights (the first
    always, the others when above 0)."""
    wts = weights.detach().cpu().to(torch.float32)
    vals, idx = wts.topk(min(top, wts.shape[1]), dim=1)
    captions = []
    for i in range(wts.shape[0]):
        lines = [titles[i]] if titles else []
        lines += [f"{class_names[int(c)]} {float(v):.2f}"
                  for j, (v, c) in enumerate(zip(vals[i], idx[i], strict=True)) if j == 0 or float(v) > 0]
        captions.append(lines)
    return captions


def render_views_grid(
    images: torch.Tensor,
    weights: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    *,
    top: int = 2,
    scale: int | None = None,
    cols: int | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid of `images` [n, C, H, W] (uint8, or float in 0..255) with each view's
    `top` largest label weights (`weights` [n, K]) as its caption; returns the path.

    scale  integer upscaling of each image (default: to about 96 pixels wide, nearest neighbour)
    cols   grid columns (default: about square)
    titles optional first caption line per image (e.g. "#123 v0")
    """
    if images.ndim != 4 or weights.ndim != 2 or images.shape[0] != weights.shape[0]:
        raise LabelenhError(
            f"need images [n, C, H, W] and weights [n, K], got {tuple(images.shape)} and {tuple(weights.shape)}"
        )
    n, _, h, w = images.shape
    if n == 0:
        raise LabelenhError("no images to draw")
    if weights.shape[1] != len(class_names):
        raise LabelenhError(f"{weights.shape[1]} label weights per view but {len(class_names)} class names")
    pix = _to_uint8_hwc(images)
    scale = scale or max(1, round(96 / max(h, w)))
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    font = ImageFont.load_default()
    captions = _captions(weights, class_names, top, titles)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(measure.textlength(t, font=font) for lines in captions for t in lines)
    line_h = 12
    max_lines = max(len(lines) for lines in captions)
    cell_w = int(max(w * scale, text_w)) + 8
    cell_h = h * scale + 6 + max_lines * line_h + 4
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x0, y0 = (i % cols) * cell_w + 4, (i // cols) * cell_h + 3
        tile = Image.fromarray(pix[i]).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile, (x0, y0))
        for j, text in enumerate(captions[i]):
            draw.text((x0, y0 + h * scale + 2 + j * line_h), text, fill=(0, 0, 0), font=font)
    return atomic_write(Path(path), lambda p: sheet.save(p, format="PNG"))
