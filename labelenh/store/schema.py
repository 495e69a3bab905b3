"""The soft-label store, schema v2: one HDF5 file per (dataset split, set of teachers).

Every dataset is written contiguous and allocated when the file is created, and the file's
whole extent is reserved on the disk then (`posix_fallocate`), so a full disk is refused before
any work and never met half-way. An export only ever overwrites raw bytes at the datasets' fixed
offsets (`os.pwrite`, no HDF5 call, no metadata change until the final `complete` flag), and a
reader can map any array straight from the file. Attributes hold plain values or JSON text; they
are parsed, never evaluated.

Integrity (schema 2): each chunk's bytes in every dataset carry a CRC-32 (`/checksums`), written
with the chunk before its progress flag and checked by `store verify` (every chunk) and by a
reader (each chunk once, as it is first read); the root and teacher attributes fixed at creation
carry one CRC-32 (`attrs_crc32`; all but the `created` time). Schema 1 stores (no checksums) still open, resume and replay.

The tables of root attributes, datasets and teacher attributes are `ROOT_ATTRS`, `DATASETS`
and `TEACHER_ATTRS` below: README's schema tables are generated from them
(`python scripts/schema_tables.py`), and tests/test_schema_doc.py fails when the two differ.
The top-k reconstruction rule: labelenh.store.topk.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelenh.errors import LabelenhError
from labelenh.store.attrs import (  # noqa: F401 - part of the schema, imported from here
    JSON_ATTRS,
    TEACHER_JSON_ATTRS,
    decode_attrs,
    dedupe_names,
    sanitize_name,
)

FORMAT = "labelenh.softlabels"
SCHEMA = 2
READ_SCHEMAS = (1, 2)  # every schema this code opens, verifies and resumes
CHECKSUM = "crc32"
DENSE_FORMATS = ("fp16", "fp32")
DEFAULT_CHUNK_SIZE = 256
MIN_REST = 1e-20  # floor of the tail probability per class in top-k reconstruction


@dataclass(frozen=True)
class LogitFormat:
    """How logits are stored: dense fp16/fp32 or top-k (fp16 log-probabilities + fp32 lse)."""

    kind: str  # "fp16" | "fp32" | "topk"
    k: int = 0

    @classmethod
    def parse(cls, text: str, num_classes: int | None = None) -> LogitFormat:
        t = str(text).strip().lower()
        if t in DENSE_FORMATS:
            return cls(t)
        if t.startswith("topk:") or t.startswith("top-k:") or t.startswith("top"):
            digits = t.split(":", 1)[1] if ":" in t else t[3:]
            try:
                k = int(digits)
            except ValueError:
                k = 0
            if k < 1:
                raise LabelenhError(f"--format {text!r}: top-k needs a positive K, e.g. topk:5")
            if num_classes is not None and k > num_classes:
                raise LabelenhError(
                    f"--format {text!r}: K={k} exceeds the {num_classes} classes; use K <= {num_classes} or fp16"
                )
            return cls("topk", k)
        raise LabelenhError(f"--format {text!r} is not one of fp16, fp32, topk:K")

    @property
    def is_topk(self) -> bool:
        return self.kind == "topk"

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.is_topk else self.kind

    def dense_dtype(self) -> np.dtype:
        return np.dtype("<f2") if self.kind == "fp16" else np.dtype("<f4")


def index_dtype(num_classes: int) -> np.dtype:
    return np.dtype("<u2") if num_classes <= 2**16 else np.dtype("<u4")


@dataclass
class TeacherRecord:
    """What the store records about one teacher (its group's attributes)."""

    name: str
    model: str = "unknown"
    sha256: str = "unknown"
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        m = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str, bool))}
        return {
            "model": self.model,
            "sha256": self.sha256,
            "source": self.source,
            "acc1": _as_float(m.get("acc1")),
            "nll": _as_float(m.get("nll")),
            "ece": _as_float(m.get("ece")),
            "metrics": json.dumps(m, sort_keys=True),
        }


