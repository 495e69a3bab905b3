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

import hashlib
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
from torch import nn

from labelenh import distributed as dist
from labelenh.errors import LabelenhError
from labelenh.store import shards
from labelenh.store.lock import ExportLock
from labelenh.store.reader import SoftLabelStore, open_h5, read_root_attrs
from labelenh.store.schema import (
    DEFAULT_CHUNK_SIZE,
    LogitFormat,
    StorePlan,
    TeacherRecord,
    dedupe_names,
    index_dtype,
)
from labelenh.store.topk import kl_rows, topk_compress, topk_dense
from labelenh.store.writer import StoreWriter, TeacherChunk, create_store, estimate_size, fsync
from labelenh.utils import write_error

KL_BLOCK_ROWS = 2048  # bounds the float64 temporaries of the top-k error


@dataclass
class Teacher:
    """A teacher ready to export: its (eval-mode) model and what the store records about it."""

    name: str
    model: nn.Module
    record: TeacherRecord


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): identifies in-memory teachers."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d buffers included
    return h.hexdigest()


def teacher_from_model(model: nn.Module, name: str, *, model_name: str | None = None,
                       metrics: dict[str, Any] | None = None, source: str = "") -> Teacher:
    """Wrap an in-memory model (its sha256 is that of its weights)."""
    rec = TeacherRecord(name=name, model=model_name or type(model).__name__,
                        sha256=weights_sha256(model), source=source, metrics=dict(metrics or {}))
    return Teacher(name=name, model=model, record=rec)


def load_teachers(paths: Sequence[str | Path], device: torch.device | str, num_classes: int,
                  *, model_name: str | None = None) -> list[Teacher]:
    """Teachers from run folders or checkpoint files; names from the run/checkpoint, made unique."""
    from labelenh.checkpoint import load_teacher

    loaded = [load_teacher(p, device, model_name=model_name, num_classes=num_classes) for p in paths]
    names = dedupe_names([info.get("name") or Path(str(p)).stem for (_, info), p in zip(loaded, paths, strict=True)])
    out = []
    for (model, info), name in zip(loaded, names, strict=True):
        rec = TeacherRecord(name=name, model=str(info.get("model", "unknown")),
                            sha256=str(info.get("sha256", "unknown")), source=str(info.get("path", "")),
                            metrics=dict(info.get("metrics") or {}))
        out.append(Teacher(name=name, model=model, record=rec))
    return out


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


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast mode actually used: "off" on CPU; "auto" means fp16 on CUDA (fp16 keeps
    3 more mantissa bits of the logits than bf16)."""
    amp = str(amp).lower()
    if amp not in ("auto", "off", "fp16", "bf16"):
        raise LabelenhError(f"--amp {amp!r} is not one of auto, off, fp16, bf16")
    if device.type != "cuda":
        return "off"
    return "fp16" if amp == "auto" else amp


class TeacherRunner:
    """Runs every teacher on normalised blocks of images: eval mode, inference mode, autocast
    on CUDA; refuses NaN/Inf logits and logits of the wrong width."""

    def __init__(self, teachers: list[Teacher], source: Any, *, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device, amp: str,
                 stored: Any = None, workers: int | None = None) -> None:
        from labelenh.data import TensorImages
        from labelenh.data.loader import resolve_workers

        self.workers = resolve_workers(workers)

        self.teachers = teachers
        # a store derived from stores (labelenh.store.derive): chunks come from there
        self.stored = stored
        self.device = device
        self.amp = amp
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        self.num_classes = num_classes
        if device.type == "cuda" and isinstance(source, TensorImages):
            source = source.to(device)  # CIFAR-size data lives on the GPU as uint8
        self.source = source
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        for t in teachers:
            t.model.to(device).eval()
        self._decoders: ThreadPoolExecutor | None = None  # image folders: the chunks' decode threads

    def chunk_source(self, plan: Any, c: int) -> Any:
        """What chunk c's images come from. For an image folder, its files start decoding now in
        background threads, once each (`ChunkImages`): called for chunk c + 1 before chunk c's
        forwards, decoding overlaps the teachers."""
        from labelenh.data.decoded import ChunkImages
        from labelenh.data.folder import FolderImages

        if not isinstance(self.source, FolderImages):
            return self.source
        if self._decoders is None:  # PIL releases the GIL while it decodes: threads suffice
            self._decoders = ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="decode")
        s0, s1 = plan.chunk_bounds(c)
        return ChunkImages(self.source, range(s0, s1), self._decoders)

    def _normalize(self, x: torch.Tensor, owned: bool) -> torch.Tensor:
        """(x / 255 - mean) / std as float32 on the device, in place when that touches no one
        else's tensor: a block of 224x224 images is large, and a normalised copy beside it
        raised the export's peak memory by ~15 %. The same operations in the same order as
        `labelenh.data.normalize`, so the logits are bit-identical."""
        y = x.to(self.device, dtype=torch.float32, non_blocking=True)
        if y is x and not owned:  # already float32 on the device: may be the source's own storage
            y = y.clone()
        return y.div_(255.0).sub_(self.mean).div_(self.std)

    def clean_images(self, idx: torch.Tensor, source: Any = None) -> torch.Tensor:
        src = self.source if source is None else source
        return self._normalize(src.load(idx), owned=False)  # [B, C, H, W]

    def view_images(self, recipes, source: Any = None) -> torch.Tensor:
        from labelenh.views import gather_and_apply

        src = self.source if source is None else source
        x, _ = gather_and_apply(src, recipes, self.num_classes, uint8_ok=True)  # fresh images
        return self._normalize(x, owned=True)

    def forward(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        """float32 logits [B, C] of each teacher, on the device."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for t in self.teachers:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                z = t.model(x)
            z = z.float()
            if z.ndim != 2 or z.shape[0] != x.shape[0] or z.shape[1] != self.num_classes:
                raise LabelenhError(
                    f"teacher {t.name} returned logits of shape {list(z.shape)} for {x.shape[0]} images; "
                    f"expected [{x.shape[0]}, {self.num_classes}]: use a teacher trained on this dataset"
                )
            if not bool(torch.isfinite(z).all()):
                hint = " (try --amp off)" if self.amp_dtype is not None else ""
                raise LabelenhError(
                    f"teacher {t.name} produced NaN/Inf logits for {what}{hint}: check the checkpoint; "
                    "the store stays incomplete"
                )
            outs.append(z)
        return outs


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
    out = Path(out)
    if out.is_dir():
        raise LabelenhError(f"--out {out} is a folder: pass a file path such as {out / 'store.h5'}")
    rank = dist.rank()
    if chunk_size is None:
        # rank 0 decides: the others may not open the store while rank 0 holds it open
        chunk_size = dist.broadcast_object(
            (DEFAULT_CHUNK_SIZE if overwrite else _existing_chunk_size(out)) if rank == 0 else None)
    device = torch.device(device)
    amp = resolve_amp(amp, device)
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


