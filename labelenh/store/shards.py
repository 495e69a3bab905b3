"""Shards of a multi-process export and their merge into the single-file store.

Under `torchrun`, the chunks an export still has to write are dealt to the ranks (the i-th
missing chunk to rank i % world). Rank 0 writes its chunks straight into the store; every other
rank r writes its own shard, `.<store>.shard-<r>.h5` next to the store, so no file is ever
written by two processes. A shard is a store skeleton (`write_skeleton`) over only that rank's
chunks, concatenated in chunk order, with the same crash-safe writes (`StoreWriter`: data, flush,
then the chunk's progress flag), its own `format` (readers refuse it as a store) and:

    store_identity   the identity (schema.StorePlan.identity) of the store it belongs to
    shard_chunks     JSON list of the store's chunk numbers it holds, increasing
    shard_rank, shard_world

Chunks are fixed blocks of `chunk_size` samples, so only the store's last chunk can be short and,
the lists being increasing, it is the last chunk of its shard: the shard is a `StorePlan` over
sum(chunk sizes) samples with the same chunk size, and shard chunk j is store chunk chunks[j].

After a barrier rank 0 `absorb`s every shard: each finished chunk is copied into the store with
`StoreWriter.write_chunk` (data, flush, then the store's progress flag), then the shard is
deleted; the store is marked complete only when every chunk's flag is set. A rank that dies
leaves a partial shard: the next run's rank 0 absorbs the finished chunks of every shard it finds
(whatever world size wrote them) before it deals out what is left, so a rerun resumes, with the
same or another number of processes. Memory stays at one chunk per copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from labelenh.store.lock import ExportLock
from labelenh.store.schema import StorePlan, crc32, decode_attrs
from labelenh.store.writer import (
    StoreWriter,
    TeacherChunk,
    fsync,
    reserve,
    stamp_attrs,
    write_skeleton,
)

SHARD_FORMAT = "labelenh.softlabels.shard"
# Fault injection for tests: "RANK:N" makes that rank's process die (os._exit, no clean-up, as a
# kill would) right after its N-th chunk is written.
CRASH_ENV = "LABELENH_EXPORT_CRASH_AFTER"


def shard_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.shard-{rank}.h5")


def find_shards(out: Path) -> list[Path]:
    """Shard files of the store `out` left by any run, in rank order."""
    pat = re.compile(rf"^\.{re.escape(out.name)}\.shard-(\d+)\.h5$")
    if not out.parent.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.parent.iterdir() if (m := pat.match(p.name))]
    return [p for _, p in sorted(found)]


def shard_plan(plan: StorePlan, chunks: Sequence[int]) -> StorePlan:
    """The plan of a shard holding the store's `chunks` (increasing)."""
    if list(chunks) != sorted(set(chunks)):
        raise ValueError(f"shard chunks must be increasing and distinct, got {list(chunks)}")
    rows = sum(b - a for a, b in (plan.chunk_bounds(c) for c in chunks))
    return dataclasses.replace(plan, num_samples=rows)


def create_shard(path: Path, plan: StorePlan, chunks: Sequence[int], rank: int, world: int) -> StorePlan:
    """Write a fresh shard skeleton to a temporary sibling and rename it to `path` (atomic);
    returns its plan (open it with `StoreWriter(path, plan)`)."""
    sp = shard_plan(plan, chunks)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            write_skeleton(f, sp)
            f.attrs["format"] = SHARD_FORMAT
            f.attrs["store_identity"] = json.dumps(plan.identity(), sort_keys=True)
            f.attrs["shard_chunks"] = json.dumps([int(c) for c in chunks])
            f.attrs["shard_rank"] = int(rank)
            f.attrs["shard_world"] = int(world)
            if sp.checksums:
                stamp_attrs(f)
        reserve(tmp, os.path.getsize(tmp))
        fsync(tmp)  # on disk before the rename, as for the store itself
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return sp


def _read_chunk(f: h5py.File, sp: StorePlan, j: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, TeacherChunk]]:
    """Shard chunk j as `StoreWriter.write_chunk` takes it."""
    a, b = sp.chunk_bounds(j)
    labels = f["labels"][a:b]
    recipes = f["views/recipes"][a:b] if sp.num_views else None
    outputs = {}
    for t in sp.teachers:
        g = f"teachers/{t.name}"

        def part(name: str, g: str = g):
            if sp.fmt.is_topk:
                return tuple(f[f"{g}/{name}/{k}"][a:b] for k in ("indices", "values", "lse"))
            return f[f"{g}/{name}"][a:b]

        kl = tuple(float(x) for x in f[f"{g}/topk_kl"][j]) if sp.fmt.is_topk else None
        outputs[t.name] = TeacherChunk(part("clean"), part("views") if sp.num_views else None, kl)
    return labels, recipes, outputs


def absorb(writer: StoreWriter, plan: StorePlan, path: Path) -> int:
    """Copy the finished chunks of shard `path` into the store open in `writer`, then delete the
    shard. A shard of another export (different identity) or an unreadable one is only deleted.
    Returns the number of chunks copied. Raises LabelenhError while another process writes it."""
    copied = 0
    with ExportLock(path):  # a straggler of an earlier run still writing it: refuse
        try:
            f = h5py.File(path, "r")
        except OSError:
            f = None
        if f is not None:
            with f:
                attrs = decode_attrs(f.attrs, ("store_identity", "shard_chunks"))
                want = json.loads(json.dumps(plan.identity()))
                if attrs.get("format") == SHARD_FORMAT and attrs.get("store_identity") == want:
                    chunks = [int(c) for c in attrs["shard_chunks"]]
                    sp = shard_plan(plan, chunks)
                    have = writer.done()
                    for j, c in enumerate(chunks):
                        try:
                            if not f["progress"][j] or have[c]:
                                continue
                            payload = _read_chunk(f, sp, j)
                            if not _sums_match(f, sp, writer, j, c, payload):
                                break  # damaged since it was written: redo this chunk and the rest
                        except (KeyError, OSError, ValueError, IndexError, TypeError):
                            break  # a damaged shard: what was copied is sound, the rest is redone
                        writer.write_chunk(c, *payload)
                        copied += 1
        path.unlink(missing_ok=True)
    return copied


def _sums_match(f: h5py.File, sp: StorePlan, writer: StoreWriter, j: int, c: int, payload) -> bool:
    """Shard chunk j's bytes against the checksums the shard recorded for them (schema 2)."""
    if not sp.checksums:
        return True
    want = np.asarray(f["checksums"][j], dtype=np.uint32)
    arrays = StoreWriter.chunk_arrays(writer, c, *payload)
    # chunk_arrays checks shapes against the store's chunk c: the same rows as shard chunk j
    got = [crc32(arrays[name]) for name, _, _ in sp.checksummed()]
    return want.shape == (len(got),) and all(int(a) == b for a, b in zip(want, got, strict=True))


def discard(path: Path) -> None:
    """Delete a shard (e.g. of a store started over with --overwrite), under its lock."""
    with ExportLock(path):
        path.unlink(missing_ok=True)


def crash_point(rank: int) -> int | None:
    """The chunk count after which this rank must die (CRASH_ENV), or None."""
    spec = os.environ.get(CRASH_ENV, "")
    r, sep, n = spec.partition(":")
    if sep and r.strip().isdigit() and n.strip().isdigit() and int(r) == rank:
        return int(n)
    return None


__all__ = ["CRASH_ENV", "SHARD_FORMAT", "absorb", "create_shard", "discard", "find_shards",
           "shard_path", "shard_plan"]
