"""`export_soft_labels`: run teachers over a train split — the clean samples and V replayable
views of each — and stream their logits into a store, chunk by chunk.

Determinism: the stored bytes are a pure function of (teachers, dataset, view spec, V, seed,
format, chunk size, device type, AMP). Every teacher forward is one fixed block of at most
`chunk_size` images: the chunk's clean samples, then its (sample, view) pairs in sample-major
order cut every `chunk_size` pairs. Blocks never depend on which chunks were written before
(resume), on their order, or on anything else the caller chooses at run time, because CPU (and
cuDNN) kernels pick algorithms by batch shape and their last bits differ between shapes.

Memory is independent of N: one chunk (chunk_size x (1 + V) logits per teacher) is in flight
at a time, plus the one being written by a background thread while the next is computed.

Under `torchrun` (a process group is up) every rank calls `export_soft_labels` with the same
arguments. Rank 0 alone takes the store's lock, creates or checks the store and deals the
missing chunks out (the i-th to rank i % world); rank 0 writes its chunks into the store, every
other rank into its own shard file, and after a barrier rank 0 merges the shards in and marks
the store complete (`labelenh.store.shards`). As chunks are the same fixed blocks whichever
process computes them, the store equals a single-process export (bit for bit on CPU). A rank
that dies leaves the store incomplete; a rerun, with any number of processes, resumes.

`overwrite` of an existing store builds the new one in a hidden sibling (`staging_path`) and
renames it over the old one only when complete, so readers never see a half store and a failed
or killed overwrite loses nothing; rerunning it resumes the sibling.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh import distributed as dist
from labelenh.errors import LabelenhError
from labelenh.store import shards
from labelenh.store.compute import compute_chunk
from labelenh.store.lock import ExportLock
from labelenh.store.prepare import (
    discard_staging,
    existing_chunk_size,
    open_for_writing,
    prepare,
    prepare_staging,
    staging_path,
)
from labelenh.store.progress import ProgressBar, human_bytes
from labelenh.store.schema import DEFAULT_CHUNK_SIZE, LogitFormat, StorePlan, dedupe_names
from labelenh.store.teachers import (
    Teacher,
    TeacherRunner,
    export_amp,
    load_teachers,
    teacher_from_model,
    weights_sha256,
)
from labelenh.store.verify import verify_rows
from labelenh.store.writer import StoreWriter, estimate_size, fsync
from labelenh.write_errors import write_error

# Export's parts live in their own modules (teachers, compute, prepare, verify, progress); the
# names callers have always imported from here stay importable from here.
resolve_amp = export_amp


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    chunks_total: int
    chunks_written: int = 0  # by this call
    chunks_resumed: int = 0  # found already written
    seconds: float = 0.0
    dry_run: bool = False
    already_complete: bool = False
    verify: dict[str, Any] | None = None
    plan: StorePlan | None = field(default=None, repr=False)


def plan_export(
    teachers: list[Teacher], source: Any, *, dataset: str, num_classes: int, mean: Sequence[float],
    std: Sequence[float], num_views: int, spec: Any, view_seed: int, fmt: LogitFormat,
    chunk_size: int, device: torch.device, amp: str, fingerprint: str,
    dataset_meta: dict[str, Any] | None,
) -> StorePlan:
    recipe_dt = None
    if num_views:
        from labelenh.views import recipe_dtype

        recipe_dt = recipe_dtype(spec)
    _, h, w = source.image_shape
    return StorePlan(
        dataset=dataset, fingerprint=fingerprint, num_samples=len(source), num_classes=num_classes,
        num_views=num_views, view_spec=spec.to_dict() if num_views else None,
        view_seed=int(view_seed), image_size=(int(h), int(w)), fmt=fmt, chunk_size=chunk_size,
        teachers=[t.record for t in teachers],
        normalization={"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        compute={"device": device.type, "amp": amp}, recipe_dtype=recipe_dt,
        dataset_meta=_jsonable(dataset_meta or {}),
    )


def export_soft_labels(
    out: str | Path,
    teachers: list[Teacher],
    source: Any,
    *,
    dataset: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_views: int = 0,
    spec: Any = None,
    view_seed: int = 0,
    fmt: str | LogitFormat = "fp16",
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
    amp: str = "auto",
    overwrite: bool = False,
    dry_run: bool = False,
    verify: int = 0,
    progress: bool = False,
    dataset_meta: dict[str, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> ExportResult:
    """Write (or resume, or just size with dry_run) the store `out`. See the module doc.

    source: the train split (ImageSource: labels, load(idx), fingerprint(), image_shape).
    spec/num_views/view_seed: the views (num_views = 0: clean logits only).
    fmt: "fp16" | "fp32" | "topk:K".  chunk_size: samples per chunk = images per teacher
    forward; None = the existing store's (when resuming), else 256.  verify: re-run the teachers
    on this many random stored rows afterwards and compare (LabelenhError when they differ).
    workers: threads decoding an image folder's next chunk (None: the CPU count; 0 counts as 1)."""
    out, chunk_size = _out_and_chunk_size(out, chunk_size, overwrite)
    device = torch.device(device)
    amp = export_amp(amp, device)
    fmt = fmt if isinstance(fmt, LogitFormat) else LogitFormat.parse(fmt, num_classes)
    _check_args(teachers, source, num_classes, num_views, spec, chunk_size, verify, fmt)
    fingerprint = "0" * 64 if dry_run else source.fingerprint()  # a dry run reads no image
    plan = plan_export(teachers, source, dataset=dataset, num_classes=num_classes, mean=mean, std=std,
                       num_views=num_views, spec=spec, view_seed=view_seed, fmt=fmt,
                       chunk_size=chunk_size, device=device, amp=amp, fingerprint=fingerprint,
                       dataset_meta=dataset_meta)
    if dry_run:
        return ExportResult(out, estimate_size(plan), plan.num_chunks, dry_run=True, plan=plan)
    runner = TeacherRunner(teachers, source, num_classes=num_classes, mean=mean, std=std,
                           device=device, amp=amp, workers=workers)
    return write_plan(out, plan, runner, spec, overwrite=overwrite, verify=verify, progress=progress,
                      on_chunk=on_chunk, seed=view_seed)


