"""Batches for the engine: seeded per-epoch order, views applied batched on the device (in
memory) or in loader workers (image folders), clean normalised evaluation batches. Shared by
the teacher and the student stages."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelenh import distributed as dist
from labelenh.data import DatasetBundle, ImageSource, TensorImages, normalize
from labelenh.data.loader import BatchLoader, MakeBatch, as_float_images, resolve_workers
from labelenh.data.order import epoch_batches
from labelenh.errors import LabelenhError
from labelenh.views import ViewSpec, gather_and_apply, sample_views


class ImagePipeline:
    """Holds a dataset bundle near the model: CIFAR-size in-memory datasets move to the training
    device once as uint8 (the cifar10-airbench layout), so augmentation and normalisation run
    batched there instead of per image in loader workers. Image folders cannot: their batches
    are decoded and rendered in `workers` persistent loader processes (`made_batches`)."""

    def __init__(
        self,
        bundle: DatasetBundle,
        device: torch.device,
        *,
        batch_size: int,
        eval_batch_size: int = 500,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.workers = resolve_workers(workers)  # checked before any data is touched
        self._loaders: dict[int, tuple[MakeBatch, BatchLoader]] = {}
        self._makers: dict[str, MakeBatch] = {}  # the evaluation splits' (one loader each)
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
        return epoch_batches(self.num_train, self.batch_size, self.seed, epoch,
                             rank=dist.rank(), world=dist.world_size())

    def made_batches(self, epoch: int, make: MakeBatch
                     ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """(indices [B], make(indices, epoch) on the device) for this rank's batches of an epoch.

        In-memory splits call `make` here, on the device; lazy sources (image folders) run it in
        `workers` loader processes, one batch per item, the next batches prefetched while the
        model steps. `make` draws everything from (seed, epoch, sample), so both give the same
        tensors. One loader per `make` (its workers persist across epochs)."""
        batches = self.epoch_batches(epoch)
        if isinstance(self.train, TensorImages):
            for idx in batches:
                yield idx, as_float_images(make(idx, epoch))
            return
        # the workers go on to the next epoch's batches while this one ends
        made = self._run(make, epoch, batches, upcoming=(epoch + 1, self.epoch_batches(epoch + 1)))
        for idx, out in zip(batches, made, strict=True):
            yield idx, tuple(t.to(self.device, non_blocking=True) for t in out)

    def _run(self, make: MakeBatch, epoch: int, batches: list[torch.Tensor],
             upcoming: tuple[int, list[torch.Tensor]] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        if id(make) not in self._loaders:  # `make` kept alongside, so its id stays its own
            pin = self.device.type == "cuda"
            self._loaders[id(make)] = (make, BatchLoader(make, self.workers, pin_memory=pin))
        return self._loaders[id(make)][1].run(epoch, batches, upcoming)

    def steps_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def view_maker(self, spec: ViewSpec, seed: int, num_views: int) -> MakeBatch:
        """make(indices, epoch) -> (images 0..255 [B, C, H, W], label weights [B, K]): each
        sample's view `epoch` of `num_views` drawn from `seed` (for `made_batches`)."""
        return _EpochViews(self.train, spec, seed, num_views, self.image_size, self.bundle.num_classes)

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
        batches = [torch.arange(s, min(s + self.eval_batch_size, n))
                   for s in starts[rank * per_rank:(rank + 1) * per_rank]]
        if isinstance(src, TensorImages):
            made = ((src.load(idx),) for idx in batches)
        else:  # image folders decode in the loader workers, as for training
            key = f"eval:{split}"
            if key not in self._makers:
                self._makers[key] = _Clean(src)
            made = self._run(self._makers[key], 0, batches)
        for idx, (x,) in zip(batches, made, strict=True):
            x = x.to(self.device, non_blocking=True).float()
            yield self.normalize(x), src.labels[idx.to(src.labels.device)].to(self.device)


class _EpochViews:
    """Picklable for loader workers: holds the source, not the pipeline (which holds the device
    tensors and the loaders themselves)."""

    def __init__(self, source: ImageSource, spec: ViewSpec, seed: int, num_views: int,
                 image_size: tuple[int, int], num_classes: int) -> None:
        self.source, self.spec, self.seed, self.num_views = source, spec, seed, num_views
        self.image_size, self.num_classes = image_size, num_classes

    def __call__(self, idx: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = sample_views(len(self.source), self.num_views, self.spec, self.seed, self.image_size,
                           samples=idx, views=torch.tensor([epoch]), source=self.source)
        return gather_and_apply(self.source, rec, self.num_classes, uint8_ok=True)


class _Clean:
    """make(indices, epoch) -> (uint8 [B, C, H, W],): a split's clean images (evaluation)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __call__(self, idx: torch.Tensor, epoch: int) -> tuple[torch.Tensor]:
        return (self.source.load(idx),)


def _on_device(src: ImageSource, device: torch.device) -> ImageSource:
    if isinstance(src, TensorImages):
        return src.to(device)
    return src
