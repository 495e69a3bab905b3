"""Creating a store's skeleton and writing it chunk by chunk.

Crash and full-disk safety rests on four rules:
- the skeleton (every dataset, allocated at its final size, and every attribute) is written to a
  temporary sibling, its whole extent reserved on the disk (`posix_fallocate`: HDF5 allocates
  without filling, so the file would otherwise be sparse and the disk could fill up mid-export),
  then renamed into place, so the path never holds a half-made skeleton; a disk without room for
  the whole store is refused before anything is written, in one line with the numbers;
- after that, an export only overwrites raw bytes of contiguous datasets at the offsets HDF5 gave
  them, with `os.pwrite` — no HDF5 call, so a failed write raises there and then (HDF5 reports
  write errors only when its objects are freed, where they are lost) and no HDF5 metadata
  changes until the final `complete` flag, so a kill -9 cannot leave the file unreadable;
- a chunk's data and its checksums reach the disk (fsync) before its progress flag is written,
  and the flag is synced before the next chunk counts as done;
- `complete` is set through HDF5 only after every flag is on the disk, and read back.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from labelenh import __version__
from labelenh.errors import LabelenhError
from labelenh.store.schema import StorePlan, attrs_digest, chunk_rows, crc32, raw_bytes


def _dcpl(allocate: bool) -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    # Early allocation fixes every byte's address at creation; no fill keeps creation O(1).
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY if allocate else h5py.h5d.ALLOC_TIME_LATE)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def write_skeleton(f: h5py.File, plan: StorePlan, *, allocate: bool = True) -> None:
    """Every attribute and dataset of the plan; attributes that change later exist already (same
    type), so finishing the store rewrites them in place."""
    from labelenh.provenance import git_commit

    for k, v in plan.root_attrs().items():
        f.attrs[k] = v
    f.attrs["labelenh_version"] = __version__
    f.attrs["git_commit"] = git_commit()
    f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    f.attrs["complete"] = np.bool_(False)
    for t in plan.teachers:
        g = f.require_group(f"teachers/{t.name}")
        for k, v in t.attrs().items():
            g.attrs[k] = v
        if plan.fmt.is_topk:
            g.attrs["topk_kl_clean"] = np.float64(np.nan)
            g.attrs["topk_kl_views"] = np.float64(np.nan)
    for path, shape, dtype in plan.datasets():
        f.create_dataset(path, shape=shape, dtype=dtype, dcpl=_dcpl(allocate))
    if plan.checksums:
        stamp_attrs(f)


def stamp_attrs(f: h5py.File) -> None:
    """Record the CRC-32 of the attributes fixed at creation (call after the last of them)."""
    f.attrs["attrs_crc32"] = np.int64(attrs_digest(f))


def check_free_space(folder: Path, need: int, what: Path) -> None:
    """Refuse, in one line with the numbers, a store that the disk cannot hold."""
    from labelenh.store.progress import human_bytes

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the folder's own error comes with the first write
    if need > free:
        raise LabelenhError(
            f"not enough free space for {what}: it needs {human_bytes(need)} ({need:,} bytes) but "
            f"{folder} has {human_bytes(free)} free: free space, write it elsewhere (--out), or export "
            "fewer views / --format topk:K (see --dry-run); nothing was written"
        )


def reserve(path: Path, size: int) -> None:
    """Give every byte of the file's `size` real disk blocks, so no later write can meet a full
    disk. Filesystems without fallocate get it emulated by the C library (written zeros)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - not POSIX: write the last byte, the best that is portable
            os.pwrite(fd, os.pread(fd, 1, size - 1) or b"\0", size - 1)
    finally:
        os.close(fd)


def create_store(path: Path, plan: StorePlan, report_as: Path | None = None) -> None:
    """Write the skeleton to a temporary sibling, reserve its disk space, then rename it to `path`
    (atomic). report_as: the store a failure is reported against (the one an `--overwrite`
    export replaces). A disk without room for the whole store is refused before anything."""
    from labelenh.write_errors import write_error

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # skeletons of killed exports (we hold the lock)
        if stale != tmp and stale.name[len(path.name) + 2:-4].isdigit():
            stale.unlink(missing_ok=True)
    check_free_space(path.parent, estimate_size(plan), report_as or path)
    try:
        with h5py.File(tmp, "w") as f:
            write_skeleton(f, plan)
        reserve(tmp, os.path.getsize(tmp))
        fsync(tmp)  # on disk before the rename makes it the store (a power cut included)
        os.replace(tmp, path)
        fsync(path.parent)
    except OSError as e:  # a full disk or read-only folder: `path` (and report_as) is untouched
        raise write_error(e, report_as or path, where="--out") from None
    finally:
        tmp.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Push a file's (or a folder's entries') written pages to the disk: h5py's flush only hands
    them to the operating system, which may reorder them on the way to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_data(fd: int) -> None:
    """The sync between a chunk's data and its progress flag (one function, so that fault tests
    can stop a process exactly there)."""
    os.fsync(fd)


def metadata_bytes(plan: StorePlan) -> int:
    """Bytes of the file that are not array data: the skeleton built in memory, unallocated."""
    # block_size=1: the in-memory file grows to exactly its end of allocation, not to 64 KiB steps
    f = h5py.File(f"labelenh-size-{id(plan)}", "w", driver="core", backing_store=False, block_size=1)
    try:
        write_skeleton(f, plan, allocate=False)
        f.flush()
        return int(f.id.get_filesize())
    finally:
        f.close()


# HDF5's small-data and metadata blocks (2 KiB each by default) leave parts unused in a real
# file (measured: 1.3-2.2 KiB beyond the in-memory skeleton); 4 KiB keeps the estimate an
# upper bound, which the free-space check relies on.
AGGREGATOR_SLACK = 4096


def estimate_size(plan: StorePlan) -> int:
    """An upper bound of the final file size in bytes, within a few KiB: metadata + every array
    + the allocators' unused block space."""
    return metadata_bytes(plan) + plan.data_bytes() + AGGREGATOR_SLACK


@dataclass
class TeacherChunk:
    """One teacher's outputs for one chunk, already in storage dtypes.

    dense: clean [B, C], views [B, V, C]. top-k: clean/views are (indices, values, lse) and
    kl = (sum over clean rows, sum over view rows) of KL(dense || reconstructed)."""

    clean: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]
    views: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    kl: tuple[float, float] | None = None