@dataclass
class _Job:
    """One call's export of a plan: the file it writes and how far it is."""

    out: Path
    plan: StorePlan
    result: ExportResult
    target: Path  # the file written: `out`, or its staging sibling under --overwrite
    writer: StoreWriter | None = None  # rank 0's, open on `target`
    state: str = ""  # "new" | "resume" | "complete"
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # bool [chunks]


def _out_and_chunk_size(out: str | Path, chunk_size: int | None, overwrite: bool
                        ) -> tuple[Path, int | None]:
    """(the store's path, refused when a folder; the chunk size asked for, else the existing
    store's (a resume needs no --batch-size), else the default). Rank 0 decides the chunk size:
    the others may not open the store while rank 0 holds it."""
    out = Path(out)
    if out.is_dir():
        raise LabelenhError(f"--out {out} is a folder: pass a file path such as {out / 'store.h5'}")
    if chunk_size is not None:
        return out, chunk_size
    return out, dist.broadcast_object(
        (DEFAULT_CHUNK_SIZE if overwrite else existing_chunk_size(out)) if dist.rank() == 0 else None)


def write_plan(out: Path, plan: StorePlan, runner: TeacherRunner, spec: Any, *, overwrite: bool = False,
               verify: int = 0, progress: bool = False, on_chunk: Callable[[int], None] | None = None,
               seed: int = 0) -> ExportResult:
    """Write (or resume, or find complete) the store `out` of `plan`, its chunks computed by
    `runner`: plan checked across ranks → claim the file → compute this rank's chunks → merge
    the shards → finish (rename a staged store into place) → verify."""
    rank = dist.rank()
    if dist.world_size() > 1:
        _check_same_plan(plan)
    t0 = time.perf_counter()
    job = _Job(out, plan, ExportResult(out, 0, plan.num_chunks, plan=plan), target=out)
    lock = ExportLock(out) if rank == 0 else None
    try:
        _claim(job, lock, overwrite)
        if job.state != "complete":
            _compute(job, runner, spec, progress, on_chunk)
            _merge(job)
        _finish(job)
        job.result.seconds = time.perf_counter() - t0
        if verify and rank == 0:
            job.result.verify = verify_rows(out, runner, verify, seed=seed)
    except OSError as e:  # a full disk or a read-only folder while writing chunks
        kept = "the chunks already written are kept: rerun the same command to resume"
        if job.target != out:
            kept = f"the previous {out.name} is intact and {kept}"
        raise write_error(e, out, where="--out", kept=kept) from None
    finally:
        if job.writer is not None:
            job.writer.close()
        if lock is not None:
            lock.release()
    return job.result