def write_plan(out: Path, plan: StorePlan, runner: TeacherRunner, spec: Any, *, overwrite: bool = False,
               verify: int = 0, progress: bool = False, on_chunk: Callable[[int], None] | None = None,
               seed: int = 0) -> ExportResult:
    """Write (or resume, or find complete) the store `out` of `plan`, its chunks computed by
    `runner`: locking, staging under `overwrite`, shards under torchrun, resume, completion."""
    rank, world = dist.rank(), dist.world_size()
    if world > 1:
        _check_same_plan(plan)
    t0 = time.perf_counter()
    result = ExportResult(out, 0, plan.num_chunks, plan=plan)
    lock = ExportLock(out) if rank == 0 else None
    writer: StoreWriter | None = None
    target = out  # the file written: `out`, or its staging sibling under --overwrite
    try:
        # Rank 0 alone locks, creates or checks the store and absorbs shards left by an earlier
        # run; then every rank learns which chunks are missing.
        msg, state, done = None, "", np.zeros(0, dtype=bool)
        if rank == 0:
            try:
                lock.acquire()
                if overwrite and out.exists():
                    # the store being replaced stays readable until the new one is complete
                    target = staging_path(out)
                    state = _prepare_staging(target, out, plan)
                else:
                    discard_staging(out)  # an abandoned --overwrite: `out` stays what it was
                    state = _prepare(out, plan, overwrite)
                writer, done = _open_for_writing(target, plan, state)
            except LabelenhError as e:
                msg = str(e)
        # the store's schema too: resuming a schema-1 store writes it as schema 1
        msg, state, done, target, plan.schema = dist.broadcast_object((msg, state, done, target, plan.schema))
        if msg is not None:
            raise LabelenhError(msg)
        result.already_complete = state == "complete" and target == out  # else: renamed below
        if state != "complete":
            todo = [c for c in range(plan.num_chunks) if not done[c]]
            result.chunks_resumed = plan.num_chunks - len(todo)
            mine = todo[rank::world]  # chunk-aligned: the i-th missing chunk goes to rank i % world
            bar = _ProgressBar(progress and rank == 0, plan, result.chunks_resumed if world == 1 else 0,
                               total=None if world == 1 else len(mine),
                               label="export" if world == 1 else f"export (rank 0 of {world})")
            with bar:
                if rank == 0:
                    _write_chunks(writer, plan, runner, spec, mine, mine, result, bar, on_chunk, rank)
                elif mine:
                    _write_shard(target, plan, runner, spec, mine, result, bar, on_chunk, rank, world)
            dist.barrier()  # every shard is written and closed
            if rank == 0:
                for path in shards.find_shards(target):
                    result.chunks_written += shards.absorb(writer, plan, path)
                missing = int((~writer.done()).sum())
                if missing:
                    raise LabelenhError(f"{out}: {missing} chunks are still missing after merging the shards; "
                                        "rerun the same command to finish the store")
                writer.finish()  # complete only now that every chunk of every shard is in
        if rank == 0 and target != out:
            if writer is not None:
                writer.close()
                writer = None
            os.replace(target, out)  # the replaced store goes only now, in one step
            fsync(out.parent)
        if out.exists():
            result.size_bytes = out.stat().st_size
        result.seconds = time.perf_counter() - t0
        if verify and rank == 0:
            result.verify = verify_rows(out, runner, verify, seed=seed)
    except OSError as e:  # a full disk or a read-only folder while writing chunks
        kept = "the chunks already written are kept: rerun the same command to resume"
        if target != out:
            kept = f"the previous {out.name} is intact and {kept}"
        raise write_error(e, out, where="--out", kept=kept) from None
    finally:
        if writer is not None:
            writer.close()
        if lock is not None:
            lock.release()
    return result


