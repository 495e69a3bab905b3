"""Reading a store in stage two: `SoftLabelStore.open(path)`.

Two modes, identical results:
- preloaded (default when the logits take at most 2 GiB, e.g. any CIFAR-scale store): every
  array is read into memory once and batches are numpy gathers;
- lazy: arrays are memory-mapped from the file (every dataset is contiguous and uncompressed,
  see schema.py), opened on first use in each process and re-opened when the pid changes, so a
  store opened before DataLoader workers fork is safe in each of them. Reads go through sorted
  unique row indices, then are put back in the caller's order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.store.schema import (
    CHECKSUM,
    FORMAT,
    READ_SCHEMAS,
    TEACHER_JSON_ATTRS,
    LogitFormat,
    TeacherRecord,
    attrs_digest,
    checksummed,
    chunk_rows,
    crc32,
    decode_attrs,
    teacher_datasets,
)
from labelenh.store.topk import topk_dense

DEFAULT_PRELOAD_BYTES = 2 << 30

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


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """`read_errors` around a SoftLabelStore method (lazy stores read the file in any of them)."""
    @functools.wraps(method)
    def wrapper(self: SoftLabelStore, *args: Any, **kwargs: Any) -> Any:
        with read_errors(self.path):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


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


class SoftLabelStore:
    """A complete store, ready for stage two (see the module doc for preloaded vs lazy)."""

    def __init__(self, path: Path, attrs: dict[str, Any], teacher_attrs: dict[str, dict[str, Any]],
                 layout: dict[str, tuple[int | None, tuple[int, ...], np.dtype]],
                 arrays: dict[str, np.ndarray] | None) -> None:
        self.path = path
        self.attrs = attrs
        self.num_samples = int(attrs["num_samples"])
        self.num_classes = int(attrs["num_classes"])
        self.num_views = int(attrs["num_views"])
        self.teachers: list[str] = list(attrs["teachers"])
        self.fingerprint: str = attrs["fingerprint"]
        self.dataset: str = attrs["dataset"]
        self.format = logit_format(attrs)
        self.image_size: tuple[int, int] = tuple(attrs["image_size"])  # type: ignore[assignment]
        self.view_seed: int | None = int(attrs["view_seed"]) if self.num_views else None
        self.view_spec = None
        if self.num_views:
            from labelenh.views import ViewSpec

            self.view_spec = ViewSpec.from_dict(attrs["view_spec"])
        self._teacher_attrs = teacher_attrs
        self._layout = layout
        self._preloaded = arrays is not None
        self._arrays: dict[str, Any] = arrays or {}
        self._pid = os.getpid()
        self._h5: h5py.File | None = None
        # Lazy stores: the stored CRC-32 of every (chunk, dataset) and the pairs checked so far
        # in this process — each chunk of each dataset is checked once, when first read.
        self._sums: np.ndarray | None = None
        self._columns = {name: d for d, (name, _, _) in enumerate(checksummed(expected_datasets(attrs)))}
        self._checked: dict[str, np.ndarray] = {}  # dataset -> bool [chunks] checked

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, preload: bool | None = None,
             max_preload_bytes: int = DEFAULT_PRELOAD_BYTES) -> SoftLabelStore:
        """Open a complete store. preload None = preload when the arrays fit `max_preload_bytes`.

        Refuses (LabelenhError) files that are missing, not HDF5, not a store, truncated,
        damaged or incomplete."""
        path = Path(path)
        with read_errors(path):
            return cls._open(path, preload, max_preload_bytes)

    @classmethod
    def _open(cls, path: Path, preload: bool | None, max_preload_bytes: int) -> SoftLabelStore:
        with open_h5(path) as f:
            attrs = read_root_attrs(f, path)
            check_structure(f, attrs, path)
            done = f["progress"][()]
            if not bool(attrs["complete"]) or not done.all():
                raise LabelenhError(
                    f"store {path} is incomplete ({int(done.sum())} of {done.size} chunks written): "
                    "rerun the same export-soft-labels command to finish it"
                )
            teacher_attrs = {t: decode_attrs(f[f"teachers/{t}"].attrs, TEACHER_JSON_ATTRS)
                             for t in attrs["teachers"]}
            layout = {}
            total = 0
            for name, _, _ in expected_datasets(attrs):
                ds = f[name]
                layout[name] = (ds.id.get_offset(), tuple(ds.shape), ds.dtype)
                total += ds.id.get_storage_size()
            if preload is None:
                preload = total <= max_preload_bytes
            arrays = {name: f[name][()] for name in layout} if preload else None
            sums = f["checksums"][()] if has_checksums(attrs) else None
        if arrays is not None:
            # In memory anyway: refuse damaged contents now, before a run writes anything.
            # (Lazy stores are checked chunk by chunk as they are first read.)
            problems = checksum_problems(arrays.__getitem__, attrs)
            if problems:
                raise damage_error(path, problems)
            problems, _ = content_problems(arrays.__getitem__, attrs)
            if problems:
                raise LabelenhError(f"store {path} is damaged: {'; '.join(problems)}: re-export it "
                                    "(`labelenh store verify` lists every problem)")
        store = cls(path, attrs, teacher_attrs, layout, arrays)
        store._sums = sums
        return store

    def __enter__(self) -> SoftLabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._preloaded:
            self._arrays = {}
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # noqa: BLE001 - a handle inherited across fork may be unusable
                pass
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to spawned workers: preloaded arrays travel, file handles never do.
        state = dict(self.__dict__)
        state["_h5"] = None
        if not self._preloaded:
            state["_arrays"] = {}
        return state

    @property
    def preloaded(self) -> bool:
        return self._preloaded

    def __repr__(self) -> str:
        mode = "preloaded" if self._preloaded else "lazy"
        return (f"SoftLabelStore({self.path.name}: {self.dataset}, N={self.num_samples}, "
                f"C={self.num_classes}, V={self.num_views}, teachers={self.teachers}, "
                f"{self.format}, {mode})")

    # ---- checks ----------------------------------------------------------------------------

    def check_dataset(self, name: str, fingerprint: str, num_samples: int, num_classes: int) -> None:
        """Refuse a dataset that is not the one the store was made from."""
        if (fingerprint == self.fingerprint and int(num_samples) == self.num_samples
                and int(num_classes) == self.num_classes):
            return
        raise LabelenhError(
            f"store {self.path.name} was made for {self.dataset} (fingerprint {self.fingerprint[:8]}…, "
            f"N={self.num_samples}, C={self.num_classes}) but the dataset is {name} (fingerprint "
            f"{str(fingerprint)[:8]}…, N={num_samples}, C={num_classes}): re-export or pass the "
            "matching --dataset/--val-split/--noise"
        )

    def teacher_names(self, teachers: list[str] | list[int] | None = None) -> list[str]:
        """Names of the selected teachers (by name or index; None = all), checked."""
        return self._teacher_names(teachers)

    def teacher_info(self, name: str) -> dict[str, Any]:
        if name not in self._teacher_attrs:
            raise LabelenhError(f"store {self.path.name} has no teacher {name!r}; it has {', '.join(self.teachers)}")
        return dict(self._teacher_attrs[name])

    def teacher_records(self) -> list[TeacherRecord]:
        return [TeacherRecord(name=t, model=a.get("model", ""), sha256=a.get("sha256", ""),
                              source=a.get("source", ""), metrics=a.get("metrics") or {})
                for t, a in self._teacher_attrs.items()]

    # ---- gathering -------------------------------------------------------------------------

    @_guarded
    def clean_logits(self, samples: torch.Tensor, teachers: list[str] | list[int] | None = None) -> torch.Tensor:
        """float32 [B, M, C]: the teachers' logits of the clean samples."""
        s = self._samples(samples)
        return self._gather("clean", s, self._teacher_names(teachers))

    @_guarded
    def view_logits(self, samples: torch.Tensor, views: torch.Tensor | int,
                    teachers: list[str] | list[int] | None = None) -> torch.Tensor:
        """float32 [B, M, C]: the teachers' logits of view views[b] of sample samples[b]."""
        if not self.num_views:
            raise LabelenhError(f"store {self.path.name} holds no views (exported without --aug/--views): train without --aug or re-export with views")
        s = self._samples(samples)
        v = self._views(views, len(s))
        return self._gather("views", s * self.num_views + v, self._teacher_names(teachers))

    @_guarded
    def logits(self, samples: torch.Tensor, views: torch.Tensor | int | None = None,
               teachers: list[str] | list[int] | None = None) -> torch.Tensor:
        """float32 [B, M, C]: view logits, with view id -1 (or views=None) meaning the clean sample."""
        s = self._samples(samples)
        if views is None:
            return self.clean_logits(s, teachers)
        v = self._views(views, len(s), allow_clean=True)
        names = self._teacher_names(teachers)
        clean = v < 0
        out = torch.empty(len(s), len(names), self.num_classes)
        if clean.any():
            out[torch.from_numpy(clean)] = self._gather("clean", s[clean], names)
        if (~clean).any():
            out[torch.from_numpy(~clean)] = self._gather("views", s[~clean] * self.num_views + v[~clean], names)
        return out

    @_guarded
    def recipes(self, samples: torch.Tensor, views: torch.Tensor | int):
        """`Recipes` of view views[b] of sample samples[b] (replay them with apply_views)."""
        from labelenh.views import Recipes

        if not self.num_views:
            raise LabelenhError(f"store {self.path.name} holds no views, hence no recipes")
        s = self._samples(samples)
        v = self._views(views, len(s))
        rec = self._take("views/recipes", s * self.num_views + v)
        return Recipes.from_struct(rec, self.view_spec, self.image_size, samples=s, views=v,
                                   num_samples=self.num_samples)

    @_guarded
    def labels(self, samples: torch.Tensor | None = None) -> torch.Tensor:
        """int64 [B] stored hard labels (all N when samples is None)."""
        if samples is None:
            self._check_chunks("labels", np.arange(self.num_samples))
            return torch.from_numpy(np.array(self._array("labels")))
        return torch.from_numpy(np.ascontiguousarray(self._take("labels", self._samples(samples))))

    # ---- internals -------------------------------------------------------------------------

    def _samples(self, samples) -> np.ndarray:
        s = np.asarray(torch.as_tensor(samples).cpu()).reshape(-1)
        if s.dtype.kind not in "iu":
            raise LabelenhError(f"sample indices must be integers, got {s.dtype}")
        s = s.astype(np.int64)
        if s.size and (s.min() < 0 or s.max() >= self.num_samples):
            raise LabelenhError(f"sample index out of range [0, {self.num_samples}): got {int(s.min())}..{int(s.max())}")
        return s

    def _views(self, views, b: int, allow_clean: bool = False) -> np.ndarray:
        v = np.asarray(torch.as_tensor(views).cpu()).reshape(-1)
        if v.dtype.kind not in "iu":
            raise LabelenhError(f"view ids must be integers, got {v.dtype}")
        v = np.full(b, v[0], dtype=np.int64) if v.size == 1 else v.astype(np.int64)
        if v.shape != (b,):
            raise LabelenhError(f"{b} samples but {v.size} view ids")
        lo = -1 if allow_clean else 0
        if v.size and (v.min() < lo or v.max() >= self.num_views):
            raise LabelenhError(f"view id out of range [{lo}, {self.num_views}): got {int(v.min())}..{int(v.max())}")
        return v

    def _teacher_names(self, teachers) -> list[str]:
        if teachers is None:
            return self.teachers
        out = []
        for t in teachers:
            if isinstance(t, (int, np.integer)):
                if not 0 <= int(t) < len(self.teachers):
                    raise LabelenhError(f"teacher index {t} out of range: the store has {len(self.teachers)}")
                out.append(self.teachers[int(t)])
            elif t in self.teachers:
                out.append(t)
            else:
                raise LabelenhError(f"store {self.path.name} has no teacher {t!r}; it has {', '.join(self.teachers)}")
        if not out:
            raise LabelenhError("pick at least one teacher")
        return out

    def _gather(self, part: str, rows: np.ndarray, names: list[str]) -> torch.Tensor:
        c = self.num_classes
        out = torch.empty(len(rows), len(names), c, dtype=torch.float32)  # [B, M, C]
        for m, name in enumerate(names):
            g = f"teachers/{name}/{part}"
            if self.format.is_topk:
                idx = torch.from_numpy(self._take(f"{g}/indices", rows).astype(np.int64))
                if idx.numel() and int(idx.max()) >= c:
                    raise LabelenhError(f"store {self.path}: /{g}/indices holds class ids >= {c}: the file "
                                        "is damaged; re-export it")
                val = torch.from_numpy(self._take(f"{g}/values", rows))
                lse = torch.from_numpy(self._take(f"{g}/lse", rows))
                out[:, m] = topk_dense(idx, val, lse, c)
            else:
                out[:, m] = torch.from_numpy(self._take(g, rows))
        ok = (out < torch.inf) & ~out.isnan() if self.format.is_topk else torch.isfinite(out)  # top-k: p = 0 is -inf
        if not bool(ok.all()):  # a lazy store is checked here, batch by batch
            raise LabelenhError(f"store {self.path} holds NaN/Inf {part} logits: the file is damaged; "
                                "re-export it (`labelenh store verify` lists every problem)")
        return out

    def _array(self, name: str):
        if self._preloaded:
            return self._arrays[name]
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's maps or handle
            self._arrays, self._h5, self._pid = {}, None, os.getpid()
        arr = self._arrays.get(name)
        if arr is None:
            off, shape, dtype = self._layout[name]
            if off is not None:
                arr = np.memmap(self.path, dtype=dtype, mode="r", offset=off, shape=shape)
            else:  # not contiguous (not written by this code): read through h5py
                if self._h5 is None:
                    self._h5 = open_h5(self.path)
                arr = self._h5[name]
            self._arrays[name] = arr
        return arr

    def _check_chunks(self, name: str, samples: np.ndarray) -> None:
        """A lazy store's checksums of the chunks of `name` that hold `samples`, once each."""
        if self._preloaded or self._sums is None or name not in self._columns:
            return
        cs, n = int(self.attrs["chunk_size"]), self.num_samples
        checked = self._checked.get(name)
        if checked is None:
            checked = self._checked[name] = np.zeros(self._sums.shape[0], dtype=bool)
        chunks = samples // cs
        if checked[chunks].all():  # the common case after the first epoch: nothing to do
            return
        arr = self._array(name)
        for c in np.unique(chunks[~checked[chunks]]).tolist():
            a, b = chunk_rows(name, c, cs, n)
            if crc32(np.asarray(arr[a:b])) != int(self._sums[c, self._columns[name]]):
                raise damage_error(self.path, [chunk_damage(name, c, cs, n)])
            checked[c] = True

    def _take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a dataset by flat leading index (sample, or sample * V + view)."""
        arr = self._array(name)
        parts = name.split("/")
        lead = 2 if parts[0] == "views" or (parts[0] == "teachers" and parts[2] == "views") else 1
        self._check_chunks(name, rows // self.num_views if lead == 2 else rows)
        if isinstance(arr, np.ndarray):
            flat = arr.reshape(-1, *arr.shape[lead:]) if lead == 2 else arr
            if self._preloaded:
                return flat[rows]
            uniq, inv = np.unique(rows, return_inverse=True)  # page-ordered reads
            return flat[uniq][inv]
        # h5py fallback: whole samples in increasing order, then pick views
        v = self.num_views
        smp = rows // v if lead == 2 else rows
        uniq, inv = np.unique(smp, return_inverse=True)
        block = arr[uniq]
        return block[inv, rows % v] if lead == 2 else block[inv]