@dataclass
class StorePlan:
    """Everything that decides a store's layout and bytes (except the teachers' weights)."""

    dataset: str
    fingerprint: str
    num_samples: int
    num_classes: int
    num_views: int
    view_spec: dict[str, Any] | None
    view_seed: int
    image_size: tuple[int, int]
    fmt: LogitFormat
    chunk_size: int
    teachers: list[TeacherRecord]
    normalization: dict[str, list[float]]
    compute: dict[str, str]
    recipe_dtype: np.dtype | None = None  # needed when num_views > 0
    dataset_meta: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA  # 1 only to resume a store an earlier version started
    # where a store made from stores came from (labelenh.store.derive); not part of its identity
    provenance: dict[str, Any] | None = None

    @property
    def checksums(self) -> bool:
        return self.schema >= 2

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def chunk_bounds(self, c: int) -> tuple[int, int]:
        s0 = c * self.chunk_size
        return s0, min(self.num_samples, s0 + self.chunk_size)

    def identity(self) -> dict[str, Any]:
        """The arguments a resumed export must repeat exactly (JSON-able, canonical)."""
        return {
            "schema": self.schema,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_views": self.num_views,
            "view_spec": self.view_spec,
            "view_seed": self.view_seed if self.num_views else None,
            "image_size": list(self.image_size),
            "format": str(self.fmt),
            "chunk_size": self.chunk_size,
            "teachers": [{"name": t.name, "sha256": t.sha256} for t in self.teachers],
            "normalization": self.normalization,
            "compute": self.compute,
        }

    def root_attrs(self) -> dict[str, Any]:
        out = {
            "format": FORMAT,
            "schema": self.schema,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "dataset_meta": json.dumps(self.dataset_meta, sort_keys=True, default=str),
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_views": self.num_views,
            "view_spec": json.dumps(self.view_spec, sort_keys=True),
            "view_seed": self.view_seed,
            "image_size": json.dumps(list(self.image_size)),
            "logit_format": self.fmt.kind,
            "topk": self.fmt.k,
            "chunk_size": self.chunk_size,
            "num_chunks": self.num_chunks,
            "teachers": json.dumps([t.name for t in self.teachers]),
            "normalization": json.dumps(self.normalization, sort_keys=True),
            "compute": json.dumps(self.compute, sort_keys=True),
            "identity": json.dumps(self.identity(), sort_keys=True),
        }
        if self.checksums:
            out["checksum"] = CHECKSUM
        if self.provenance is not None:
            out["provenance"] = json.dumps(self.provenance, sort_keys=True, default=str)
        return out

    def datasets(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """(path, shape, dtype) of every dataset, in creation order."""
        n, c, v = self.num_samples, self.num_classes, self.num_views
        out: list[tuple[str, tuple[int, ...], np.dtype]] = [
            ("labels", (n,), np.dtype("<i8")),
            ("progress", (self.num_chunks,), np.dtype("u1")),
        ]
        if v:
            if self.recipe_dtype is None:
                raise LabelenhError("internal: a store with views needs the recipe dtype")
            out.append(("views/recipes", (n, v), self.recipe_dtype))
        for t in self.teachers:
            out += teacher_datasets(t.name, n, c, v, self.fmt, self.num_chunks)
        if self.checksums:
            out.append(("checksums", (self.num_chunks, len(checksummed(out))), np.dtype("<u4")))
        return out

    def checksummed(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """The datasets a chunk's checksums cover, in column order of /checksums."""
        return checksummed(self.datasets())

    def data_bytes(self) -> int:
        return sum(int(np.prod(s)) * d.itemsize for _, s, d in self.datasets())


def teacher_datasets(
    name: str, n: int, c: int, v: int, fmt: LogitFormat, num_chunks: int
) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    g = f"teachers/{name}"
    parts: list[tuple[str, tuple[int, ...]]] = [("clean", (n,))] + ([("views", (n, v))] if v else [])
    out = []
    for part, lead in parts:
        if fmt.is_topk:
            out += [
                (f"{g}/{part}/indices", (*lead, fmt.k), index_dtype(c)),
                (f"{g}/{part}/values", (*lead, fmt.k), np.dtype("<f2")),
                (f"{g}/{part}/lse", lead, np.dtype("<f4")),
            ]
        else:
            out.append((f"{g}/{part}", (*lead, c), fmt.dense_dtype()))
    if fmt.is_topk:
        out.append((f"{g}/topk_kl", (num_chunks, 2), np.dtype("<f8")))
    return out


UNCHECKED = ("progress", "checksums")  # flags and the checksums themselves


def checksummed(datasets: list[tuple[str, tuple[int, ...], Any]]) -> list[tuple[str, tuple[int, ...], Any]]:
    """The entries of `datasets` (in order) that /checksums covers."""
    return [d for d in datasets if d[0] not in UNCHECKED]


def chunk_rows(name: str, c: int, chunk_size: int, num_samples: int) -> tuple[int, int]:
    """Rows [a, b) of dataset `name` that belong to chunk c: per-chunk datasets (top-k error
    sums) have one row per chunk, every other dataset one row per sample."""
    if name.endswith("/topk_kl"):
        return c, c + 1
    return c * chunk_size, min(num_samples, (c + 1) * chunk_size)


def raw_bytes(data: Any) -> Any:
    """The bytes of an array as they lie in the file (record arrays included), or `data`."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return data


def crc32(data: Any, value: int = 0) -> int:
    """zlib's CRC-32 (about 3.5 GB/s here) of bytes or of an array's raw bytes."""
    return zlib.crc32(raw_bytes(data), value)


# Attributes that change after creation, or that hold the digest itself.
# `created` too: two exports with the same arguments are the same bytes but for that attribute.
DIGEST_EXCLUDED = ("complete", "attrs_crc32", "topk_kl_clean", "topk_kl_views", "created")


def attrs_digest(f: Any) -> int:
    """CRC-32 of every root and teacher-group attribute of the open file `f` that is fixed at
    creation, as raw stored values (JSON text is not parsed): a flipped bit in any of them is
    seen even where the value still parses (a seed, a mean, a teacher's sha256)."""
    items: dict[str, Any] = {}

    def add(prefix: str, attrs: Any) -> None:
        for key, val in decode_attrs(attrs, json_keys=()).items():
            if key not in DIGEST_EXCLUDED:
                items[prefix + key] = val

    add("", f.attrs)
    teachers = f.get("teachers")
    if teachers is not None:
        for name in sorted(teachers.keys()):
            add(f"teachers/{name}/", teachers[name].attrs)
    text = json.dumps(items, sort_keys=True, default=repr, allow_nan=True)
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def bytes_per_view(fmt: LogitFormat, num_classes: int, recipe_itemsize: int) -> dict[str, int]:
    """Bytes one stored (sample, view) row costs: per teacher, and the recipe shared by all."""
    if fmt.is_topk:
        per_teacher = fmt.k * (index_dtype(num_classes).itemsize + 2) + 4
    else:
        per_teacher = num_classes * fmt.dense_dtype().itemsize
    return {"per_teacher": per_teacher, "recipe": int(recipe_itemsize)}


def _as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


# ---- the schema's documentation: the one source of README's tables ---------------------------
# (name, type, meaning); a "|" inside a cell is written "\\|", as markdown needs it

ROOT_ATTRS: tuple[tuple[str, str, str], ...] = (
    ("format", "str", '"labelenh.softlabels"'),
    ("schema", "int", "2 (1: the same without `checksum`, `attrs_crc32`, `/checksums`)"),
    ("dataset", "str", 'dataset name, e.g. "cifar10", "npz:/data/x.npz"'),
    ("fingerprint", "str", "ImageSource.fingerprint() of the train split (labels + samples)"),
    ("dataset_meta", "JSON", "the dataset's meta (val split/seed, noise spec, sizes, ...)"),
    ("num_samples", "int", "N, rows of the train split"),
    ("num_classes", "int", "C"),
    ("num_views", "int", "V, augmented views per sample (0: clean logits only)"),
    ("view_spec", "JSON", 'the views\' spec: {"op", its options, "base": {...}}, "null" when V = 0 '
     "(schema-1 stores: a flat dict of every op's options, read as meant)"),
    ("view_seed", "int", "seed the recipes were drawn from"),
    ("image_size", "JSON", "[H, W] the recipes were drawn for"),
    ("logit_format", "str", '"fp16" \\| "fp32" \\| "topk"'),
    ("topk", "int", "K of the top-k format (0 for dense)"),
    ("chunk_size", "int", "samples per chunk = images per teacher forward"),
    ("num_chunks", "int", "ceil(N / chunk_size)"),
    ("teachers", "JSON", "teacher names, in storage order"),
    ("normalization", "JSON", '{"mean": [...], "std": [...]} applied to the teachers\' inputs'),
    ("compute", "JSON", '{"device": "cpu"\\|"cuda", "amp": "off"\\|"fp16"\\|"bf16"}'),
    ("identity", "JSON", "everything above that decides the stored bytes; a resume must match"),
    ("labelenh_version", "str", "package version"),
    ("git_commit", "str", '`git rev-parse HEAD` of the package checkout, or "unknown"'),
    ("created", "str", "ISO-8601 UTC time the file was started"),
    ("complete", "bool", "False until every chunk is written (then True)"),
    ("checksum", "str", '"crc32": zlib\'s CRC-32 of each chunk\'s bytes in each dataset'),
    ("provenance", "JSON", "stores made from stores only: the operation and its source stores "
     "(path, fingerprint, CRCs)"),
    ("attrs_crc32", "int", "CRC-32 of every root and teacher attribute but `complete`, `created`, "
     "`attrs_crc32` and the top-k error attributes"),
)

# (path, shape, dtype, meaning) for N samples, C classes, V views, K top-k
DATASETS: tuple[tuple[str, str, str, str], ...] = (
    ("/labels", "(N,)", "int64", "hard labels the teachers saw (noisy labels included)"),
    ("/progress", "(chunks,)", "uint8", "1 = chunk written (set after its data and checksums are synced)"),
    ("/checksums", "(chunks, D)", "uint32", "CRC-32 of chunk c's bytes in dataset d: every dataset in "
     "this table's order but /progress and /checksums; a chunk's bytes are its samples' rows (of "
     "`topk_kl`: row c)"),
    ("/views/recipes", "(N, V)", "compound", "view recipes, `labelenh.views.recipe_dtype(spec)` (a "
     "store of several ops adds a 1-byte `op` field)"),
    ("/teachers/<name>/clean", "(N, C)", "float16/float32", "logits of the clean (un-augmented) sample"),
    ("/teachers/<name>/views", "(N, V, C)", "float16/float32", "logits of view v of sample i"),
    ("/teachers/<name>/clean/indices", "(N, K)", "uint16/uint32", "top-k: class ids, largest logit first"),
    ("/teachers/<name>/clean/values", "(N, K)", "float16", "top-k: log-probabilities, logit - lse"),
    ("/teachers/<name>/clean/lse", "(N,)", "float32", "top-k: logsumexp of the row's logits"),
    ("/teachers/<name>/views/indices", "(N, V, K)", "uint16/uint32", "as for clean, per view"),
    ("/teachers/<name>/views/values", "(N, V, K)", "float16", ""),
    ("/teachers/<name>/views/lse", "(N, V)", "float32", ""),
    ("/teachers/<name>/topk_kl", "(chunks, 2)", "float64", "top-k: per-chunk sums of KL(dense ‖ "
     "reconstructed), clean and views"),
)

# (name, type, meaning) of /teachers/<name>
TEACHER_ATTRS: tuple[tuple[str, str, str], ...] = (
    ("model", "str", "model name (registry name)"),
    ("sha256", "str", "sha256 of the checkpoint file (of the weights for in-memory models)"),
    ("source", "str", "checkpoint path it was loaded from"),
    ("acc1, nll, ece", "float", "the teacher's test metrics (NaN when unknown)"),
    ("metrics", "JSON", "all recorded test metrics"),
    ("topk_kl_clean", "float", "top-k only: mean KL(dense ‖ reconstructed) over all clean rows, nats"),
    ("topk_kl_views", "float", "top-k only: the same over all view rows"),
)


def _table(header: tuple[str, ...], widths: tuple[int, ...], rows: tuple[tuple[str, ...], ...]) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def markdown_tables() -> str:
    """README's schema tables (root attributes, datasets, teacher attributes), from the above."""
    return "\n\n".join([
        "**Root attributes**",
        _table(("attribute", "type", "meaning"), (16, 11, 64), ROOT_ATTRS),
        "**Datasets** (N samples, C classes, V views, K top-k, T teachers)",
        _table(("path", "shape", "dtype", "meaning"), (32, 11, 16, 31), DATASETS),
        "The views datasets exist only when V > 0; the top-k layout replaces the dense one when\n"
        'logit_format = "topk" (uint16 indices when C <= 65536).',
        "**Teacher attributes** (`/teachers/<name>`)",
        _table(("attribute", "type", "meaning"), (14, 5, 63), TEACHER_ATTRS),
    ]) + "\n"