def _open_for_writing(out: Path, plan: StorePlan, state: str) -> tuple[StoreWriter | None, np.ndarray]:
    """(writer or None when complete, bool [chunks] done) for a prepared store; the finished
    chunks of shards that an interrupted multi-process run left are copied in first."""
    found = shards.find_shards(out)
    if state != "resume":  # a new (or overwritten) store, or a complete one: shards are stale
        for path in found:
            shards.discard(path)
        return None if state == "complete" else StoreWriter(out, plan), np.full(
            plan.num_chunks, state == "complete", dtype=bool)
    writer = StoreWriter(out, plan)
    try:
        for path in found:
            shards.absorb(writer, plan, path)
        return writer, writer.done()
    except BaseException:
        writer.close()
        raise


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
                 result: ExportResult, bar: _ProgressBar, on_chunk: Callable[[int], None] | None,
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


def _existing_chunk_size(out: Path) -> int:
    """The chunk size of the store at `out`, so that a resume needs no --batch-size."""
    if not out.exists():
        return DEFAULT_CHUNK_SIZE
    try:
        with open_h5(out) as f:
            return int(read_root_attrs(f, out)["chunk_size"])
    except (LabelenhError, KeyError, TypeError, ValueError):
        return DEFAULT_CHUNK_SIZE  # not a store: _prepare says so


def staging_path(out: Path) -> Path:
    """Where `--overwrite` builds the new store while `out` still holds the old one."""
    return out.with_name(f".{out.name}.overwrite.h5")


def _prepare_staging(staging: Path, out: Path, plan: StorePlan) -> str:
    """Like `_prepare` for the staging file of an `--overwrite` export: an interrupted one with
    the same arguments is resumed, anything else there is started over."""
    if staging.exists():
        try:
            return _prepare(staging, plan, overwrite=False)
        except LabelenhError:
            pass  # other arguments, or not a store: start over
    create_store(staging, plan, report_as=out)
    return "new"


def discard_staging(out: Path) -> None:
    """Remove what an abandoned `--overwrite` of `out` left (its staging store and shards)."""
    staging = staging_path(out)
    for path in shards.find_shards(staging):
        shards.discard(path)
    staging.unlink(missing_ok=True)


def _prepare(out: Path, plan: StorePlan, overwrite: bool) -> str:
    """Create the skeleton, or check that the existing file is this export: "new" | "resume" |
    "complete"."""
    if overwrite or not out.exists():
        create_store(out, plan)
        return "new"
    try:
        with open_h5(out) as f:
            attrs = read_root_attrs(f, out)
    except LabelenhError as e:
        raise LabelenhError(f"{out} exists and is not a resumable store ({e}); pass --overwrite to replace it") from None
    old, new = attrs.get("identity") or {}, json.loads(json.dumps(plan.identity()))
    from labelenh.views.spec import same_spec

    if same_spec(old.get("view_spec"), new.get("view_spec")):  # a schema-1 dict names every op's options
        old["view_spec"] = new["view_spec"]
    if attrs.get("schema") == 1 and {**new, "schema": 1} == old:
        plan.schema = 1  # an earlier version's store: finish it in its own layout (no checksums)
        new = old
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise LabelenhError(
            f"{out} was started with different arguments (they differ in: {', '.join(diff)}): "
            "rerun with the same arguments to resume it, or pass --overwrite to start over"
        )
    return "complete" if bool(attrs.get("complete")) else "resume"


