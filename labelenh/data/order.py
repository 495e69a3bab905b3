"""The order an epoch visits the training samples in, shared by the teacher and the student
stages (and by `StoreBatches` in users' own loops)."""

from __future__ import annotations

import torch

from labelenh.rng import generator


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True,
                  rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This rank's int64 index batches of an epoch over n samples: a permutation drawn from
    (seed, epoch) only (shuffle=False: 0..n-1), split across `world` ranks like
    DistributedSampler (padded by wrapping, so ranks step together). A trailing batch of one
    is dropped: it breaks BatchNorm in train mode."""
    perm = torch.randperm(n, generator=generator(seed, "order", epoch)) if shuffle else torch.arange(n)
    if world > 1:
        per_rank = -(-n // world)
        reps = -(-per_rank * world // n)
        perm = perm.repeat(reps)[: per_rank * world][rank::world]
    batches = list(perm.split(int(batch_size)))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches
