"""Creating a store's skeleton and writing it chunk by chunk.

Crash safety rests on three rules:
- the skeleton (every dataset, allocated at its final size, and every attribute) is written to a
  temporary sibling and renamed into place, so the path never holds a half-made skeleton;
- after that, an export only overwrites raw bytes of contiguous datasets: no HDF5 metadata
  changes until the final `complete` flag, so a kill -9 cannot leave the file unreadable;
- a chunk's progress flag is written only after its data has been flushed, and flushed itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from labelenh import __version__
from labelenh.store.schema import StorePlan


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
    from labelenh.utils import git_commit

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


def create_store(path: Path, plan: StorePlan, report_as: Path | None = None) -> None:
    """Write the skeleton to a temporary sibling, then rename it to `path` (atomic). report_as:
    the store a failure is reported against (the one an `--overwrite` export replaces)."""
    from labelenh.utils import write_error

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # skeletons of killed exports (we hold the lock)
        if stale != tmp and stale.name[len(path.name) + 2:-4].isdigit():
            stale.unlink(missing_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            write_skeleton(f, plan)
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


AGGREGATOR_SLACK = 2048  # HDF5's default small-data/metadata block: partly unused in a real file


def estimate_size(plan: StorePlan) -> int:
    """The final file size in bytes: metadata + every array + one partly used 2 KiB block that
    HDF5's allocators leave when arrays are allocated between metadata (measured: 1.3-2 KiB)."""
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
    """Writes chunks into an existing skeleton (opened read-write)."""

    def __init__(self, path: Path, plan: StorePlan) -> None:
        self.path = path
        self.plan = plan
        self.f = h5py.File(path, "r+")
        self.progress = self.f["progress"]

    def done(self) -> np.ndarray:
        """bool [num_chunks]: chunks already written."""
        return self.progress[()].astype(bool)

    def write_chunk(
        self,
        c: int,
        labels: np.ndarray,
        recipes: np.ndarray | None,
        outputs: dict[str, TeacherChunk],
    ) -> None:
        s0, s1 = self.plan.chunk_bounds(c)
        f = self.f
        f["labels"][s0:s1] = labels
        if recipes is not None:
            f["views/recipes"][s0:s1] = recipes
        for name, out in outputs.items():
            g = f"teachers/{name}"
            for part, arr in (("clean", out.clean), ("views", out.views)):
                if arr is None:
                    continue
                if isinstance(arr, tuple):
                    idx, val, lse = arr
                    f[f"{g}/{part}/indices"][s0:s1] = idx
                    f[f"{g}/{part}/values"][s0:s1] = val
                    f[f"{g}/{part}/lse"][s0:s1] = lse
                else:
                    f[f"{g}/{part}"][s0:s1] = arr
            if out.kl is not None:
                f[f"{g}/topk_kl"][c] = np.asarray(out.kl, dtype=np.float64)
        f.flush()  # the data first (on the disk: a flag must never arrive before its data) ...
        fsync(self.path)
        self.progress[c] = 1
        f.flush()  # ... then the flag that says it is there

    def finish(self) -> None:
        """Top-k error attributes, then `complete` (the only metadata written after creation)."""
        plan, f = self.plan, self.f
        if plan.fmt.is_topk:
            n, v = plan.num_samples, plan.num_views
            for t in plan.teachers:
                sums = f[f"teachers/{t.name}/topk_kl"][()]  # [chunks, 2]
                g = f[f"teachers/{t.name}"]
                g.attrs["topk_kl_clean"] = np.float64(sums[:, 0].sum() / n)
                g.attrs["topk_kl_views"] = np.float64(sums[:, 1].sum() / (n * v)) if v else np.float64(np.nan)
        f.flush()
        fsync(self.path)  # every chunk and flag on the disk before the store says it is complete
        f.attrs["complete"] = np.bool_(True)
        f.flush()
        fsync(self.path)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()
