"""Opening a store file and checking it before anything trusts it: the error boundary around
every read, the root attributes (types, ranges, checksum), the datasets they promise (shapes,
dtypes, inside the file), the chunks' CRC-32s and the arrays' contents. Shared by the reader,
`store info`/`store verify` and the stores derived from stores."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labelenh.errors import LabelenhError
from labelenh.store.schema import (
    CHECKSUM,
    FORMAT,
    READ_SCHEMAS,
    LogitFormat,
    attrs_digest,
    checksummed,
    chunk_rows,
    crc32,
    decode_attrs,
    teacher_datasets,
)

# What HDF5, h5py and numpy raise on a damaged or hand-made file, wherever they meet it: inside
# `read_errors` each becomes one LabelenhError line.
READ_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError,
               UnicodeError, OverflowError, MemoryError, EOFError)


@contextmanager
def read_errors(path: str | Path) -> Iterator[None]:
    """The error boundary around every read of a store: any h5py/HDF5/numpy error from a
    damaged or malformed file becomes one LabelenhError naming the file and the fix."""
    try:
        yield
    except LabelenhError:
        raise
    except READ_ERRORS as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise LabelenhError(
            f"store {path} is damaged and cannot be read ({type(e).__name__}: {first or 'no detail'}): "
            "restore it from a good copy or re-export it with --overwrite"
        ) from None


def open_h5(path: str | Path, mode: str = "r", *, locking: bool | None = None) -> h5py.File:
    """h5py.File, with every way of failing turned into one LabelenhError line.

    locking=False lets `store info` read a store while an export writes it (the writer only
    overwrites raw bytes and flushes each chunk's progress flag)."""
    p = Path(path)
    if not p.exists():
        raise LabelenhError(f"store {p} does not exist: write it with `labelenh export-soft-labels --out {p}`")
    if p.is_dir():
        raise LabelenhError(f"store {p} is a folder, not a file: pass the .h5 file")
    try:
        return h5py.File(p, mode) if locking is None else h5py.File(p, mode, locking=locking)
    except OSError as e:
        msg = str(e)
        if "truncated" in msg:
            raise LabelenhError(
                f"store {p} is truncated ({p.stat().st_size} bytes; an interrupted copy?): copy it again or re-export it"
            ) from None
        if "signature" in msg:
            raise LabelenhError(f"{p} is not a labelenh soft-label store (not an HDF5 file): pass a file written by export-soft-labels") from None
        if "lock" in msg:
            raise LabelenhError(f"store {p} is open for writing by another process: wait for the export to finish") from None
        raise LabelenhError(f"cannot read store {p} ({msg.splitlines()[0]}): re-export it") from None


def read_root_attrs(f: h5py.File, path: str | Path) -> dict[str, Any]:
    """Root attributes, checked to be a labelenh store of a schema this code reads."""
    try:
        attrs = decode_attrs(f.attrs)
    except LabelenhError as e:
        raise LabelenhError(f"store {path}: {e}") from None
    if attrs.get("format") != FORMAT:
        raise LabelenhError(
            f"{path} is not a labelenh soft-label store (HDF5 without format={FORMAT!r}): pass a file written by export-soft-labels"
        )
    if attrs.get("schema") not in READ_SCHEMAS:
        raise LabelenhError(
            f"store {path} has schema {attrs.get('schema')!r} but this labelenh reads schemas "
            f"{', '.join(map(str, READ_SCHEMAS))}: open it with the labelenh that wrote it, or re-export it"
        )
    if attrs["schema"] >= 2:
        if attrs.get("checksum") != CHECKSUM:
            raise LabelenhError(f"store {path}: attribute checksum = {attrs.get('checksum')!r} is not "
                                f"{CHECKSUM!r}: the file is damaged; re-export it")
        stored = attrs.get("attrs_crc32")
        if not isinstance(stored, int) or isinstance(stored, bool) or stored != attrs_digest(f):
            raise LabelenhError(
                f"store {path}: its attributes fail their checksum (attrs_crc32): the file is damaged "
                "(bit rot or a bad copy); restore it from a good copy or re-export it with --overwrite"
            )
    missing = [k for k in ("num_samples", "num_classes", "num_views", "teachers", "logit_format",
                           "topk", "chunk_size", "num_chunks", "fingerprint", "dataset", "complete")
               if k not in attrs]
    if missing:
        raise LabelenhError(f"store {path} lacks attributes {missing}: the file is damaged; re-export it")
    _check_attrs(attrs, path)
    return attrs


def _check_attrs(a: dict[str, Any], path: str | Path) -> None:
    """Types, ranges and consistency of the root attributes: a damaged or hand-edited file is
    refused here with one line, before any number in it sizes an array or an index."""
    from labelenh.store.schema import sanitize_name

    def bad(key: str, want: str) -> LabelenhError:
        got = repr(a.get(key))
        got = got if len(got) <= 60 else got[:57] + "..."
        return LabelenhError(f"store {path}: attribute {key} = {got} is not {want}: the file is damaged; re-export it")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key, lo in (("num_samples", 1), ("num_classes", 2), ("num_views", 0), ("topk", 0),
                    ("chunk_size", 1), ("num_chunks", 1)):
        if not is_int(a[key]) or a[key] < lo:
            raise bad(key, f"an integer >= {lo}")
    n, cs = a["num_samples"], a["chunk_size"]
    if a["num_chunks"] != -(-n // cs):
        raise bad("num_chunks", f"ceil(num_samples / chunk_size) = {-(-n // cs)}")
    if a["logit_format"] not in ("fp16", "fp32", "topk"):
        raise bad("logit_format", "fp16, fp32 or topk")
    if a["logit_format"] == "topk" and not 1 <= a["topk"] <= a["num_classes"]:
        raise bad("topk", f"in [1, num_classes = {a['num_classes']}]")
    t = a["teachers"]
    if (not isinstance(t, list) or not t or not all(isinstance(x, str) and x == sanitize_name(x) for x in t)
            or len(set(t)) != len(t)):
        raise bad("teachers", "a JSON list of distinct teacher names")
    for key in ("fingerprint", "dataset"):
        if not isinstance(a[key], str):
            raise bad(key, "a string")
    if not isinstance(a["complete"], bool):
        raise bad("complete", "a boolean")
    size = a.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v >= 1 for v in size)):
        raise bad("image_size", "a JSON list [H, W] of positive integers")
    if a["num_views"]:
        if not is_int(a.get("view_seed")):
            raise bad("view_seed", "an integer")
        if not isinstance(a.get("view_spec"), dict):
            raise bad("view_spec", "a JSON object")
        from labelenh.views import ViewSpec

        try:
            ViewSpec.from_dict(a["view_spec"])
        except (LabelenhError, TypeError) as e:
            raise LabelenhError(f"store {path}: attribute view_spec is not a valid view spec ({e}): "
                                "the file is damaged; re-export it") from None


