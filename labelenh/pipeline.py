"""Batches for the engine: seeded per-epoch order, views applied batched on the device, clean
normalised evaluation batches. Shared by the teacher and the student stages."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelenh import distributed as dist
from labelenh.data import DatasetBundle, ImageSource, TensorImages, normalize
from labelenh.errors import LabelenhError
from labelenh.utils import generator
from labelenh.views import Recipes, ViewSpec, gather_and_apply, sample_views


class ImagePipeline:
    """Holds a dataset bundle near the model: CIFAR-size in-memory datasets move to the training
    device once as uint8 (the cifar10-airbench layout), so augmentation and normalisation run
    batched there instead of per image in loader workers."""

    def __init__(
        self,
        bundle: DatasetBundle,
        device: torch.device,
        *,
        batch_size: int,
        eval_batch_size: int = 500,
        seed: int = 0,
    ) -> None:
        self.bundle = bundle
        self.device = device
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.train = _on_device(bundle.train, device)
        self.splits: dict[str, ImageSource] = {"test": _on_device(bundle.test, device)}
        if bundle.val is not None:
            self.splits["val"] = _on_device(bundle.val, device)
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        n = len(self.train)
        if n < 2:
            raise LabelenhError(f"dataset {bundle.name} has {n} training samples; need at least 2")

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def image_size(self) -> tuple[int, int]:
        _, h, w = self.train.image_shape
        return (h, w)

    def eval_splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("val", "test") if s in self.splits)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # x: float [B, C, H, W] in 0..255
        return normalize(x, self.mean, self.std)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's index batches for an epoch: a permutation drawn from (seed, epoch) only,
        split across ranks like DistributedSampler (padded by wrapping so ranks step together)."""
        n = self.num_train
        perm = torch.randperm(n, generator=generator(self.seed, "order", epoch))
        world, rank = dist.world_size(), dist.rank()
        if world > 1:
            per_rank = -(-n // world)
            reps = -(-per_rank * world // n)
            perm = perm.repeat(reps)[: per_rank * world][rank::world]
        batches = list(perm.split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # a batch of one breaks BatchNorm in train mode
        return batches

    def steps_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def apply(self, recipes: Recipes) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images [B, C, H, W], hard-label weights [B, K]) for a batch of recipes."""
        x, w = gather_and_apply(self.train, recipes, self.bundle.num_classes)
        return self.normalize(x.to(self.device)), w.to(self.device)

    def views_for(self, idx: torch.Tensor, spec: ViewSpec, seed: int, view: int, num_views: int) -> Recipes:
        return sample_views(
            self.num_train, num_views, spec, seed, self.image_size,
            samples=idx, views=torch.tensor([view]), source=self.train,
        )

    def eval_batches(self, split: str, shard: tuple[int, int] = (0, 1)
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Clean normalised (x [B, C, H, W], y [B]) batches of a split, in order.

        shard=(rank, world): only that rank's contiguous block of the same batches (the blocks
        of ranks 0..world-1 concatenate to the whole split). Batches keep the single-process
        composition and shape, so each logit is computed exactly as in one process."""
        src = self.splits[split]
        n = len(src)
        rank, world = shard
        if not 0 <= rank < world:
            raise LabelenhError(f"eval shard {rank} of {world} does not exist")
        starts = range(0, n, self.eval_batch_size)
        per_rank = -(-len(starts) // world)
        for start in starts[rank * per_rank:(rank + 1) * per_rank]:
            idx = torch.arange(start, min(start + self.eval_batch_size, n))
            x = src.load(idx).to(self.device, non_blocking=True).float()
            yield self.normalize(x), src.labels[idx.to(src.labels.device)].to(self.device)


def _on_device(src: ImageSource, device: torch.device) -> ImageSource:
    if isinstance(src, TensorImages):
        return src.to(device)
    return src