def _claim(job: _Job, lock: ExportLock | None, overwrite: bool) -> None:
    """Rank 0 alone locks, creates or checks the store and absorbs shards left by an earlier
    run; then every rank learns the state, the chunks done and the file written (or the error)."""
    msg = None
    if lock is not None:
        try:
            lock.acquire()
            if overwrite and job.out.exists():
                # the store being replaced stays readable until the new one is complete
                job.target = staging_path(job.out)
                job.state = prepare_staging(job.target, job.out, job.plan)
            else:
                discard_staging(job.out)  # an abandoned --overwrite: `out` stays what it was
                job.state = prepare(job.out, job.plan, overwrite)
            job.writer, job.done = open_for_writing(job.target, job.plan, job.state)
        except LabelenhError as e:
            msg = str(e)
    # the store's schema too: resuming a schema-1 store writes it as schema 1
    msg, job.state, job.done, job.target, job.plan.schema = dist.broadcast_object(
        (msg, job.state, job.done, job.target, job.plan.schema))
    if msg is not None:
        raise LabelenhError(msg)
    job.result.already_complete = job.state == "complete" and job.target == job.out  # else: renamed


def _compute(job: _Job, runner: TeacherRunner, spec: Any, progress: bool,
             on_chunk: Callable[[int], None] | None) -> None:
    """This rank's share of the missing chunks: rank 0 writes into the store, the others each
    into a shard of their own; returns when every rank's chunks are written and closed."""
    rank, world, plan, result = dist.rank(), dist.world_size(), job.plan, job.result
    todo = [c for c in range(plan.num_chunks) if not job.done[c]]
    result.chunks_resumed = plan.num_chunks - len(todo)
    mine = todo[rank::world]  # chunk-aligned: the i-th missing chunk goes to rank i % world
    bar = ProgressBar(progress and rank == 0, plan, result.chunks_resumed if world == 1 else 0,
                      total=None if world == 1 else len(mine),
                      label="export" if world == 1 else f"export (rank 0 of {world})")
    with bar:
        if rank == 0:
            _write_chunks(job.writer, plan, runner, spec, mine, mine, result, bar, on_chunk, rank)
        elif mine:
            _write_shard(job.target, plan, runner, spec, mine, result, bar, on_chunk, rank, world)
    dist.barrier()  # every shard is written and closed


def _merge(job: _Job) -> None:
    """Rank 0 copies the shards in and marks the store complete, only once every chunk is in."""
    if dist.rank() != 0:
        return
    for path in shards.find_shards(job.target):
        job.result.chunks_written += shards.absorb(job.writer, job.plan, path)
    missing = int((~job.writer.done()).sum())
    if missing:
        raise LabelenhError(f"{job.out}: {missing} chunks are still missing after merging the shards; "
                            "rerun the same command to finish the store")
    job.writer.finish()


def _finish(job: _Job) -> None:
    """A staged store replaces the old one in one step; the result learns the store's size."""
    if dist.rank() == 0 and job.target != job.out:
        if job.writer is not None:
            job.writer.close()
            job.writer = None
        os.replace(job.target, job.out)  # the replaced store goes only now, in one step
        fsync(job.out.parent)
    if job.out.exists():
        job.result.size_bytes = job.out.stat().st_size


