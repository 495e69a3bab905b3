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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.store.arrays import StoreArrays
from labelenh.store.checks import (  # noqa: F401 - also imported from here by callers
    READ_ERRORS,
    check_structure,
    checksum_problems,
    chunk_damage,
    content_problems,
    damage_error,
    expected_datasets,
    has_checksums,
    logit_format,
    open_h5,
    read_errors,
    read_root_attrs,
)
from labelenh.store.schema import TEACHER_JSON_ATTRS, TeacherRecord, decode_attrs
from labelenh.store.topk import topk_dense

DEFAULT_PRELOAD_BYTES = 2 << 30

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """`read_errors` around a SoftLabelStore method (lazy stores read the file in any of them)."""
    @functools.wraps(method)
    def wrapper(self: SoftLabelStore, *args: Any, **kwargs: Any) -> Any:
        with read_errors(self.path):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _read(path: Path, preload: bool | None, max_preload_bytes: int) -> dict[str, Any]:
    """What `SoftLabelStore` is made of, from a complete, sound store file: its attributes,
    its teachers', the datasets' layout and (preloaded) their arrays, checked."""
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
    return {"attrs": attrs, "teacher_attrs": teacher_attrs,
            "data": StoreArrays(path, attrs, layout, arrays, sums)}


def sample_rows(samples: Any, num_samples: int) -> np.ndarray:
    """int64 [B] sample indices, checked to lie in [0, num_samples)."""
    s = np.asarray(torch.as_tensor(samples).cpu()).reshape(-1)
    if s.dtype.kind not in "iu":
        raise LabelenhError(f"sample indices must be integers, got {s.dtype}")
    s = s.astype(np.int64)
    if s.size and (s.min() < 0 or s.max() >= num_samples):
        raise LabelenhError(f"sample index out of range [0, {num_samples}): got {int(s.min())}..{int(s.max())}")
    return s


def view_ids(views: Any, b: int, num_views: int, allow_clean: bool = False) -> np.ndarray:
    """int64 [b] view ids (one id broadcast to all), checked; -1 = clean where allowed."""
    v = np.asarray(torch.as_tensor(views).cpu()).reshape(-1)
    if v.dtype.kind not in "iu":
        raise LabelenhError(f"view ids must be integers, got {v.dtype}")
    v = np.full(b, v[0], dtype=np.int64) if v.size == 1 else v.astype(np.int64)
    if v.shape != (b,):
        raise LabelenhError(f"{b} samples but {v.size} view ids")
    lo = -1 if allow_clean else 0
    if v.size and (v.min() < lo or v.max() >= num_views):
        raise LabelenhError(f"view id out of range [{lo}, {num_views}): got {int(v.min())}..{int(v.max())}")
    return v


