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


def contents(path: str | Path) -> dict:
    """Every dataset's bytes and every attribute (but `created`), for bit-for-bit comparison."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            attrs = {k: repr(v) for k, v in obj.attrs.items() if k != "created"}
            if isinstance(obj, h5py.Dataset):
                out[name] = (str(obj.dtype), obj.shape, obj[()].tobytes(), attrs)
            else:
                out[name] = attrs
        out["/"] = {k: repr(v) for k, v in f.attrs.items() if k != "created"}
        f.visititems(visit)
    return out


def data_ranges(path: str | Path) -> dict[str, tuple[int, int]]:
    """File byte range [start, end) of every contiguous dataset."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                off = obj.id.get_offset()
                out[name] = (off, off + obj.id.get_storage_size())
        f.visititems(visit)
    return out


def flip_bit(path: str | Path, byte: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(byte)
        b = f.read(1)[0]
        f.seek(byte)
        f.write(bytes([b ^ (1 << bit)]))
