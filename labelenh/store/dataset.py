"""From a soft-label store to training batches: the student stage's data path, also for users'
own training loops.

- `epoch_views`    which stored view each sample shows in an epoch, from (seed, epoch, sample)
- `StoreBatches`   the batched path: (images [B, C, H, W] float 0..255, `MethodInputs`) for a
                   batch of sample indices; `labelenh student` builds every batch with it
- `StoreDataset`   a map-style torch Dataset over sample indices with the same items, for a
                   `DataLoader` (any number of workers); `collate` turns items into a batch

Images are made by `labelenh.views.gather_and_apply` (the one function that crops, flips and
mixes) from the recipes stored next to the logits, so the student sees exactly the image the
teacher saw. Under `aug=True` a sample shows one of the store's views per epoch and the
teacher logits are that view's; under `aug=False` it shows a fresh `spec` view (crop/flip by
default, drawn from (seed, sample, epoch)) and the teacher logits are the clean sample's.

Example, a plain loop (normalise the 0..255 images as the teachers' inputs were)::

    from labelenh.data import load_dataset, normalize
    from labelenh.methods import build_method
    from labelenh.store import StoreBatches

    data = load_dataset("cifar100")
    batches = StoreBatches("store.h5", data.train, aug=True)      # the store's ricap views
    method = build_method("kd-sl", data.num_classes, T=3.0, alpha=0.9)
    for epoch in range(epochs):
        for x, inp in batches.iter_epoch(epoch, batch_size=64):
            logits = model(normalize(x, data.mean, data.std))
            loss = sum(method.loss(logits, inp).values())
            ...

or through a DataLoader (items are dicts; `collate` gives the same batches)::

    ds = StoreDataset("store.h5", data.train, aug=True)
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4, collate_fn=collate)
    for epoch in range(epochs):
        ds.set_epoch(epoch)   # before the loader's iterator starts (workers copy the dataset)
        for x, inp in loader:
            ...
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.methods.base import MethodInputs
from labelenh.rng import CounterRNG
from labelenh.store.reader import SoftLabelStore
from labelenh.utils import derive_seed, generator
from labelenh.views import Recipes, ViewSpec, gather_and_apply, sample_views

_S_START, _S_STRIDE = 0, 1  # CounterRNG streams of the view schedule


def epoch_views(num_views: int, seed: int, epoch: int, samples: torch.Tensor) -> torch.Tensor:
    """int64 [B]: the store view each of `samples` shows in `epoch` (0-based).

    Views are dealt without replacement in cycles of V epochs: in cycle k = epoch // V sample i
    shows view (b + a·(epoch mod V)) mod V, with b uniform in [0, V) and a uniform over the
    strides coprime with V, both drawn from (seed, i, k) by a counter-based generator. So a
    sample never repeats a view before it has shown all V (the student warns when V < epochs),
    each epoch's view is uniform over the V views, and the choice depends on (seed, epoch,
    sample) alone: not on the batch size, the order, loader workers or ranks.
    """
    if num_views < 1:
        raise LabelenhError("the store holds no views: train without --aug or re-export with --views")
    if epoch < 0:
        raise LabelenhError(f"epoch must be >= 0, got {epoch}")
    s = np.asarray(torch.as_tensor(samples).cpu(), dtype=np.int64).reshape(-1)
    cycle, pos = divmod(int(epoch), int(num_views))
    rng = CounterRNG(derive_seed(seed, "view-choice"), s, cycle)
    strides = _strides(int(num_views))
    b = rng.integers(_S_START, 0, num_views)
    a = strides[rng.integers(_S_STRIDE, 0, len(strides))]
    return torch.from_numpy((b + a * pos) % num_views)


@functools.lru_cache(maxsize=16)
def _strides(v: int) -> np.ndarray:
    """The a in [1, v] with gcd(a, v) = 1: a -> (b + a·k) mod v visits every view once."""
    return np.array([a for a in range(1, v + 1) if math.gcd(a, v) == 1])


def _open(store: SoftLabelStore | str | Path | None, preload: bool | None) -> SoftLabelStore | None:
    if store is None or isinstance(store, SoftLabelStore):
        return store
    if isinstance(store, (str, Path)):
        return SoftLabelStore.open(store, preload=preload)
    raise LabelenhError(f"store must be a path or a SoftLabelStore, got {type(store).__name__}")


class StoreBatches:
    """Batches of (images float32 [B, C, H, W] in 0..255, `MethodInputs`) from a store.

    store     a `SoftLabelStore` or its path; None = no teacher logits (hard-label targets,
              views drawn on the fly: how the student trains the teacher-free baselines)
    source    the train split the store was exported from (checked by fingerprint)
    aug       True: each epoch every sample shows one of the store's views (`epoch_views`)
              with that view's logits; False: a fresh `spec` view with the clean logits
    teachers  names (or indices) of the store's teachers to read (default: all) -> M
    seed      seeds the view schedule, the fresh views and `iter_epoch`'s order
    spec      the fresh views under aug=False (default: crop/flip, the dataset's usual pad);
              `ViewSpec("none")` gives the clean images
    logits    False skips reading teacher logits (`teacher_logits` stays None)
    device    where the batches go (default: the source's device)
    """

    def __init__(self, store: SoftLabelStore | str | Path | None, source: Any, *, aug: bool,
                 teachers: Sequence[str] | None = None, seed: int = 0, spec: ViewSpec | None = None,
                 logits: bool = True, num_classes: int | None = None,
                 device: torch.device | str | None = None, preload: bool | None = None) -> None:
        self.store = _open(store, preload)
        self.source = source
        self.aug = bool(aug)
        self.seed = int(seed)
        self.device = None if device is None else torch.device(device)
        n = len(source)
        _, h, w = source.image_shape
        self.image_size = (int(h), int(w))
        if self.store is None:
            if aug:
                raise LabelenhError("aug=True trains on a store's views: pass a store")
            if num_classes is None:
                raise LabelenhError("without a store, pass num_classes")
            self.num_classes, self.teachers, self.logits = int(num_classes), None, False
        else:
            st = self.store
            if num_classes is not None and int(num_classes) != st.num_classes:
                raise LabelenhError(f"num_classes={num_classes} but store {st.path.name} has {st.num_classes} classes")
            st.check_dataset("the given images", source.fingerprint(), n, st.num_classes)
            if aug and not st.num_views:
                raise LabelenhError(f"store {st.path.name} holds no views (exported without --aug/--views): "
                                    "use aug=False or re-export with views")
            self.num_classes = st.num_classes
            self.teachers = st._teacher_names(list(teachers) if teachers else None)
            self.logits = bool(logits)
        if spec is None:
            from labelenh.data.registry import default_crop_pad

            spec = ViewSpec.build(ViewSpec().op, {"pad": default_crop_pad(h)})  # the default: crop/flip
        self.spec = spec
        self.view_seed = derive_seed(self.seed, "student-views")  # seed of the fresh views

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_views(self) -> int:
        return self.store.num_views if self.store is not None else 0

    def views(self, samples: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """int64 [B]: the store view each sample shows in `epoch`; None under aug=False."""
        if not self.aug:
            return None
        return epoch_views(self.num_views, self.seed, epoch, samples)

    def recipes(self, samples: torch.Tensor, epoch: int) -> Recipes:
        """The recipes of the images `samples` show in `epoch`."""
        samples = torch.as_tensor(samples).reshape(-1).cpu()
        return self._recipes(samples, self.views(samples, epoch), epoch)

    def _recipes(self, samples: torch.Tensor, views: torch.Tensor | None, epoch: int) -> Recipes:
        if views is not None:
            return self.store.recipes(samples, views)
        # a fresh view per (sample, epoch): the epoch is the view id
        return sample_views(len(self), epoch + 1, self.spec, self.view_seed, self.image_size,
                            samples=samples, views=torch.tensor([epoch]), source=self.source)

    def images(self, samples: torch.Tensor, epoch: int, uint8_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 [B, C, H, W] in 0..255, label weights [B, K]) for sample indices [B]:
        the part of `batch` that decodes and renders (what loader workers run); uint8_ok: the
        images may be uint8 (same values) where no op blends them."""
        samples = torch.as_tensor(samples).reshape(-1).cpu()
        rec = self._recipes(samples, self.views(samples, epoch), epoch)
        return gather_and_apply(self.source, rec, self.num_classes, uint8_ok=uint8_ok)

    def batch(self, samples: torch.Tensor, epoch: int,
              images: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, MethodInputs]:
        """(images float32 [B, C, H, W] in 0..255, MethodInputs) for sample indices [B];
        `images`: what `images(samples, epoch)` returned, when it ran elsewhere (a worker)."""
        samples = torch.as_tensor(samples).reshape(-1).cpu()
        views = self.views(samples, epoch)
        x, hard = images if images is not None else self.images(samples, epoch)  # [B, C, H, W], [B, K]
        dev = self.device or x.device
        x, hard = x.to(dev), hard.to(dev)
        labels = self.source.labels[samples.to(self.source.labels.device)].to(dev)  # [B]
        t = None
        if self.logits:
            t = (self.store.view_logits(samples, views, self.teachers) if views is not None
                 else self.store.clean_logits(samples, self.teachers))  # [B, M, K]
            t = t.to(dev)
        return x, MethodInputs(labels=labels, hard=hard, teacher_logits=t)

    def iter_epoch(self, epoch: int, batch_size: int, *, shuffle: bool = True
                   ) -> Iterator[tuple[torch.Tensor, MethodInputs]]:
        """Every batch of an epoch, in the student stage's order (a permutation drawn from
        (seed, epoch); a trailing batch of one is dropped, as it breaks BatchNorm)."""
        n = len(self)
        order = torch.randperm(n, generator=generator(self.seed, "order", epoch)) if shuffle else torch.arange(n)
        parts = list(order.split(int(batch_size)))
        if len(parts) > 1 and len(parts[-1]) < 2:
            parts.pop()
        for idx in parts:
            yield self.batch(idx, epoch)


class StoreDataset(torch.utils.data.Dataset):
    """Map-style Dataset over sample indices; item i is a dict

        index           int: the sample
        view            int: the store view it shows (-1: a fresh view with the clean logits)
        image           float32 [C, H, W] in 0..255
        hard            float32 [K]: the view's label weights (mixed under a mixing view)
        labels          int64 []: the sample's own label
        teacher_logits  float32 [M, K]

    Items equal the rows of `StoreBatches.batch` bit for bit (`collate` stacks them into the
    same batch); the DataLoader fetches a batch of items in one batched call (`__getitems__`).
    Call `set_epoch(e)` each epoch, before the loader's iterator starts. Arguments as for
    `StoreBatches`; the source must live on the CPU for loader workers.

    Workers never share a file handle: forked workers inherit the store (preloaded arrays are
    shared copy-on-write, memory maps are reopened per process by the reader); workers that
    receive the dataset by pickling (spawn, forkserver) open a store given by path themselves,
    on first use, memory-mapped unless preload=True.
    """

    def __init__(self, store: SoftLabelStore | str | Path, source: Any, *, aug: bool,
                 teachers: Sequence[str] | None = None, seed: int = 0, spec: ViewSpec | None = None,
                 preload: bool | None = None) -> None:
        if store is None:
            raise LabelenhError("StoreDataset reads a store: pass its path or a SoftLabelStore")
        self._path = None if isinstance(store, SoftLabelStore) else Path(store)
        self._kw = dict(aug=aug, teachers=teachers, seed=seed, spec=spec)
        self._preload = preload
        self.source = source
        self.epoch = 0
        # opened (and checked against the source) now, so bad input fails here, not in a worker
        self._batches: StoreBatches | None = StoreBatches(store, source, preload=preload, **self._kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def batches(self) -> StoreBatches:
        if self._batches is None:  # unpickled in a worker
            self._batches = StoreBatches(self._path, self.source, preload=bool(self._preload), **self._kw)
        return self._batches

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:  # never ship a preloaded store to a worker: it opens its own
            state["_batches"] = None
        return state

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"sample index out of range for {len(self)} samples")
        b = self.batches
        x, inp = b.batch(idx, self.epoch)
        views = b.views(idx, self.epoch)
        out = []
        for k in range(len(idx)):
            out.append({
                "index": int(idx[k]),
                "view": int(views[k]) if views is not None else -1,
                "image": x[k].clone(),  # own storage: workers send items one by one
                "hard": inp.hard[k].clone(),
                "labels": inp.labels[k].clone(),
                "teacher_logits": inp.teacher_logits[k].clone(),
            })
        return out


def collate(items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, MethodInputs]:
    """`StoreDataset` items -> (images [B, C, H, W], MethodInputs), as `StoreBatches.batch`."""
    if not items:
        raise LabelenhError("cannot collate an empty batch")
    stack = lambda key: torch.stack([it[key] for it in items])  # noqa: E731
    return stack("image"), MethodInputs(labels=stack("labels"), hard=stack("hard"),
                                        teacher_logits=stack("teacher_logits"))


__all__ = ["StoreBatches", "StoreDataset", "collate", "epoch_views"]
