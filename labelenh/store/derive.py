"""Stores made from stores: add a teacher to a store, merge stores, convert a store.

Each writes a new store through the export's own machinery (`export.write_plan`): the same
skeleton, chunk writer, checksums, lock, resume and shards under torchrun. What differs is where
a chunk's outputs come from (`StoredOutputs.compute_chunk`): labels and view recipes are copied
from a source store, a kept teacher's outputs are copied byte for byte when the logit format
stays (re-encoded from its float32 logits otherwise), and a new teacher is run over exactly
the stored recipes. So `add-teacher` gives the bytes an export with every teacher would have,
`merge` those of one export with the teachers of both, and `convert` of an fp32 store those of
an export straight to the new format.

`add-teacher` replaces the store the way `export --overwrite` does: the new store is built in a
hidden sibling and renamed over the old one only when complete, so the old teachers stay
readable throughout and a rerun resumes an interrupted add.

Every derived store records where it came from in its `provenance` attribute: the operation
and, per source store, its path, fingerprint, attribute CRC and a CRC of its chunk checksums.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.store.export import (
    ExportResult,
    Teacher,
    TeacherRunner,
    _pack,
    resolve_amp,
    staging_path,
    write_plan,
)
from labelenh.store.reader import (
    SoftLabelStore,
    check_structure,
    logit_format,
    open_h5,
    read_errors,
    read_root_attrs,
)
from labelenh.store.schema import (
    SCHEMA,
    TEACHER_JSON_ATTRS,
    LogitFormat,
    StorePlan,
    TeacherRecord,
    crc32,
    decode_attrs,
    dedupe_names,
)

# What must agree between stores whose teachers are merged (their recipes are compared too).
SAME_FOR_MERGE = ("dataset", "fingerprint", "num_samples", "num_classes", "num_views", "view_spec",
                  "view_seed", "image_size", "fmt", "chunk_size", "normalization", "compute")


@dataclass(frozen=True)
class Reused:
    """A teacher of an existing store: the store and its name there."""

    path: Path
    name: str


def export_options(path: str | Path) -> dict[str, Any]:
    """The data options a store was exported with (`dataset_meta.options`; {} for a store
    that records none), complete or not, so a resume and a student repeat its images."""
    path = Path(path)
    with read_errors(path), open_h5(path) as f:
        meta = read_root_attrs(f, path).get("dataset_meta") or {}
    opts = meta.get("options") if isinstance(meta, dict) else None
    return dict(opts) if isinstance(opts, dict) else {}


def read_plan(path: str | Path) -> tuple[StorePlan, dict[str, Any]]:
    """The plan a complete store was written with (its teachers' records included), and a
    provenance record of it. Refuses incomplete or damaged stores in one line."""
    path = Path(path)
    with read_errors(path), open_h5(path) as f:
        a = read_root_attrs(f, path)
        check_structure(f, a, path)
        done = f["progress"][()]
        if not bool(a["complete"]) or not done.all():
            raise LabelenhError(f"store {path} is incomplete ({int(done.sum())} of {done.size} chunks): "
                                "finish its export (rerun the same command) first")
        records = []
        for name in a["teachers"]:
            t = decode_attrs(f[f"teachers/{name}"].attrs, TEACHER_JSON_ATTRS)
            records.append(TeacherRecord(name=name, model=str(t.get("model", "unknown")),
                                         sha256=str(t.get("sha256", "unknown")), source=str(t.get("source", "")),
                                         metrics=dict(t.get("metrics") or {})))
        v = int(a["num_views"])
        sums = crc32(np.ascontiguousarray(f["checksums"][()])) if "checksums" in f else None
        plan = StorePlan(
            dataset=a["dataset"], fingerprint=a["fingerprint"], num_samples=int(a["num_samples"]),
            num_classes=int(a["num_classes"]), num_views=v, view_spec=a.get("view_spec") if v else None,
            view_seed=int(a.get("view_seed") or 0), image_size=tuple(a["image_size"]),
            fmt=logit_format(a), chunk_size=int(a["chunk_size"]), teachers=records,
            normalization=a.get("normalization") or {}, compute=a.get("compute") or {},
            recipe_dtype=f["views/recipes"].dtype if v else None, dataset_meta=a.get("dataset_meta") or {},
        )
    source = {"path": str(path.resolve()), "fingerprint": a["fingerprint"], "schema": a["schema"],
              "teachers": list(a["teachers"]), "format": str(plan.fmt), "num_views": v,
              "attrs_crc32": a.get("attrs_crc32"), "checksums_crc32": sums}
    return plan, source


class StoredOutputs:
    """Chunk c of a derived store: labels and recipes from `base` (views [0, V) of each sample,
    V = the new plan's), kept teachers from their stores, new teachers from the runner."""

    def __init__(self, base: Path, reused: dict[str, Reused]) -> None:
        self.base = base
        self.reused = reused
        self._open: dict[Path, SoftLabelStore] = {}

    def store(self, path: Path) -> SoftLabelStore:
        # lazy: each chunk's checksums are checked as it is read, memory stays at one chunk
        if path not in self._open:
            self._open[path] = SoftLabelStore.open(path, preload=False)
        return self._open[path]

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()

    @torch.inference_mode()
    def compute_chunk(self, plan: StorePlan, runner: TeacherRunner, c: int):
        s0, s1 = plan.chunk_bounds(c)
        b, v, cs = s1 - s0, plan.num_views, plan.chunk_size
        base = self.store(self.base)
        idx = np.arange(s0, s1)
        labels = base._take("labels", idx).astype("<i8")
        records, rows = None, None
        if v:
            rows = (idx[:, None] * base.num_views + np.arange(v)).reshape(-1)  # [B*V] flat rows
            records = np.ascontiguousarray(base._take("views/recipes", rows)).reshape(b, v)
        new: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if runner.teachers:  # new teachers see exactly the stored recipes
            what = f"samples {s0}..{s1 - 1}"
            clean = runner.forward(runner.clean_images(torch.from_numpy(idx)), what)
            views: list[list[torch.Tensor]] = [[] for _ in runner.teachers]
            if v:
                rec = base.recipes(torch.from_numpy(np.repeat(idx, v)), torch.from_numpy(np.tile(np.arange(v), b)))
                for i in range(0, b * v, cs):  # the export's fixed blocks of cs (sample, view) pairs
                    for t, z in enumerate(runner.forward(runner.view_images(rec[i:i + cs]), f"views of {what}")):
                        views[t].append(z)
            for t, teacher in enumerate(runner.teachers):
                new[teacher.name] = (clean[t], torch.cat(views[t]) if v else None)
        outputs = {}
        for rec_ in plan.teachers:
            if rec_.name in new:
                zc, zv = new[rec_.name]
                outputs[rec_.name] = _pack(zc, zv, b, v, plan.fmt, plan.num_classes)
            else:
                outputs[rec_.name] = self._kept(plan, rec_.name, c, idx, rows)
        return labels, records, outputs

    def _kept(self, plan: StorePlan, name: str, c: int, idx: np.ndarray, rows: np.ndarray | None):
        from labelenh.store.writer import TeacherChunk

        r = self.reused[name]
        st = self.store(r.path)
        b, v, k = len(idx), plan.num_views, plan.fmt.k
        g = f"teachers/{r.name}"
        same_views = v == st.num_views
        if st.format == plan.fmt and (same_views or not plan.fmt.is_topk):  # the stored bytes
            if not plan.fmt.is_topk:
                return TeacherChunk(st._take(f"{g}/clean", idx),
                                    st._take(f"{g}/views", rows).reshape(b, v, -1) if v else None)
            parts = ("indices", "values", "lse")
            clean = tuple(st._take(f"{g}/clean/{p}", idx) for p in parts)
            views = tuple(st._take(f"{g}/views/{p}", rows).reshape(b, v, *([k] if p != "lse" else []))
                          for p in parts) if v else None
            st._check_chunks(f"{g}/topk_kl", np.array([c * st.attrs["chunk_size"]]))  # same chunks
            kl = tuple(float(x) for x in np.asarray(st._array(f"{g}/topk_kl")[c]))
            return TeacherChunk(clean, views, kl)
        zc = st._gather("clean", idx, [r.name])[:, 0]  # float32 [B, C]
        zv = st._gather("views", rows, [r.name])[:, 0] if v else None  # [B*V, C]
        return _pack(zc, zv, b, v, plan.fmt, plan.num_classes)


def _provenance(operation: str, sources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"operation": operation, "sources": sources, **extra}


def _write(out: Path, plan: StorePlan, runner: TeacherRunner, *, overwrite: bool, progress: bool,
           on_chunk: Any = None) -> ExportResult:
    try:
        return write_plan(out, plan, runner, None, overwrite=overwrite, progress=progress, on_chunk=on_chunk)
    finally:
        runner.stored.close()


def _runner(teachers: list[Teacher], source: Any, plan: StorePlan, device: torch.device, amp: str,
            stored: StoredOutputs) -> TeacherRunner:
    norm = plan.normalization
    return TeacherRunner(teachers, source, num_classes=plan.num_classes, mean=norm.get("mean", [0.0] * 3),
                         std=norm.get("std", [1.0] * 3), device=device, amp=amp, stored=stored)


def add_teacher(store: str | Path, teachers: list[Teacher], source: Any, *, device: str | torch.device = "cpu",
                amp: str = "auto", progress: bool = False, on_chunk: Any = None) -> ExportResult:
    """Run `teachers` over the store's clean samples and stored recipes and add them to it.
    source: the store's train split (its fingerprint is checked)."""
    store = Path(store)
    plan, src = read_plan(store)
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    if not teachers:
        raise LabelenhError("no teacher given: pass --teacher RUN_OR_CHECKPOINT")
    want = {"device": device.type, "amp": amp}
    if plan.compute and plan.compute != want:
        raise LabelenhError(
            f"store {store} was computed with {plan.compute} but this run would use {want}: add the "
            "teacher on the same kind of device and --amp, so that every teacher's logits come alike"
        )
    if source.fingerprint() != plan.fingerprint or len(source) != plan.num_samples:
        raise LabelenhError(
            f"store {store} was made for {plan.dataset} (fingerprint {plan.fingerprint[:8]}…, N={plan.num_samples}) "
            f"but the data given is another (fingerprint {source.fingerprint()[:8]}…, N={len(source)}): pass the "
            "export's --dataset/--val-split/--noise/--image-size"
        )
    old = [t.name for t in plan.teachers]
    known = {t.sha256 for t in plan.teachers}
    for t in teachers:
        if t.record.sha256 in known:
            raise LabelenhError(f"teacher {t.name} is already in store {store} (same sha256): nothing to add")
    names = dedupe_names(old + [t.name for t in teachers])[len(old):]
    for t, name in zip(teachers, names, strict=True):
        t.name = t.record.name = name
    new_plan = dataclasses.replace(plan, teachers=plan.teachers + [t.record for t in teachers], schema=SCHEMA,
                                   provenance=_provenance("add-teacher", [src], added=names))
    stored = StoredOutputs(store, {n: Reused(store, n) for n in old})
    runner = _runner(teachers, source, new_plan, device, amp, stored)
    return _write(store, new_plan, runner, overwrite=True, progress=progress, on_chunk=on_chunk)


def merge_stores(paths: list[str | Path], out: str | Path, *, overwrite: bool = False,
                 progress: bool = False) -> ExportResult:
    """One store with the teachers of every store in `paths` (same data, recipes and format)."""
    paths = [Path(p) for p in paths]
    out = Path(out)
    if len(paths) < 2:
        raise LabelenhError("merge needs at least two stores")
    if any(p.resolve() == out.resolve() for p in paths if out.exists()):
        raise LabelenhError(f"--out {out} is one of the stores being merged: write the merge to a new file")
    read = [read_plan(p) for p in paths]
    first, _ = read[0]
    for p, (plan, _) in zip(paths[1:], read[1:], strict=True):
        for key in SAME_FOR_MERGE:
            a, b = getattr(first, key), getattr(plan, key)
            if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
                raise LabelenhError(
                    f"cannot merge {paths[0]} and {p}: they differ in {key} ({_short(a)} vs {_short(b)}): merge "
                    "stores exported from the same data with the same --aug/--views/--view-seed/--batch-size and "
                    "format (`labelenh store convert` re-encodes one)"
                )
        _same_rows(paths[0], p, first)
    shas: dict[str, Path] = {}
    for p, (plan, _) in zip(paths, read, strict=True):
        for t in plan.teachers:
            if t.sha256 in shas:
                raise LabelenhError(f"teacher {t.name} of {p} is also in {shas[t.sha256]} (same sha256): "
                                    "merge stores of different teachers")
            shas[t.sha256] = p
    pairs = [(p, t) for p, (plan, _) in zip(paths, read, strict=True) for t in plan.teachers]
    names = dedupe_names([t.name for _, t in pairs])
    records = [dataclasses.replace(t, name=n) for (_, t), n in zip(pairs, names, strict=True)]
    reused = {n: Reused(p, t.name) for (p, t), n in zip(pairs, names, strict=True)}
    plan = dataclasses.replace(first, teachers=records, schema=SCHEMA,
                               provenance=_provenance("merge", [s for _, s in read]))
    stored = StoredOutputs(paths[0], reused)
    runner = _runner([], None, plan, torch.device("cpu"), "off", stored)
    return _write(out, plan, runner, overwrite=overwrite, progress=progress)


def convert_store(path: str | Path, out: str | Path, *, fmt: str, teachers: list[str] | None = None,
                  views: int | None = None, overwrite: bool = False, progress: bool = False) -> ExportResult:
    """Re-encode a store (fp16 | fp32 | topk:K) and/or keep some teachers and the first `views`."""
    path, out = Path(path), Path(out)
    if path.resolve() == out.resolve():
        raise LabelenhError(f"--out {out} is the store being converted: write to a new file")
    plan, src = read_plan(path)
    new_fmt = LogitFormat.parse(fmt, plan.num_classes)
    if new_fmt.is_topk and new_fmt.k >= plan.num_classes:
        raise LabelenhError(f"--format {fmt}: top-k keeps fewer than the {plan.num_classes} classes; with K >= C "
                            "use a dense format (fp16 or fp32)")
    have = [t.name for t in plan.teachers]
    keep = have if not teachers else list(dict.fromkeys(teachers))
    unknown = [t for t in keep if t not in have]
    if unknown:
        raise LabelenhError(f"store {path} has no teacher {unknown[0]!r}; it has {', '.join(have)}")
    v = plan.num_views if views is None else int(views)
    if not 0 <= v <= plan.num_views:
        raise LabelenhError(f"--views {views}: the store has {plan.num_views} views per sample; keep 0..{plan.num_views}")
    records = [t for t in plan.teachers if t.name in keep]
    records.sort(key=lambda t: keep.index(t.name))
    new_plan = dataclasses.replace(
        plan, fmt=new_fmt, teachers=records, num_views=v, view_spec=plan.view_spec if v else None,
        recipe_dtype=plan.recipe_dtype if v else None, schema=SCHEMA,
        provenance=_provenance("convert", [src], format=str(new_fmt), teachers=keep, views=v))
    stored = StoredOutputs(path, {t.name: Reused(path, t.name) for t in records})
    runner = _runner([], None, new_plan, torch.device("cpu"), "off", stored)
    return _write(out, new_plan, runner, overwrite=overwrite, progress=progress)


def _same_rows(a: Path, b: Path, plan: StorePlan, block: int = 65536) -> None:
    """Labels and recipes of two stores, byte for byte (a block of samples at a time)."""
    sa, sb = SoftLabelStore.open(a, preload=False), SoftLabelStore.open(b, preload=False)
    try:
        for name in ("labels", "views/recipes") if plan.num_views else ("labels",):
            for s0 in range(0, plan.num_samples, block):
                idx = np.arange(s0, min(plan.num_samples, s0 + block))
                rows = idx if name == "labels" else (idx[:, None] * plan.num_views + np.arange(plan.num_views)).reshape(-1)
                if sa._take(name, rows).tobytes() != sb._take(name, rows).tobytes():
                    what = "hard labels" if name == "labels" else "view recipes"
                    raise LabelenhError(f"cannot merge {a} and {b}: their {what} differ (samples {s0}..): merge "
                                        "stores whose views were drawn alike (same --aug/--views/--view-seed)")
    finally:
        sa.close()
        sb.close()


def _short(x: Any) -> str:
    s = json.dumps(x, sort_keys=True, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def pending_add(store: Path) -> Path | None:
    """The hidden sibling of an interrupted add-teacher (or --overwrite) of `store`, if any."""
    p = staging_path(store)
    return p if p.exists() and os.path.getsize(p) > 0 else None


__all__ = ["Reused", "StoredOutputs", "add_teacher", "convert_store", "merge_stores", "pending_add", "read_plan"]
