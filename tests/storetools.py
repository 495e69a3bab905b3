"""Test helpers that edit a store on purpose and re-sign it, so that a check other than the
checksums (the NaN scan, --verify's re-run, the recipe checks) is what must catch the edit."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from labelenh.store.reader import expected_datasets, has_checksums
from labelenh.store.schema import checksummed, chunk_rows, crc32, decode_attrs
from labelenh.store.writer import stamp_attrs


def restamp(path: str | Path) -> None:
    """Recompute the attributes' CRC and every chunk's checksums from the file as it is now
    (the checksums only where the attributes still describe the layout)."""
    with h5py.File(path, "r+") as f:
        stamp_attrs(f)
        try:
            attrs = decode_attrs(f.attrs)
            if not has_checksums(attrs) or "checksums" not in f:
                return
            layout = checksummed(expected_datasets(attrs))
        except Exception:  # noqa: BLE001 - attributes edited beyond use: nothing more to sign
            return
        n, cs, chunks = int(attrs["num_samples"]), int(attrs["chunk_size"]), int(attrs["num_chunks"])
        sums = np.zeros((chunks, len(layout)), dtype="<u4")
        for d, (name, _, _) in enumerate(layout):
            arr = f[name][()]
            for c in range(chunks):
                a, b = chunk_rows(name, c, cs, n)
                sums[c, d] = crc32(arr[a:b])
        f["checksums"][...] = sums