def expected_datasets(attrs: dict[str, Any]) -> list[tuple[str, tuple[int, ...], np.dtype | None]]:
    """(path, shape, dtype) the attributes promise; dtype None = checked elsewhere (recipes)."""
    n, c, v = int(attrs["num_samples"]), int(attrs["num_classes"]), int(attrs["num_views"])
    fmt = logit_format(attrs)
    chunks = int(attrs["num_chunks"])
    out: list[tuple[str, tuple[int, ...], np.dtype | None]] = [
        ("labels", (n,), np.dtype("<i8")), ("progress", (chunks,), np.dtype("u1"))]
    if v:
        out.append(("views/recipes", (n, v), None))
    for name in attrs["teachers"]:
        out += teacher_datasets(name, n, c, v, fmt, chunks)
    if has_checksums(attrs):
        out.append(("checksums", (chunks, len(checksummed(out))), np.dtype("<u4")))
    return out


def has_checksums(attrs: dict[str, Any]) -> bool:
    return int(attrs["schema"]) >= 2


def checksum_problems(get: Callable[[str], Any], attrs: dict[str, Any],
                      chunks: np.ndarray | None = None) -> list[str]:
    """Chunks whose bytes in some dataset differ from their stored CRC-32 (every written chunk,
    or only `chunks`). `get(name)` returns an h5py dataset, a memory map or an array; a dataset
    is read a block of whole chunks at a time, so memory stays bounded."""
    if not has_checksums(attrs):
        return []
    n, cs = int(attrs["num_samples"]), int(attrs["chunk_size"])
    sums = np.asarray(get("checksums")[()], dtype=np.uint32)  # [chunks, D]
    written = np.asarray(get("progress")[()]).astype(bool)
    todo = np.flatnonzero(written) if chunks is None else np.asarray(chunks, dtype=np.int64)
    problems: list[str] = []
    for d, (name, _, _) in enumerate(checksummed(expected_datasets(attrs))):
        arr = get(name)
        per_chunk = max(1, _rows_per_read(arr) // (1 if name.endswith("/topk_kl") else cs))
        for i in range(0, len(todo), per_chunk):
            group = todo[i:i + per_chunk]
            first, _ = chunk_rows(name, int(group[0]), cs, n)
            _, last = chunk_rows(name, int(group[-1]), cs, n)
            block = np.ascontiguousarray(arr[first:last])
            for c in group:
                a, b = chunk_rows(name, int(c), cs, n)
                if crc32(block[a - first:b - first]) != int(sums[c, d]):
                    problems.append(chunk_damage(name, int(c), cs, n))
    return problems


def chunk_damage(name: str, c: int, cs: int, n: int) -> str:
    a, b = c * cs, min(n, (c + 1) * cs)
    return f"chunk {c} (samples {a}..{b - 1}) of /{name} fails its checksum"


def damage_error(path: str | Path, problems: list[str]) -> LabelenhError:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return LabelenhError(
        f"store {path} is damaged: {shown} (bit rot or a bad copy): restore it from a good copy or "
        "re-export it with --overwrite (`labelenh store verify` lists every problem)"
    )


def logit_format(attrs: dict[str, Any]) -> LogitFormat:
    kind = attrs["logit_format"]
    return LogitFormat("topk", int(attrs["topk"])) if kind == "topk" else LogitFormat(kind)


def check_structure(f: h5py.File, attrs: dict[str, Any], path: str | Path) -> None:
    """Every promised dataset exists with its shape and dtype, and lies inside the file."""
    size = os.path.getsize(f.filename)
    for name, shape, dtype in expected_datasets(attrs):
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise LabelenhError(f"store {path} lacks dataset /{name}: the file is damaged; re-export it")
        if tuple(ds.shape) != tuple(shape) or (dtype is not None and ds.dtype != dtype):
            raise LabelenhError(
                f"store {path}: /{name} is {ds.dtype}{list(ds.shape)}, expected {dtype}{list(shape)}: the file is damaged; re-export it"
            )
        off = ds.id.get_offset()
        if off is not None and off + ds.id.get_storage_size() > size:
            raise LabelenhError(f"store {path} is truncated (/{name} ends past the end of the file): copy it again or re-export it")
    if int(attrs["num_views"]):
        from labelenh.views import ViewSpec, recipe_dtype

        want = recipe_dtype(ViewSpec.from_dict(attrs["view_spec"]))
        if f["views/recipes"].dtype != want:
            raise LabelenhError(f"store {path}: /views/recipes has dtype {f['views/recipes'].dtype}, expected {want}: re-export it")


SCAN_BYTES = 64 << 20  # rows read at a time by the content scan


def _rows_per_read(arr: Any, itemsize: int | None = None) -> int:
    row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * (itemsize or arr.dtype.itemsize))
    return max(1, SCAN_BYTES // row)


def content_problems(get: Any, attrs: dict[str, Any]) -> tuple[list[str], int]:
    """(problems, logits scanned) of a store's arrays: NaN/Inf logits, labels or top-k class ids
    out of range, view recipes that cannot come from the store's view spec (a crop offset beyond
    the pad, a partner index >= N, a box outside the image). `get(name)` returns an h5py dataset
    or a numpy array; both are read in blocks of rows, so memory stays bounded."""
    from labelenh.views import Recipes, ViewSpec

    n, c, v = int(attrs["num_samples"]), int(attrs["num_classes"]), int(attrs["num_views"])
    fmt = logit_format(attrs)
    problems: list[str] = []
    scanned = 0
    labels = get("labels")
    lo_hi = [(int(b.min()), int(b.max())) for b in _blocks(labels) if b.size]
    if lo_hi and (min(x for x, _ in lo_hi) < 0 or max(y for _, y in lo_hi) >= c):
        problems.append(f"/labels holds class ids outside [0, {c})")
    for name in attrs["teachers"]:
        for part in ("clean", "views") if v else ("clean",):
            base = f"teachers/{name}/{part}"
            for ds_name in ([f"{base}/values", f"{base}/lse"] if fmt.is_topk else [base]):
                arr = get(ds_name)
                # a top-k log-probability may be -inf (a probability that rounds to 0), nothing else
                ok = (lambda b: ~np.isnan(b) & (b <= 0)) if ds_name.endswith("/values") else np.isfinite
                bad = sum(int((~ok(b)).sum()) for b in _blocks(arr))
                scanned += int(np.prod(arr.shape, dtype=np.int64))
                if bad:
                    problems.append(f"/{ds_name} holds {bad} NaN/Inf values")
            if fmt.is_topk and any(b.size and int(b.max()) >= c for b in _blocks(get(f"{base}/indices"))):
                problems.append(f"/{base}/indices has class ids >= {c}")
    if v:
        spec = ViewSpec.from_dict(attrs["view_spec"])
        size = tuple(attrs["image_size"])
        rec = get("views/recipes")
        step = _rows_per_read(rec, itemsize=rec.dtype.itemsize * 8)  # decoded as int64 tensors
        for i in range(0, n, step):
            block = np.asarray(rec[i:i + step])  # [b, V] records
            rows = np.arange(i, i + len(block))
            try:
                Recipes.from_struct(block, spec, size, samples=np.repeat(rows, v),
                                    views=np.tile(np.arange(v), len(block)), num_samples=n)
            except LabelenhError as e:
                problems.append(f"/views/recipes of samples {i}..{i + len(block) - 1}: {e}")
                break
    return problems, scanned


def _blocks(arr: Any):
    step = _rows_per_read(arr)
    for i in range(0, arr.shape[0], step):
        yield np.asarray(arr[i:i + step])