class StoreWriter:
    """Writes chunks into an existing skeleton with `os.pwrite` at the datasets' offsets.

    HDF5 is used once to learn where each dataset lies (every one is contiguous and allocated
    at creation) and once at the end to set `complete`; between the two, the file is plain bytes
    at fixed places, so every failed write raises OSError at the call that made it."""

    def __init__(self, path: Path, plan: StorePlan) -> None:
        self.path = path
        self.plan = plan
        self.layout: dict[str, tuple[int, int]] = {}  # name -> (file offset, bytes per row)
        with h5py.File(path, "r") as f:
            for name, shape, dtype in plan.datasets():
                ds = f[name]
                off = ds.id.get_offset()
                if off is None or tuple(ds.shape) != tuple(shape) or ds.dtype != dtype:
                    raise LabelenhError(f"{path}: /{name} is not the allocated contiguous dataset this "
                                        "export writes: pass --overwrite to start the store over")
                row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                self.layout[name] = (int(off), row)
        self.checked = [name for name, _, _ in plan.checksummed()]
        self.fd: int | None = os.open(path, os.O_RDWR)

    # ---- raw access ----------------------------------------------------------------------

    def _pwrite(self, name: str, row: int, data: bytes | memoryview) -> None:
        off, rowbytes = self.layout[name]
        pos, view = off + row * rowbytes, memoryview(raw_bytes(data))
        while view.nbytes:  # pwrite may write less than asked (a signal, a filling disk)
            n = os.pwrite(self.fd, view, pos)
            if n <= 0:
                raise OSError(28, "No space left on device", str(self.path))
            pos, view = pos + n, view[n:]

    def _pread(self, name: str, row: int, nrows: int) -> bytes:
        off, rowbytes = self.layout[name]
        want = nrows * rowbytes
        data = os.pread(self.fd, want, off + row * rowbytes)
        if len(data) != want:
            raise OSError(5, "short read (the file was truncated)", str(self.path))
        return data

    def done(self) -> np.ndarray:
        """bool [num_chunks]: chunks already written."""
        raw = self._pread("progress", 0, self.plan.num_chunks)
        return np.frombuffer(raw, dtype=np.uint8).astype(bool)

    # ---- chunks --------------------------------------------------------------------------

    def chunk_arrays(self, c: int, labels: np.ndarray, recipes: np.ndarray | None,
                     outputs: dict[str, TeacherChunk]) -> dict[str, np.ndarray]:
        """Chunk c's rows of every dataset, in the file's dtypes, keyed by dataset name."""
        plan = self.plan
        arrays: dict[str, np.ndarray] = {"labels": labels}
        if recipes is not None:
            arrays["views/recipes"] = recipes
        for name, out in outputs.items():
            g = f"teachers/{name}"
            for part, arr in (("clean", out.clean), ("views", out.views)):
                if arr is None:
                    continue
                if isinstance(arr, tuple):
                    for key, a in zip(("indices", "values", "lse"), arr, strict=True):
                        arrays[f"{g}/{part}/{key}"] = a
                else:
                    arrays[f"{g}/{part}"] = arr
            if out.kl is not None:
                arrays[f"{g}/topk_kl"] = np.asarray(out.kl, dtype=np.float64).reshape(1, 2)
        shapes = {name: (shape, dtype) for name, shape, dtype in plan.datasets()}
        for name in self.checked:
            if name not in arrays:
                raise LabelenhError(f"internal: chunk {c} lacks /{name}")
            shape, dtype = shapes[name]
            a, b = chunk_rows(name, c, plan.chunk_size, plan.num_samples)
            arr = np.ascontiguousarray(arrays[name], dtype=dtype)
            if arr.shape != (b - a, *shape[1:]):
                raise LabelenhError(f"internal: chunk {c} of /{name} has shape {list(arr.shape)}, "
                                    f"expected {[b - a, *shape[1:]]}")
            arrays[name] = arr
        return arrays

    def write_chunk(self, c: int, labels: np.ndarray, recipes: np.ndarray | None,
                    outputs: dict[str, TeacherChunk]) -> None:
        """Chunk c's data and checksums, synced, then its progress flag, synced."""
        plan = self.plan
        arrays = self.chunk_arrays(c, labels, recipes, outputs)
        sums = np.zeros(len(self.checked), dtype="<u4")
        for j, name in enumerate(self.checked):
            a, _ = chunk_rows(name, c, plan.chunk_size, plan.num_samples)
            self._pwrite(name, a, arrays[name])
            sums[j] = crc32(arrays[name])
        if plan.checksums:
            self._pwrite("checksums", c, sums)
        sync_data(self.fd)  # a flag must never reach the disk before its data ...
        self._pwrite("progress", c, b"\x01")
        os.fsync(self.fd)  # ... and the flag itself is there before the chunk counts as done

    def finish(self) -> None:
        """Top-k error attributes, then `complete` (the only metadata written after creation),
        read back: HDF5 may report a failed metadata write only when the file is closed."""
        plan = self.plan
        if not self.done().all():
            raise LabelenhError(f"{self.path}: chunks are missing; rerun the same command to finish the store")
        os.fsync(self.fd)
        self.close()
        with h5py.File(self.path, "r+") as f:
            if plan.fmt.is_topk:
                n, v = plan.num_samples, plan.num_views
                for t in plan.teachers:
                    sums = f[f"teachers/{t.name}/topk_kl"][()]  # [chunks, 2]
                    g = f[f"teachers/{t.name}"]
                    g.attrs["topk_kl_clean"] = np.float64(sums[:, 0].sum() / n)
                    g.attrs["topk_kl_views"] = np.float64(sums[:, 1].sum() / (n * v)) if v else np.float64(np.nan)
                f.flush()
                fsync(self.path)  # every attribute on the disk before the store says it is complete
            f.attrs["complete"] = np.bool_(True)
        fsync(self.path)
        with h5py.File(self.path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                raise OSError(5, "the complete flag did not reach the file", str(self.path))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