def _write_chunks(writer: StoreWriter, plan: StorePlan, runner: TeacherRunner, spec: Any,
                  chunks: list[int], slots: list[int], result: ExportResult, bar: _ProgressBar,
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


@torch.inference_mode()
def compute_chunk(plan: StorePlan, runner: TeacherRunner, spec: Any, c: int, source: Any = None
                  ) -> tuple[np.ndarray, np.ndarray | None, dict[str, TeacherChunk]]:
    """(labels [B], recipe records [B, V] or None, per-teacher outputs) of chunk c; `source`:
    `runner.chunk_source(plan, c)` when it was started ahead."""
    if runner.stored is not None:
        return runner.stored.compute_chunk(plan, runner, c)
    src = runner.chunk_source(plan, c) if source is None else source
    s0, s1 = plan.chunk_bounds(c)
    b, v, cs = s1 - s0, plan.num_views, plan.chunk_size
    idx = torch.arange(s0, s1)
    labels = runner.source.labels[idx.to(runner.source.labels.device)].cpu().numpy().astype("<i8")
    clean = runner.forward(runner.clean_images(idx, src), f"samples {s0}..{s1 - 1}")  # T x [B, C]
    views: list[list[torch.Tensor]] = [[] for _ in runner.teachers]
    records = None
    if v:
        from labelenh.views import sample_views

        rec = sample_views(plan.num_samples, v, spec, plan.view_seed, plan.image_size, samples=idx,
                           source=src)
        records = rec.to_struct(spec).reshape(b, v)
        for i in range(0, b * v, cs):  # fixed blocks of cs (sample, view) pairs
            zs = runner.forward(runner.view_images(rec[i:i + cs], src), f"views of samples {s0}..{s1 - 1}")
            for t, z in enumerate(zs):
                views[t].append(z)
    outputs = {}
    for t, teacher in enumerate(runner.teachers):
        zv = torch.cat(views[t]) if v else None  # [B*V, C]
        outputs[teacher.name] = _pack(clean[t], zv, b, v, plan.fmt, plan.num_classes)
    return labels, records, outputs


def _pack(zc: torch.Tensor, zv: torch.Tensor | None, b: int, v: int, fmt: LogitFormat, c: int) -> TeacherChunk:
    if not fmt.is_topk:
        dt = torch.float16 if fmt.kind == "fp16" else torch.float32
        clean = zc.to(dt).cpu().numpy()
        views = zv.to(dt).cpu().numpy().reshape(b, v, c) if zv is not None else None
        if not all(np.isfinite(a).all() for a in (clean, views) if a is not None):  # fp16 overflow
            raise LabelenhError("teacher logits exceed the float16 range (|z| > 65504), which a fp16 store "
                                "cannot hold: export with --format fp32 or topk:K")
        return TeacherChunk(clean, views)
    idt = index_dtype(c)

    def compress(z: torch.Tensor, lead: tuple[int, ...]) -> tuple[tuple[np.ndarray, ...], float]:
        idx, lp, lse = topk_compress(z, fmt.k)
        kl = 0.0
        for i in range(0, z.shape[0], KL_BLOCK_ROWS):
            sl = slice(i, i + KL_BLOCK_ROWS)
            kl += float(kl_rows(z[sl], topk_dense(idx[sl], lp[sl], lse[sl], c)).sum())
        arrs = (idx.cpu().numpy().astype(idt).reshape(*lead, fmt.k),
                lp.cpu().numpy().reshape(*lead, fmt.k), lse.cpu().numpy().reshape(lead))
        return arrs, kl

    clean, kl_c = compress(zc, (b,))
    views, kl_v = compress(zv, (b, v)) if zv is not None else (None, 0.0)
    return TeacherChunk(clean, views, (kl_c, kl_v))


# ---- verification ----------------------------------------------------------------------------

def _tolerance(fmt: LogitFormat, compute: dict[str, str]) -> tuple[float, float]:
    """(atol, rtol) between stored logits and a re-run in other batch shapes."""
    atol, rtol = 1e-4, 1e-4  # CPU fp32 kernels differ by batch shape in the last bits
    if compute.get("device") == "cuda":
        atol, rtol = {"off": (5e-3, 5e-3), "fp16": (5e-2, 2e-2), "bf16": (0.25, 0.05)}[compute.get("amp", "off")]
    if fmt.kind != "fp32":
        atol, rtol = atol + 1e-3, rtol + 2e-3  # fp16 storage rounds to 2^-11 relative
    return atol, rtol


@torch.inference_mode()
def verify_rows(path: str | Path, runner: TeacherRunner, k: int, *, seed: int = 0) -> dict[str, Any]:
    """Re-run the teachers on k random stored samples (clean, and one random view each, replayed
    from the stored recipe) and compare with the stored logits. Raises LabelenhError on mismatch."""
    from labelenh.utils import generator

    store = SoftLabelStore.open(path, preload=False)
    n, v, cs = store.num_samples, store.num_views, int(store.attrs["chunk_size"])
    g = generator(seed, "verify-rows")
    samples = torch.randperm(n, generator=g)[: min(k, n)].sort().values
    atol, rtol = _tolerance(store.format, store.attrs.get("compute") or {})
    checks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def fresh(make) -> torch.Tensor:  # [K, M, C]
        parts = [torch.stack(runner.forward(make(sl), "verification rows"), dim=1).cpu()
                 for sl in torch.arange(len(samples)).split(cs)]
        return torch.cat(parts)

    def mask(part: str, views: torch.Tensor | None) -> torch.Tensor | None:
        # top-k: only the stored classes are exact; compare the logits there
        if not store.format.is_topk:
            return None
        rows = samples.numpy() if views is None else samples.numpy() * v + views.numpy()
        m = torch.zeros(len(samples), len(store.teachers), store.num_classes, dtype=torch.bool)
        for t, name in enumerate(store.teachers):
            idx = store._take(f"teachers/{name}/{part}/indices", rows).astype(np.int64)
            m[:, t].scatter_(1, torch.from_numpy(idx), True)
        return m

    checks.append((store.clean_logits(samples), fresh(lambda sl: runner.clean_images(samples[sl])),
                   mask("clean", None)))
    if v:
        views = torch.randint(v, (len(samples),), generator=g)
        rec = store.recipes(samples, views)
        checks.append((store.view_logits(samples, views), fresh(lambda sl: runner.view_images(rec[sl])),
                       mask("views", views)))
    max_diff, worst = 0.0, 0.0
    for stored, new, m in checks:
        diff = (stored - new).abs()
        ratio = diff / (atol + rtol * new.abs())
        if m is not None:
            diff, ratio = diff[m], ratio[m]
        max_diff = max(max_diff, float(diff.max()) if diff.numel() else 0.0)
        worst = max(worst, float(ratio.max()) if ratio.numel() else 0.0)
    store.close()
    report = {"rows": len(samples), "views": bool(v), "max_abs_diff": max_diff,
              "atol": atol, "rtol": rtol, "ok": worst <= 1.0}
    if not report["ok"]:
        raise LabelenhError(
            f"--verify: stored logits of {path} differ from a re-run of the teachers on {len(samples)} rows "
            f"(max abs diff {max_diff:.3g}, beyond atol {atol:g} + rtol {rtol:g}): re-export it with --overwrite"
        )
    return report


# ---- small helpers ---------------------------------------------------------------------------

class _ProgressBar:
    """A rich progress bar over chunks (samples/s), or nothing."""

    def __init__(self, enabled: bool, plan: StorePlan, done: int, *, total: int | None = None,
                 label: str = "export") -> None:
        self.enabled = enabled
        self.plan = plan
        self.done = done
        self.total = plan.num_chunks if total is None else total
        self.label = label
        self._p = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn(f"[bold]{self.label}[/] chunks"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task("export", total=self.total, completed=self.done, rate="")
            self._t0, self._n = time.perf_counter(), 0
        return self

    def advance(self, bounds: tuple[int, int]) -> None:
        if self._p is None:
            return
        self._n += bounds[1] - bounds[0]
        rate = self._n / max(time.perf_counter() - self._t0, 1e-9)
        self._p.update(self._task, advance=1, rate=f"{rate:,.0f} samples/s")

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


__all__ = ["ExportResult", "Teacher", "TeacherRunner", "export_soft_labels", "human_bytes",
           "load_teachers", "plan_export", "teacher_from_model", "verify_rows", "weights_sha256",
           "write_plan"]
