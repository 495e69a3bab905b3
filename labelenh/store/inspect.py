"""`store info` (what a store holds, what it costs) and `store verify` (is it sound and does it
belong to this dataset). Both read incomplete stores too; verify reports them as bad."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from labelenh.errors import LabelenhError
from labelenh.store.checks import (
    check_structure,
    checksum_problems,
    content_problems,
    has_checksums,
    logit_format,
    open_h5,
    read_errors,
    read_root_attrs,
)
from labelenh.store.schema import TEACHER_JSON_ATTRS, bytes_per_view, decode_attrs


def store_info(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary: schema, sizes, views, format, teachers and their metrics, top-k error."""
    path = Path(path)
    with read_errors(path):
        return _store_info(path)


def _store_info(path: Path) -> dict[str, Any]:
    with open_h5(path, locking=False) as f:  # also while an export runs: shows its progress
        a = read_root_attrs(f, path)
        fmt = logit_format(a)
        n, c, v = int(a["num_samples"]), int(a["num_classes"]), int(a["num_views"])
        prog = f["progress"][()] if "progress" in f else np.zeros(0)
        recipe_size = f["views/recipes"].dtype.itemsize if v and "views/recipes" in f else 0
        teachers = []
        for name in a["teachers"]:
            ta = decode_attrs(f[f"teachers/{name}"].attrs, TEACHER_JSON_ATTRS) if f"teachers/{name}" in f else {}
            teachers.append({
                "name": name, "model": ta.get("model"), "sha256": ta.get("sha256"),
                "acc1": _num(ta.get("acc1")), "nll": _num(ta.get("nll")), "ece": _num(ta.get("ece")),
                "topk_kl_clean": _num(ta.get("topk_kl_clean")), "topk_kl_views": _num(ta.get("topk_kl_views")),
            })
    per = bytes_per_view(fmt, c, recipe_size)
    spec = a.get("view_spec")
    return {
        "path": str(path), "size_bytes": path.stat().st_size, "schema": a["schema"],
        "dataset": a["dataset"], "fingerprint": a["fingerprint"], "num_samples": n,
        "num_classes": c, "num_views": v,
        "view_spec": spec, "view_seed": a.get("view_seed") if v else None,
        "format": str(fmt), "chunk_size": a["chunk_size"],
        "chunks_done": int(prog.sum()), "num_chunks": int(a["num_chunks"]),
        "complete": bool(a["complete"]), "created": a.get("created"),
        "labelenh_version": a.get("labelenh_version"), "git_commit": a.get("git_commit"),
        "compute": a.get("compute"), "teachers": teachers,
        "checksum": a.get("checksum") if has_checksums(a) else None,
        "provenance": a.get("provenance"),
        "pending": _pending(path),
        "bytes_per_view": {**per, "total": per["per_teacher"] * len(teachers) + per["recipe"]} if v else None,
        "bytes_per_clean_row": per["per_teacher"] * len(teachers),
    }


def format_info(info: dict[str, Any]) -> str:
    """Plain-text rendering of `store_info` for the terminal."""
    from labelenh.store.progress import human_bytes

    spec = info["view_spec"]
    views = "none (clean logits only)"
    if info["num_views"]:
        from labelenh.views import ViewSpec

        views = f"{info['num_views']} x {ViewSpec.from_dict(spec).describe()}, seed {info['view_seed']}"
    lines = [
        f"store        {info['path']}",
        f"schema       labelenh.softlabels v{info['schema']}  (labelenh {info['labelenh_version']}, commit {str(info['git_commit'])[:12]}, created {info['created']})",
        f"dataset      {info['dataset']}  fingerprint {info['fingerprint'][:16]}…",
        f"samples      N={info['num_samples']}  classes C={info['num_classes']}",
        f"views        {views}",
        f"format       {info['format']}  (chunks of {info['chunk_size']} samples, computed on {_compute(info['compute'])})",
        f"size         {human_bytes(info['size_bytes'])} ({info['size_bytes']:,} bytes) on disk",
    ]
    if info["bytes_per_view"]:
        b = info["bytes_per_view"]
        lines.append(f"bytes/view   {b['total']} = {b['per_teacher']} per teacher x {len(info['teachers'])} + {b['recipe']} recipe")
    lines.append(f"complete     {'yes' if info['complete'] else 'NO'} ({info['chunks_done']}/{info['num_chunks']} chunks)")
    lines.append("checksums    " + (f"{info['checksum']} per chunk and dataset (`labelenh store verify` checks them)"
                                    if info.get("checksum") else
                                    "none (a schema 1 store: bit rot cannot be detected; re-export to add them)"))
    if info.get("provenance"):
        p = info["provenance"]
        lines.append(f"made by      store {p.get('operation')} from " + ", ".join(
            f"{s.get('path')} ({', '.join(s.get('teachers') or [])})" for s in p.get("sources") or []))
    if info.get("pending"):
        lines.append(f"pending      an interrupted add-teacher or --overwrite: {info['pending']} "
                     "(rerun the same command to finish it; this store is unchanged until then)")
    lines.append("teachers")
    topk = info["format"].startswith("topk")
    for t in info["teachers"]:
        row = (f"  {t['name']:<24} {t['model'] or '?':<16} acc1 {_fmt(t['acc1'])}  nll {_fmt(t['nll'])}  "
               f"ece {_fmt(t['ece'])}  sha256 {str(t['sha256'])[:12]}")
        if topk:
            row += f"  top-k KL clean {_fmt(t['topk_kl_clean'], 3)} views {_fmt(t['topk_kl_views'], 3)} nats"
        lines.append(row)
    return "\n".join(lines)


