"""A tiny seeded teacher network for store tests: cheap, deterministic, batch-independent enough."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

C = 10


class TinyNet(nn.Module):
    """conv -> relu -> 2x2 pool -> linear; weights from a seeded generator."""

    def __init__(self, seed: int, num_classes: int = C) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 2).flatten(1))
