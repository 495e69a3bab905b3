"""A tiny, learnable, deterministic dataset for tests and smoke runs.

Each class has its own colour (evenly spaced hues) and stripe pattern (orientation and
period); every sample adds a random pattern phase, a colour shift and pixel noise. A small
CNN separates the classes within an epoch or two, yet no two images are equal.

Generation runs in float64 on the CPU: float32 kernels differ by an ulp between CPU vector
units, which could flip a rounded pixel and with it the dataset fingerprint across machines.
"""

from __future__ import annotations

import colorsys
import functools
import math

import torch

SYNTHETIC_SEED = 20240601  # fixed: "synthetic" must mean the same images everywhere


def _class_colours(k: int) -> torch.Tensor:
    """[K, 3] RGB in 0..255: evenly spaced hues at saturation 0.75, value 0.85."""
    rgb = [colorsys.hsv_to_rgb(i / k, 0.75, 0.85) for i in range(k)]
    return torch.tensor(rgb, dtype=torch.float64) * 255.0


def _pattern(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """[N, 1, S, S] in [-1, 1]: per-class stripes (4 orientations x 2 periods), random phase."""
    n = labels.shape[0]
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    orient = labels % 4
    period = torch.where((labels // 4) % 2 == 0, 4.0, 8.0).to(torch.float64).view(n, 1, 1)
    phase = torch.rand(n, 1, 1, generator=gen, dtype=torch.float64) * 2 * math.pi
    coords = torch.stack([yy, xx, yy + xx, yy - xx])  # [4, S, S]: rows, columns, two diagonals
    t = coords[orient]  # [N, S, S]
    return torch.sin(2 * math.pi * t / period + phase).unsqueeze(1)


def make_synthetic(
    num_classes: int = 10, image_size: int = 32, per_class: int = 50, seed: int = SYNTHETIC_SEED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train uint8 [K*n, 3, S, S], y_train, x_test uint8 [K*max(1, n//5), ...], y_test).

    Classes are exactly balanced; rows come in a seeded random order. Results are cached (tests
    load this dataset often) and returned as fresh copies, so callers may modify them.
    """
    return tuple(t.clone() for t in _make_synthetic(num_classes, image_size, per_class, seed))


@functools.lru_cache(maxsize=8)
def _make_synthetic(
    num_classes: int = 10, image_size: int = 32, per_class: int = 50, seed: int = SYNTHETIC_SEED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    colours = _class_colours(num_classes)  # [K, 3]

    def split(n_per_class: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(split_seed)
        labels = torch.arange(num_classes).repeat_interleave(n_per_class)
        labels = labels[torch.randperm(labels.shape[0], generator=gen)]  # [N]
        n = labels.shape[0]
        base = colours[labels].view(n, 3, 1, 1)
        shift = torch.randn(n, 3, 1, 1, generator=gen, dtype=torch.float64) * 12.0
        stripes = _pattern(labels, image_size, gen) * 40.0
        noise = torch.randn(n, 3, image_size, image_size, generator=gen, dtype=torch.float64) * 20.0
        x = (base + shift + stripes + noise).round().clamp(0, 255).to(torch.uint8)
        return x, labels

    x_train, y_train = split(per_class, seed)
    x_test, y_test = split(max(1, per_class // 5), seed + 1)
    return x_train, y_train, x_test, y_test