def verify_store(path: str | Path, source: Any = None, *, num_classes: int | None = None,
                 dataset: str | None = None) -> dict[str, Any]:
    """Structure, completeness, every written chunk's checksums (schema 2), fingerprint/N/C/labels
    against `source` (skipped when None), a NaN/Inf scan of every logit, index ranges. Raises
    LabelenhError naming every problem on one line."""
    path = Path(path)
    with read_errors(path):
        return _verify_store(path, source, num_classes=num_classes, dataset=dataset)


def _verify_store(path: Path, source: Any, *, num_classes: int | None, dataset: str | None) -> dict[str, Any]:
    problems: list[str] = []
    with open_h5(path) as f:
        a = read_root_attrs(f, path)
        check_structure(f, a, path)  # a damaged layout stops here: nothing else can be trusted
        n, c, v = int(a["num_samples"]), int(a["num_classes"]), int(a["num_views"])
        prog = f["progress"][()]
        if not bool(a["complete"]) or not prog.all():
            problems.append(f"incomplete ({int(prog.sum())}/{prog.size} chunks; rerun the export to finish it)")
        fp = source.fingerprint() if source is not None else a["fingerprint"]
        if source is None:
            pass  # integrity only: the caller named no dataset
        elif fp != a["fingerprint"] or len(source) != n or num_classes != c:
            problems.append(
                f"it was made for {a['dataset']} (fingerprint {a['fingerprint'][:8]}…, N={n}, C={c}) but the dataset is "
                f"{dataset} (fingerprint {fp[:8]}…, N={len(source)}, C={num_classes}); pass the matching "
                "--dataset/--val-split/--noise or re-export"
            )
        elif prog.size:
            stored = f["labels"][()]
            want = source.labels.cpu().numpy()
            written = np.repeat(prog.astype(bool), int(a["chunk_size"]))[:n]
            if not np.array_equal(stored[written], want[written]):
                problems.append("stored labels differ from the dataset's")
        for t in a["teachers"]:
            try:
                decode_attrs(f[f"teachers/{t}"].attrs, TEACHER_JSON_ATTRS)
            except LabelenhError as e:
                problems.append(f"teacher {t}: {e}")
        damaged = checksum_problems(f.__getitem__, a)  # every written chunk of every dataset
        problems += damaged
        if not damaged:  # damaged bytes may hold anything: the checksum line says it all
            found, scanned = content_problems(f.__getitem__, a)  # NaN/Inf, index ranges, recipes
            problems += found
    if problems:
        fix = (" (bit rot or a bad copy): restore it from a good copy or re-export it with --overwrite"
               if damaged else "")
        raise LabelenhError(f"store {path} failed verification: {'; '.join(problems)}{fix}")
    checks = (f"crc32 of {int(prog.sum())} chunks" if has_checksums(a) else
              "none: a schema 1 store carries no checksums, so bit rot cannot be detected; re-export it to add them")
    return {"path": str(path), "ok": True, "num_samples": n, "num_classes": c, "num_views": v,
            "values_scanned": scanned, "fingerprint": a["fingerprint"], "schema": a["schema"],
            "checksums": checks}


def _pending(path: Path) -> str | None:
    from labelenh.store.prepare import staging_path

    p = staging_path(path)
    return str(p) if p.exists() else None


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if digits == 3 else f"{x:.{digits}f}"


def _compute(c: Any) -> str:
    if not isinstance(c, dict):
        return "?"
    amp = c.get("amp", "off")
    return f"{c.get('device', '?')}" + ("" if amp == "off" else f" with {amp} autocast")


__all__ = ["format_info", "store_info", "verify_store"]
