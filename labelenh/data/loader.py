"""Training batches of lazy sources (image folders) made in DataLoader worker processes.

An in-memory split renders its batches on the training device, batched; a lazy source has to
decode files first, which must not run in the training process one image after another. Here
each *batch* is one DataLoader item: the main process decides the batches (a permutation drawn
from (seed, epoch), this rank's slice), a worker decodes and renders all of one batch's recipes
and hands back the finished images. Recipes come from (seed, epoch, sample, view) alone, so a
batch is bit-identical whichever worker (or the main process, `workers=0`) made it.

Workers persist across epochs (forking and opening files again each epoch costs seconds on
ImageNet), prefetch `PREFETCH` batches each, run on into the next epoch's batches while this one
ends and the model is evaluated (so an epoch does not start by waiting for its first batch),
and the host tensors are pinned on CUDA so the copy to the device overlaps the model's step.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from labelenh import bounds as B
from labelenh.errors import LabelenhError

PREFETCH = 4  # batches per worker: enough to ride out one slow file, little memory (4 x 256 x 150 kB)
# (indices [B], epoch) -> (images [B, C, H, W] 0..255, float or uint8, more tensors...)
MakeBatch = Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]


def default_workers() -> int:
    """The CPUs this process may use, shared among the ranks of this host under torchrun:
    decoding is the bottleneck on a GPU host."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def resolve_workers(workers: int | None) -> int:
    """`--workers`: None = the CPU count; else an integer in WORKERS' range."""
    if workers is None:
        return default_workers()
    B.WORKERS.check(workers, "--workers")
    return int(workers)


@dataclass
class _Failed:
    """A worker's LabelenhError, carried back as a value: DataLoader would re-raise it wrapped
    in a multi-line traceback, and bad input must stay one line."""

    message: str


def _pack(out: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    """Float images that hold whole grey levels (crops, flips, pastes) travel as uint8: a
    quarter of the bytes through shared memory; exact, since the check is bit-for-bit."""
    x, *rest = out
    if x.dtype == torch.uint8:
        return ("u8", x, *rest)
    if x.is_floating_point():
        xu = x.to(torch.uint8)  # truncates (and wraps outside 0..255): the check below catches both
        if bool(x.eq(xu).all()):
            return ("u8", xu, *rest)
    return ("f", x, *rest)


def as_float_images(out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """`make`'s tuple with uint8 images as float32 (what the engine normalises)."""
    x, *rest = out
    return (x.to(torch.float32) if x.dtype == torch.uint8 else x, *rest)


def _unpack(item: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
    kind, x, *rest = item
    return (x.to(torch.float32) if kind == "u8" else x, *rest)


class _Jobs(torch.utils.data.Dataset):
    """Item (epoch, indices) -> one finished batch (`make`'s tensors, packed)."""

    def __init__(self, make: MakeBatch) -> None:
        self.make = make

    def __len__(self) -> int:  # unused: the sampler decides the items
        return 0

    def __getitem__(self, job: tuple[int, torch.Tensor]) -> Any:
        epoch, idx = job
        try:
            return _pack(self.make(idx, epoch))
        except LabelenhError as e:
            return _Failed(str(e))


class _JobQueue(torch.utils.data.Sampler):
    """The jobs the main process has queued: this pass's, then the next pass's, so the workers
    run on into the next epoch while this one ends and while the model is evaluated.
    Persistent workers never see it (the main process sends them the items)."""

    def __init__(self) -> None:
        self.jobs: collections.deque[tuple[int, torch.Tensor]] = collections.deque()

    def __iter__(self):
        while self.jobs:
            yield self.jobs.popleft()

    def __len__(self) -> int:
        return len(self.jobs)


Jobs = Sequence[torch.Tensor]


class BatchLoader:
    """Runs `make(indices, epoch)` for a list of batches, in `workers` processes (0: here).

    `make` returns a tuple whose first element is the images (0..255 [B, C, H, W], float or
    uint8); it must be picklable when the start method is not fork. Batches come back in order,
    on the CPU (pinned when `pin_memory`), the images as float32.

    `run(epoch, batches, upcoming=(epoch + 1, next_batches))` also queues the next pass: the
    workers start on it as soon as they have room, and the next `run` with exactly those
    batches continues where this one stopped. Any other call starts afresh (what was
    prefetched for it is dropped), so the batches never depend on what was queued before."""

    def __init__(self, make: MakeBatch, workers: int, *, pin_memory: bool = False) -> None:
        self.workers = int(workers)
        self._queue = _JobQueue()
        self._loader = torch.utils.data.DataLoader(
            _Jobs(make), batch_size=None, sampler=self._queue, num_workers=self.workers,
            persistent_workers=self.workers > 0, pin_memory=pin_memory,
            prefetch_factor=PREFETCH if self.workers > 0 else None,
        )
        self._items: Iterator[Any] | None = None
        self._queued: tuple[int, Jobs] | None = None  # the pass `_items` runs on into

    def _continues(self, epoch: int, batches: Jobs) -> bool:
        q = self._queued
        return (self._items is not None and q is not None and q[0] == epoch and len(q[1]) == len(batches)
                and all(torch.equal(a, b) for a, b in zip(q[1], batches, strict=True)))

    def run(self, epoch: int, batches: Jobs, upcoming: tuple[int, Jobs] | None = None
            ) -> Iterator[tuple[torch.Tensor, ...]]:
        if not self._continues(epoch, batches):
            self._queue.jobs.clear()
            self._queue.jobs.extend((int(epoch), idx) for idx in batches)
            self._items = None
        self._queued = None  # set again only once this pass is consumed to its end
        if upcoming is not None:
            self._queue.jobs.extend((int(upcoming[0]), idx) for idx in upcoming[1])
        if self._items is None:
            self._items = iter(self._loader)
        for _ in range(len(batches)):
            item = next(self._items)
            if isinstance(item, _Failed):
                self._items = None
                raise LabelenhError(item.message)
            yield _unpack(item)
        if upcoming is not None:
            self._queued = (int(upcoming[0]), list(upcoming[1]))
        else:
            self._items = None  # the queue is empty: the next pass starts a new iteration
