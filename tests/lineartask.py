"""A fixed sequence of batches for a linear model: what the engine does to it can be redone by
hand (EMA, gradient clipping)."""

from __future__ import annotations

import torch
from torch import nn

from labelenh.engine import Batch


class LinearTask:
    """`batches` batches of 32 samples of 4 features (times `scale`), 3 classes; one eval split."""

    eval_splits = ("test",)

    def __init__(self, batches: int = 3, scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.steps_per_epoch = batches
        self.x = scale * torch.randn(32 * batches, 4, generator=g)
        self.y = torch.randint(0, 3, (32 * batches,), generator=g)

    def train_batches(self, epoch):
        for i in range(self.steps_per_epoch):
            sl = slice(32 * i, 32 * (i + 1))
            yield Batch(x=self.x[sl], labels=self.y[sl])

    def loss(self, model, batch):
        logits = model(batch.x)
        return logits, {"ce": nn.functional.cross_entropy(logits, batch.labels)}

    def eval_batches(self, split, shard=(0, 1)):
        return [(self.x, self.y)]

    def epoch_end(self, epoch):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
