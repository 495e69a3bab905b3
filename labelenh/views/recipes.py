"""`Recipes`: a batch of view recipes as plain numbers, and their compact HDF5 record form.

A recipe says exactly how one (sample, view) image was made, so applying it again gives the same
tensor bit for bit. Source 0 of every recipe is the sample itself (the store keys rows by sample
index); sources 1.. are partner samples named by absolute dataset index.

The fields are the op's (`Op.fields`) and, for an op that takes a base, the base's. The packed
record (`recipe_dtype`) stores, in order: `partners` u4[S-1] (ops with S > 1), the op's own
fields, the base's fields, and one `flags` byte holding every one-bit field (flip of source k:
bit k; "the mix was applied": bit 7). The sample index is not stored: it is the row the record
sits in. Per-op sizes: `recipe_dtype(spec).itemsize`, listed in BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.views.ops import Field, get_op
from labelenh.views.spec import ViewSpec


def layout(spec: ViewSpec, num_sources: int | None = None) -> tuple[Field, ...]:
    """Every recipe field of `spec`: the op's own, then its base's (partners not included).
    `num_sources` sizes per-source fields (default: the spec's own)."""
    s = spec.num_sources if num_sources is None else num_sources
    own = get_op(spec.op).fields(spec, s)
    base = get_op(spec.base.op).fields(spec.base, s) if spec.base is not None else ()
    return tuple(own) + tuple(base)


def recipe_dtype(spec: ViewSpec) -> np.dtype:
    """Packed numpy structured dtype of one stored recipe for `spec` (see the module doc)."""
    s = spec.num_sources
    parts: list[tuple] = []
    if s > 1:
        parts.append(("partners", "<u4", (s - 1,)))
    for f in layout(spec):
        if f.record is not None:
            shape = f.tensor_shape(s)
            parts.append((f.name, f.record, shape) if shape else (f.name, f.record))
    parts.append(("flags", "u1"))
    return np.dtype(parts)


@dataclass
class Recipes:
    """A batch of view recipes: torch tensors sharing one leading dim [B].

    spec        the ViewSpec they were drawn for; S = spec.num_sources
    image_size  (H, W) of the images they apply to
    sample      int64 [B]       absolute index of the sample = source 0
    view        int64 [B]       view index (-1 when unknown, e.g. rebuilt without view ids)
    partners    int64 [B, S-1]  absolute indices of sources 1..S-1
    data        the op's and its base's fields by name (`layout(spec)`), e.g. `crop` int64
                [B, S, 2], `flip` bool [B, S], `lam` float32 [B]; read as attributes (`r.crop`)
    """

    spec: ViewSpec
    image_size: tuple[int, int]
    sample: torch.Tensor
    view: torch.Tensor
    partners: torch.Tensor
    data: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("__") or name == "data":
            raise AttributeError(name)
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('spec')} recipes have no field {name!r}") from None

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    def __getitem__(self, idx) -> Recipes:
        """Select rows by int, slice, bool mask or index tensor; an int keeps the leading dim."""
        if isinstance(idx, (int, np.integer)):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"recipe index {idx} out of range for {n} recipes")
            idx = slice(int(idx) % n, int(idx) % n + 1)
        elif isinstance(idx, (list, np.ndarray)):
            idx = torch.as_tensor(np.asarray(idx))
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.sample.device)
        return self._map(lambda t: t[idx])

    @property
    def device(self) -> torch.device:
        return self.sample.device

    def to(self, device: torch.device | str) -> Recipes:
        return self._map(lambda t: t.to(device))

    def _map(self, fn) -> Recipes:
        return replace(self, sample=fn(self.sample), view=fn(self.view), partners=fn(self.partners),
                       data={k: fn(v) for k, v in self.data.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"sample": self.sample, "view": self.view, "partners": self.partners, **self.data}

    def sources(self) -> torch.Tensor:
        """int64 [B, S]: absolute sample index of every source image; column 0 = the sample."""
        return torch.cat([self.sample[:, None], self.partners], dim=1)

    def source_weights(self) -> torch.Tensor:
        """float32 [B, S]: label weight of each source (rows sum to 1 up to float rounding)."""
        return get_op(self.spec.op).weights(self.spec, self)

    def equal(self, other: Recipes) -> bool:
        """Exact equality of spec, image size and every tensor."""
        a, b = self.tensors(), other.tensors()
        return (self.spec == other.spec and tuple(self.image_size) == tuple(other.image_size)
                and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a))

    @classmethod
    def cat(cls, parts: Sequence[Recipes]) -> Recipes:
        """Concatenate recipe batches drawn for the same spec and image size."""
        if not parts:
            raise LabelenhError("Recipes.cat needs at least one batch")
        first = parts[0]
        for p in parts[1:]:
            if p.spec != first.spec or tuple(p.image_size) != tuple(first.image_size):
                raise LabelenhError("cannot concatenate recipes of different specs or image sizes")
        cat = {k: torch.cat([p.tensors()[k] for p in parts]) for k in first.tensors()}
        return replace(first, sample=cat.pop("sample"), view=cat.pop("view"), partners=cat.pop("partners"),
                       data=cat)

    @classmethod
    def from_fields(cls, spec: ViewSpec, image_size: tuple[int, int], sample, view, partners,
                    data: dict[str, np.ndarray | torch.Tensor]) -> Recipes:
        """Recipes from plain arrays (every field of `layout(spec)`), with derived fields added
        and the geometry checked: how `sample_views`, `from_struct` and `from_draws` build them."""
        b = len(sample)
        s = spec.num_sources
        t: dict[str, torch.Tensor] = {}
        for f in layout(spec):
            if f.name not in data:
                raise LabelenhError(f"{spec.op} recipes need the field {f.name!r}")
            v = torch.as_tensor(np.asarray(data[f.name]) if not isinstance(data[f.name], torch.Tensor)
                                else data[f.name]).to(f.torch_dtype())
            want = (b, *f.tensor_shape(s))
            if tuple(v.shape) != want:
                raise LabelenhError(f"recipe field {f.name} has shape {tuple(v.shape)}, expected {want}")
            t[f.name] = v.contiguous()
        extra = sorted(set(data) - set(t))
        if extra:
            raise LabelenhError(f"{spec.op} recipes have no field(s) {', '.join(extra)}")
        hw = (int(image_size[0]), int(image_size[1]))
        for o, sp in _ops(spec):
            bad = o.check_records(sp, t, hw)
            if bad:
                raise LabelenhError(f"recipe records do not fit {spec.describe()} on {hw[0]}x{hw[1]} images "
                                    f"({bad}): the file is damaged or read with the wrong view spec")
        for o, sp in _ops(spec):
            t.update(o.derived(sp, t, hw))
        as_i64 = lambda x: torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,  # noqa: E731
                                           dtype=torch.int64)
        part = as_i64(partners).reshape(b, s - 1)
        return cls(spec=spec, image_size=hw, sample=as_i64(sample).reshape(b), view=as_i64(view).reshape(b),
                   partners=part, data=t)

    # ---- compact record form -------------------------------------------------------------

    def to_struct(self, spec: ViewSpec | None = None) -> np.ndarray:
        """Structured numpy array [B] of `recipe_dtype(spec)` (see the module doc)."""
        spec = self.spec if spec is None else spec
        if spec != self.spec:
            raise LabelenhError(f"recipes were drawn for {self.spec.describe()}, not {spec.describe()}")
        r = self.to("cpu")
        out = np.zeros(len(r), dtype=recipe_dtype(spec))
        flags = torch.zeros(len(r), dtype=torch.int64)
        if spec.num_sources > 1:
            out["partners"] = r.partners.numpy()
        for f in layout(spec):
            v = r.data[f.name]
            if f.bit is None:
                out[f.name] = v.numpy()
            elif f.per_source:
                flags |= (v.to(torch.int64) << (f.bit + torch.arange(v.shape[1]))).sum(dim=1)
            else:
                flags |= v.to(torch.int64) << f.bit
        out["flags"] = flags.numpy()
        return out

    @classmethod
    def from_struct(
        cls,
        arr: np.ndarray,
        spec: ViewSpec,
        image_size: tuple[int, int],
        *,
        samples: torch.Tensor | np.ndarray | None = None,
        views: torch.Tensor | np.ndarray | None = None,
        num_samples: int | None = None,
    ) -> Recipes:
        """Rebuild recipes from records written by `to_struct`.

        `arr` of shape [N, V] (the whole store table) needs no ids: row = sample, column = view.
        Any other shape is flattened and needs `samples` (the row each record was read from, as
        the sample index is implicit in the row); `views` is optional (-1 when absent).
        `num_samples`, when given, bounds the partner indices.
        """
        arr = _checked_records(np.asarray(arr), spec)
        if samples is None:
            if arr.ndim != 2:
                raise LabelenhError("pass samples= for recipe records that are not an [N, V] table")
            n, v = arr.shape
            samples = np.repeat(np.arange(n), v)
            views = np.tile(np.arange(v), n) if views is None else views
        flat = arr.reshape(-1)
        b = flat.shape[0]
        sample = torch.as_tensor(np.asarray(samples), dtype=torch.int64).reshape(-1)
        view = (torch.full((b,), -1, dtype=torch.int64) if views is None
                else torch.as_tensor(np.asarray(views), dtype=torch.int64).reshape(-1))
        if sample.shape[0] != b or view.shape[0] != b:
            raise LabelenhError(f"{b} recipe records but {sample.shape[0]} samples / {view.shape[0]} views")
        partners = (torch.as_tensor(flat["partners"].astype(np.int64)) if spec.num_sources > 1
                    else torch.zeros(b, 0, dtype=torch.int64))
        if num_samples is not None and partners.numel() and int(partners.max()) >= num_samples:
            raise LabelenhError(f"recipe partner index {int(partners.max())} >= {num_samples} samples")
        return cls.from_fields(spec, image_size, sample, view, partners, _decoded_fields(flat, spec))


