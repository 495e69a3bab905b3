"""A complete store's arrays, row by row: held in memory (preloaded) or memory-mapped from the
file in each process, each chunk's CRC-32 checked the first time a lazy store reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labelenh.store.checks import chunk_damage, damage_error, expected_datasets, open_h5
from labelenh.store.schema import checksummed, chunk_rows, crc32


class StoreArrays:
    """The datasets of a store by name. Lazy arrays are opened on first use in each process and
    re-opened when the pid changes, so a store opened before DataLoader workers fork is safe in
    each of them; reads go through sorted unique rows, then back to the caller's order."""

    def __init__(self, path: Path, attrs: dict[str, Any],
                 layout: dict[str, tuple[int | None, tuple[int, ...], np.dtype]],
                 arrays: dict[str, np.ndarray] | None, sums: np.ndarray | None) -> None:
        self.path = path
        self.num_samples = int(attrs["num_samples"])
        self.num_views = int(attrs["num_views"])
        self.chunk_size = int(attrs["chunk_size"])
        self._layout = layout
        self.preloaded = arrays is not None
        self._arrays: dict[str, Any] = arrays or {}
        self._pid = os.getpid()
        self._h5: h5py.File | None = None
        # Lazy stores: the stored CRC-32 of every (chunk, dataset) and the pairs checked so far
        # in this process — each chunk of each dataset is checked once, when first read.
        self._sums = sums
        self._columns = {name: d for d, (name, _, _) in enumerate(checksummed(expected_datasets(attrs)))}
        self._checked: dict[str, np.ndarray] = {}  # dataset -> bool [chunks] checked

    def close(self) -> None:
        if not self.preloaded:
            self._arrays = {}
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # noqa: BLE001 - a handle inherited across fork may be unusable
                pass
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to spawned workers: preloaded arrays travel, file handles never do.
        state = dict(self.__dict__)
        state["_h5"] = None
        if not self.preloaded:
            state["_arrays"] = {}
        return state

    def array(self, name: str):
        """The whole dataset `name`: an array, a memory map or (not contiguous) an h5py dataset."""
        if self.preloaded:
            return self._arrays[name]
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's maps or handle
            self._arrays, self._h5, self._pid = {}, None, os.getpid()
        arr = self._arrays.get(name)
        if arr is None:
            off, shape, dtype = self._layout[name]
            if off is not None:
                arr = np.memmap(self.path, dtype=dtype, mode="r", offset=off, shape=shape)
            else:  # not contiguous (not written by this code): read through h5py
                if self._h5 is None:
                    self._h5 = open_h5(self.path)
                arr = self._h5[name]
            self._arrays[name] = arr
        return arr

    def check_chunks(self, name: str, samples: np.ndarray) -> None:
        """A lazy store's checksums of the chunks of `name` that hold `samples`, once each."""
        if self.preloaded or self._sums is None or name not in self._columns:
            return
        cs, n = self.chunk_size, self.num_samples
        checked = self._checked.get(name)
        if checked is None:
            checked = self._checked[name] = np.zeros(self._sums.shape[0], dtype=bool)
        chunks = samples // cs
        if checked[chunks].all():  # the common case after the first epoch: nothing to do
            return
        arr = self.array(name)
        for c in np.unique(chunks[~checked[chunks]]).tolist():
            a, b = chunk_rows(name, c, cs, n)
            if crc32(np.asarray(arr[a:b])) != int(self._sums[c, self._columns[name]]):
                raise damage_error(self.path, [chunk_damage(name, c, cs, n)])
            checked[c] = True

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a dataset by flat leading index (sample, or sample * V + view)."""
        arr = self.array(name)
        parts = name.split("/")
        lead = 2 if parts[0] == "views" or (parts[0] == "teachers" and parts[2] == "views") else 1
        self.check_chunks(name, rows // self.num_views if lead == 2 else rows)
        if isinstance(arr, np.ndarray):
            flat = arr.reshape(-1, *arr.shape[lead:]) if lead == 2 else arr
            if self.preloaded:
                return flat[rows]
            uniq, inv = np.unique(rows, return_inverse=True)  # page-ordered reads
            return flat[uniq][inv]
        # h5py fallback: whole samples in increasing order, then pick views
        v = self.num_views
        smp = rows // v if lead == 2 else rows
        uniq, inv = np.unique(smp, return_inverse=True)
        block = arr[uniq]
        return block[inv, rows % v] if lead == 2 else block[inv]