class SoftLabelStore:
    """A complete store, ready for stage two (see the module doc for preloaded vs lazy)."""

    def __init__(self, path: Path, attrs: dict[str, Any], teacher_attrs: dict[str, dict[str, Any]],
                 data: StoreArrays) -> None:
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
        self.data = data  # the arrays, row by row

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, preload: bool | None = None,
             max_preload_bytes: int = DEFAULT_PRELOAD_BYTES) -> SoftLabelStore:
        """Open a complete store. preload None = preload when the arrays fit `max_preload_bytes`.

        Refuses (LabelenhError) files that are missing, not HDF5, not a store, truncated,
        damaged or incomplete."""
        path = Path(path)
        with read_errors(path):
            return cls(path, **_read(path, preload, max_preload_bytes))

    def __enter__(self) -> SoftLabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.data.close()

    @property
    def preloaded(self) -> bool:
        return self.data.preloaded

    def __repr__(self) -> str:
        mode = "preloaded" if self.preloaded else "lazy"
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
        return self.gather("clean", s, self.teacher_names(teachers))

    @_guarded
    def view_logits(self, samples: torch.Tensor, views: torch.Tensor | int,
                    teachers: list[str] | list[int] | None = None) -> torch.Tensor:
        """float32 [B, M, C]: the teachers' logits of view views[b] of sample samples[b]."""
        if not self.num_views:
            raise LabelenhError(f"store {self.path.name} holds no views (exported without --aug/--views): train without --aug or re-export with views")
        s = self._samples(samples)
        v = self._views(views, len(s))
        return self.gather("views", s * self.num_views + v, self.teacher_names(teachers))

    @_guarded
    def logits(self, samples: torch.Tensor, views: torch.Tensor | int | None = None,
               teachers: list[str] | list[int] | None = None) -> torch.Tensor:
        """float32 [B, M, C]: view logits, with view id -1 (or views=None) meaning the clean sample."""
        s = self._samples(samples)
        if views is None:
            return self.clean_logits(s, teachers)
        v = self._views(views, len(s), allow_clean=True)
        names = self.teacher_names(teachers)
        clean = v < 0
        out = torch.empty(len(s), len(names), self.num_classes)
        if clean.any():
            out[torch.from_numpy(clean)] = self.gather("clean", s[clean], names)
        if (~clean).any():
            out[torch.from_numpy(~clean)] = self.gather("views", s[~clean] * self.num_views + v[~clean], names)
        return out

    @_guarded
    def recipes(self, samples: torch.Tensor, views: torch.Tensor | int):
        """`Recipes` of view views[b] of sample samples[b] (replay them with apply_views)."""
        from labelenh.views import Recipes

        if not self.num_views:
            raise LabelenhError(f"store {self.path.name} holds no views, hence no recipes")
        s = self._samples(samples)
        v = self._views(views, len(s))
        rec = self.data.take("views/recipes", s * self.num_views + v)
        return Recipes.from_struct(rec, self.view_spec, self.image_size, samples=s, views=v,
                                   num_samples=self.num_samples)

    @_guarded
    def labels(self, samples: torch.Tensor | None = None) -> torch.Tensor:
        """int64 [B] stored hard labels (all N when samples is None)."""
        if samples is None:
            self.data.check_chunks("labels", np.arange(self.num_samples))
            return torch.from_numpy(np.array(self.data.array("labels")))
        return torch.from_numpy(np.ascontiguousarray(self.data.take("labels", self._samples(samples))))

    # ---- internals -------------------------------------------------------------------------

    def _samples(self, samples) -> np.ndarray:
        return sample_rows(samples, self.num_samples)

    def _views(self, views, b: int, allow_clean: bool = False) -> np.ndarray:
        return view_ids(views, b, self.num_views, allow_clean)

    def gather(self, part: str, rows: np.ndarray, names: list[str]) -> torch.Tensor:
        """float32 [B, M, C]: the logits of `part` ("clean" | "views") at flat `rows` (sample, or
        sample * V + view) of the teachers `names`, dense (top-k expanded) and checked finite."""
        c = self.num_classes
        out = torch.empty(len(rows), len(names), c, dtype=torch.float32)  # [B, M, C]
        for m, name in enumerate(names):
            g = f"teachers/{name}/{part}"
            if self.format.is_topk:
                idx = torch.from_numpy(self.data.take(f"{g}/indices", rows).astype(np.int64))
                if idx.numel() and int(idx.max()) >= c:
                    raise LabelenhError(f"store {self.path}: /{g}/indices holds class ids >= {c}: the file "
                                        "is damaged; re-export it")
                val = torch.from_numpy(self.data.take(f"{g}/values", rows))
                lse = torch.from_numpy(self.data.take(f"{g}/lse", rows))
                out[:, m] = topk_dense(idx, val, lse, c)
            else:
                out[:, m] = torch.from_numpy(self.data.take(g, rows))
        ok = (out < torch.inf) & ~out.isnan() if self.format.is_topk else torch.isfinite(out)  # top-k: p = 0 is -inf
        if not bool(ok.all()):  # a lazy store is checked here, batch by batch
            raise LabelenhError(f"store {self.path} holds NaN/Inf {part} logits: the file is damaged; "
                                "re-export it (`labelenh store verify` lists every problem)")
        return out