def _checked_records(arr: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """`arr`, refused unless its fields are the records of `spec` (`recipe_dtype`)."""
    want = recipe_dtype(spec)
    if arr.dtype.names != want.names or any(
        arr.dtype[n].shape != want[n].shape or arr.dtype[n].base.kind != want[n].base.kind
        for n in want.names
    ):
        raise LabelenhError(
            f"recipe records have dtype {arr.dtype}, expected {want} for {spec.describe()}"
        )
    return arr


def _decoded_fields(flat: np.ndarray, spec: ViewSpec) -> dict[str, torch.Tensor]:
    """The records' fields as tensors [B] or [B, S]; flags unpacked from their bits."""
    s = spec.num_sources
    flags = torch.as_tensor(flat["flags"].astype(np.int64))
    data: dict[str, torch.Tensor] = {}
    for f in layout(spec):
        if f.bit is None:
            data[f.name] = torch.as_tensor(flat[f.name].astype(np.float32 if f.dtype == "float32" else np.int64))
        elif f.per_source:
            data[f.name] = ((flags[:, None] >> (f.bit + torch.arange(s))) & 1).bool()
        else:
            data[f.name] = ((flags >> f.bit) & 1).bool()
    return data


def _ops(spec: ViewSpec):
    """(op, its spec) for the op and, when it has one, its base."""
    out = [(get_op(spec.op), spec)]
    if spec.base is not None:
        out.append((get_op(spec.base.op), spec.base))
    return out


def from_draws(spec: ViewSpec, image_size: tuple[int, int], sample, *, partners=None, view=None,
               **fields) -> Recipes:
    """Recipes built from explicit values rather than the counter RNG, e.g. to reproduce another
    code base's augmentation exactly:

        from_draws(ViewSpec("mixup"), (32, 32), [0, 1], partners=[[5], [9]], lam=[0.3, 0.8])
        from_draws(ViewSpec("cutmix"), (32, 32), [0], partners=[[7]], box=[[4, 20, 8, 24]],
                   crop=[[[1, -2], [0, 3]]], flip=[[True, False]])
        from_draws(ViewSpec("ricap"), (32, 32), [0], partners=[[1, 2, 3]], wh=[[10, 20]],
                   offsets=[[[0, 0], [3, 1], [0, 5], [2, 2]]])
        from_draws(ViewSpec("rrc"), (224, 224), [0], crop_box=[[[12, 30, 150, 120]]], flip=[[True]])

    Field names and shapes are those of `layout(spec)` (documented in each op's module); a field
    with a neutral default (no crop offset, no flip, "mixed") may be left out. `partners`
    int [B, S-1] is needed when the op has several sources; `view` defaults to -1.
    """
    sample = np.asarray(sample, dtype=np.int64).reshape(-1)
    b, s = len(sample), spec.num_sources
    data: dict[str, np.ndarray] = {}
    for f in layout(spec):
        if f.name in fields:
            data[f.name] = np.asarray(fields.pop(f.name))
        elif f.default is not None:
            data[f.name] = np.full((b, *f.tensor_shape(s)), f.default)
        else:
            raise LabelenhError(f"from_draws: {spec.op} recipes need {f.name!r} "
                                f"(shape [B, {', '.join(map(str, f.tensor_shape(s)))}])")
    if fields:
        raise LabelenhError(f"from_draws: {spec.op} recipes have no field(s) {', '.join(sorted(fields))}")
    if s > 1 and partners is None:
        raise LabelenhError(f"from_draws: {spec.op} needs partners [B, {s - 1}]")
    part = np.zeros((b, 0), dtype=np.int64) if s == 1 else np.asarray(partners, dtype=np.int64).reshape(b, s - 1)
    vw = np.full(b, -1, dtype=np.int64) if view is None else np.asarray(view, dtype=np.int64).reshape(b)
    return Recipes.from_fields(spec, image_size, sample, vw, part, data)