def _check_same_plan(plan: StorePlan) -> None:
    """Every rank must be about to write the same store (same data, teachers, arguments)."""
    mine = json.dumps(plan.identity(), sort_keys=True)
    every = dist.all_gather_object(mine)
    bad = [r for r, ident in enumerate(every) if ident != every[0]]
    if bad:
        a, b = json.loads(every[0]), json.loads(every[bad[0]])
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise LabelenhError(
            f"rank {bad[0]} would export another store than rank 0 (they differ in: {', '.join(keys)}): "
            "give every process the same dataset, teachers and arguments"
        )


def _write_shard(out: Path, plan: StorePlan, runner: TeacherRunner, spec: Any, chunks: list[int],
                 result: ExportResult, bar: ProgressBar, on_chunk: Callable[[int], None] | None,
                 rank: int, world: int) -> None:
    path = shards.shard_path(out, rank)
    with ExportLock(path):
        sp = shards.create_shard(path, plan, chunks, rank, world)
        writer = StoreWriter(path, sp)
        try:
            _write_chunks(writer, plan, runner, spec, chunks, list(range(len(chunks))), result, bar,
                          on_chunk, rank)
        finally:
            writer.close()


def _check_args(teachers, source, num_classes, num_views, spec, chunk_size, verify, fmt) -> None:
    if not teachers:
        raise LabelenhError("no teacher given: pass --teacher RUN_OR_CHECKPOINT (repeat it for an ensemble)")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names) or any(dedupe_names([n])[0] != n for n in names):
        raise LabelenhError(f"teacher names must be unique and HDF5-safe, got {names}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LabelenhError(f"num_classes must be a positive integer, got {num_classes!r}")
    if len(source) < 1:
        raise LabelenhError("the train split is empty: nothing to export")
    if not isinstance(num_views, int) or num_views < 0:
        raise LabelenhError(f"--views must be >= 0, got {num_views}")
    if num_views and spec is None:
        raise LabelenhError(f"--views {num_views} needs an augmentation: pass --aug crop-flip|mixup|cutmix|ricap")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise LabelenhError(f"--batch-size must be a positive integer, got {chunk_size}")
    if not isinstance(verify, int) or verify < 0:
        raise LabelenhError(f"--verify must be >= 0 rows, got {verify}")
    if fmt.is_topk and fmt.k > num_classes:
        raise LabelenhError(f"--format topk:{fmt.k} exceeds the {num_classes} classes")


def _write_chunks(writer: StoreWriter, plan: StorePlan, runner: TeacherRunner, spec: Any,
                  chunks: list[int], slots: list[int], result: ExportResult, bar: ProgressBar,
                  on_chunk: Callable[[int], None] | None, rank: int = 0) -> None:
    """Compute the store's `chunks` and write chunk chunks[i] as the writer's chunk slots[i]
    (the same numbers in the store itself, 0, 1, ... in a shard)."""
    pending: tuple[int, Future] | None = None
    crash_after = shards.crash_point(rank)

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            c, fut = pending
            pending = None
            fut.result()  # re-raises a failed write
            result.chunks_written += 1
            bar.advance(plan.chunk_bounds(c))
            if on_chunk is not None:
                on_chunk(c)
            if crash_after is not None and result.chunks_written >= crash_after:
                print(f"labelenh: {shards.CRASH_ENV}: rank {rank} dies after {result.chunks_written} chunks",
                      file=sys.stderr, flush=True)
                os._exit(75)

    # One background writer: chunk c is written while chunk c + 1 is computed.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as pool:
        ahead = runner.chunk_source(plan, chunks[0]) if chunks and runner.stored is None else None
        for k, (c, slot) in enumerate(zip(chunks, slots, strict=True)):
            # the next chunk's files decode while this chunk's teachers run
            source, ahead = ahead, (runner.chunk_source(plan, chunks[k + 1])
                                    if k + 1 < len(chunks) and runner.stored is None else None)
            payload = compute_chunk(plan, runner, spec, c, source=source)
            settle()
            pending = (c, pool.submit(writer.write_chunk, slot, *payload))
        settle()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


__all__ = ["ExportResult", "Teacher", "TeacherRunner", "compute_chunk", "export_soft_labels",
           "human_bytes", "load_teachers", "plan_export", "resolve_amp", "staging_path",
           "teacher_from_model", "verify_rows", "weights_sha256", "write_plan"]
