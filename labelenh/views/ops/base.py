"""What a view op declares, and the registry that maps names to ops.

An op is one module under `labelenh/views/ops/` holding one `Op` subclass decorated with
`@register_op`. It declares, in one place:

- `params`        its options (`Param`: default, check, help, CLI flag)
- `fields`        its recipe fields: tensor dtype and shape, and how each is stored in the packed
                  HDF5 record (`Field`)
- `sample`        how it draws its fields from the counter RNG of (seed, sample, view)
- `render`        how it makes a batch of view images, batched on the tensors' device
- `weights`       the hard-label weight of each source image

Ops that transform each source image on its own (`is_base`: crop-flip, rrc) can be the `base`
of the ops that take one (`takes_base`: the mixing ops, cutout): every source is first rendered
through the base, then the op combines the base views. Nothing outside an op's module names it:
the CLI, `views show`, validation and the tests read this registry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from labelenh.errors import LabelenhError

if TYPE_CHECKING:
    from labelenh.rng import CounterRNG
    from labelenh.views.recipes import Recipes
    from labelenh.views.spec import ViewSpec


# ---- parameters ------------------------------------------------------------------------------

def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _from_text(v: Any, kind: str) -> Any:
    """CLI values arrive as text (`--aug-param scale=0.08,1`); parse them for `kind`."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    try:
        if kind == "int":
            return int(s)
        if kind == "float":
            return float(s)
        if kind == "bool":
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            return v
        if kind == "pair":
            return [float(p) for p in s.replace("(", "").replace(")", "").split(",")]
    except ValueError:
        return v
    return s


@dataclass(frozen=True)
class Param:
    """One option of an op.

    kind   "int" | "float" | "bool" | "pair" (two floats, lo <= hi) | "str" | "ints" (a list of
           positive integers) | "specs" (a list of view specs); a None default makes it optional
    check  value -> error text ("" when fine), run after the kind's own check
    flag   the CLI flag, e.g. "--mixup-alpha" (several ops may share one, e.g. "--mix-prob")
    alias  the option's name in schema-1 view specs, where it differs ("mixup_alpha")
    cli    False: no flag of its own (the option comes from `--aug`'s text)
    """

    name: str
    default: Any
    help: str
    kind: str = "float"
    check: Callable[[Any], str] | None = None
    flag: str | None = None
    alias: str | None = None
    cli: bool = True

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, value: Any, op: str) -> Any:
        """The checked, JSON-able value, or LabelenhError naming the op and the option."""
        v = _from_text(value, self.kind)
        what = f"{op} option {self.name} ({self.cli_flag})"
        if v is None and self.default is None:
            return None
        if self.kind == "int":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise LabelenhError(f"{what} must be an integer, got {value!r}")
            v = int(v)
        elif self.kind == "float":
            if not _is_real(v) or not math.isfinite(float(v)):
                raise LabelenhError(f"{what} must be a finite number, got {value!r}")
            v = float(v)
        elif self.kind == "bool":
            if not isinstance(v, (bool, np.bool_)):
                raise LabelenhError(f"{what} must be true or false, got {value!r}")
            v = bool(v)
        elif self.kind == "pair":
            try:
                lo, hi = v
            except (TypeError, ValueError):
                raise LabelenhError(f"{what} must be two numbers LO,HI, got {value!r}") from None
            if not (_is_real(lo) and _is_real(hi) and math.isfinite(lo) and math.isfinite(hi)):
                raise LabelenhError(f"{what} must be two finite numbers LO,HI, got {value!r}")
            if lo > hi:
                raise LabelenhError(f"{what} must be in order LO <= HI, got {lo:g},{hi:g}")
            v = (float(lo), float(hi))
        elif self.kind == "ints":
            if not isinstance(v, (list, tuple)) or not all(
                    isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0 for x in v):
                raise LabelenhError(f"{what} must be a list of positive integers, got {value!r}")
            v = tuple(int(x) for x in v)
        elif self.kind == "specs":
            from labelenh.views.spec import ViewSpec

            if not isinstance(v, (list, tuple)):
                raise LabelenhError(f"{what} must be a list of view specs, got {value!r}")
            v = tuple(x if isinstance(x, ViewSpec) else ViewSpec.from_dict(x) for x in v)
        elif not isinstance(v, str):
            raise LabelenhError(f"{what} must be text, got {value!r}")
        bad = self.check(v) if self.check else ""
        if bad:
            raise LabelenhError(f"{what} {bad}, got {value!r}")
        return v


def positive(v: float) -> str:
    return "" if v > 0 else "must be positive (> 0)"


def probability(v: float) -> str:
    return "" if 0.0 <= v <= 1.0 else "must be a probability in [0, 1]"


def int_range(lo: int, hi: int) -> Callable[[int], str]:
    return lambda v: "" if lo <= v <= hi else f"must be in [{lo}, {hi}]"


# ---- recipe fields ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One recipe tensor of an op and its packed record form.

    per_source  the tensor has a source axis: [B, S, *shape] (else [B, *shape])
    dtype       the tensor dtype ("int64" | "float32" | "bool")
    record      numpy dtype of the stored value, e.g. "<u2"; None for a flag bit
    bit         flag fields: first bit in the record's `flags` byte (one bit per source)
    default     the neutral value `from_draws` fills in when a caller leaves the field out
                (None: the field must be given)
    """

    name: str
    dtype: str = "int64"
    shape: tuple[int, ...] = ()
    per_source: bool = False
    record: str | None = None
    bit: int | None = None
    default: Any = None

    def tensor_shape(self, num_sources: int) -> tuple[int, ...]:
        return ((num_sources,) if self.per_source else ()) + self.shape

    def torch_dtype(self) -> torch.dtype:
        return {"int64": torch.int64, "float32": torch.float32, "bool": torch.bool}[self.dtype]


# ---- ops -------------------------------------------------------------------------------------

@dataclass
class Draw:
    """What `Op.sample` may use: the counter RNG keyed by (seed, sample, view) per element, the
    samples and views, the number of sources of the view being drawn and the image size."""

    rng: CounterRNG
    sample: np.ndarray  # int64 [B]
    view: np.ndarray  # int64 [B]
    num_sources: int
    num_samples: int
    image_size: tuple[int, int]
    sizes: Callable[[np.ndarray], np.ndarray] | None = None  # original (H, W) of sample indices
    partners: np.ndarray | None = None  # int64 [B, S-1], once the op has drawn them (for bases)

    @property
    def size(self) -> int:
        return int(self.sample.shape[0])

    def source_sizes(self, indices: np.ndarray) -> np.ndarray:
        """int64 [B, 2]: (H, W) of the original images `indices` (the image size unless the
        source is an image folder, whose files keep their own sizes)."""
        if self.sizes is None:
            return np.tile(np.asarray(self.image_size, dtype=np.int64), (len(indices), 1))
        return np.asarray(self.sizes(np.asarray(indices, dtype=np.int64)), dtype=np.int64).reshape(-1, 2)

    def subset(self, mask: np.ndarray, num_sources: int) -> Draw:
        """The elements under `mask`, with the same keys: their draws do not change."""
        from labelenh.rng import CounterRNG

        rng = CounterRNG.__new__(CounterRNG)
        rng.keys = self.rng.keys[mask]
        return Draw(rng, self.sample[mask], self.view[mask], num_sources, self.num_samples, self.image_size,
                    self.sizes)


class Op:
    """Base class of view ops; see the module doc. Subclasses override what they need."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and `views show`
    aliases: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    num_sources: ClassVar[int] = 1
    is_base: ClassVar[bool] = False  # transforms each source alone: usable as another op's base
    default_base: ClassVar[bool] = False  # the base an op gets when none is named
    takes_base: ClassVar[bool] = False  # renders its sources through a base op first
    mixes: ClassVar[bool] = False  # combines several images (and their labels)
    augments: ClassVar[bool] = True  # False for the identity: a student on it is no "aug-" method
    streams: ClassVar[range] = range(0)  # the RNG stream ids it draws from (disjoint per op)
    order: ClassVar[int] = 100  # position in listings (help, `views show`, tests)

    @classmethod
    def claims(cls, text: str) -> bool:
        """Whether `--aug text` is this op's own syntax (e.g. a list of ops), not a name."""
        return False

    def from_text(self, text: str, own: dict[str, Any], part: Callable[[str], tuple[ViewSpec, set[str]]],
                  given: set[str]) -> ViewSpec:
        """The spec `--aug text` names, for ops that `claims` it: `own` are options of this op;
        `part(op_name)` builds a listed op from the other options that apply to it and says
        which it used; every option in `given` must be used by some listed op."""
        raise NotImplementedError

    def example(self) -> dict[str, Any]:
        """Options that make a valid spec when the defaults alone do not (tests)."""
        return {}

    def example_aug(self) -> str:
        """An `--aug` value that names this op (its name, unless it needs more)."""
        return self.name

    def sources(self, spec: ViewSpec) -> int:
        """Images a view of `spec` is made from (`num_sources` unless it depends on the spec)."""
        return self.num_sources

    def check_views(self, spec: ViewSpec, num_views: int) -> str:
        """Why `num_views` views per sample do not suit `spec` ("" when fine)."""
        return ""

    def split(self, spec: ViewSpec, r: Recipes) -> list[tuple[torch.Tensor | None, Recipes]]:
        """[(row mask or None for all, recipes of one single op)]: what `gather_and_apply` renders
        group by group (several groups only for stores holding several ops)."""
        return [(None, r)]

    def matches(self, spec: ViewSpec, text: str) -> bool:
        """Whether `--aug text` names the views `spec` describes (a student's --aug vs its store)."""
        return get_op(text).name == spec.op

    def fields(self, spec: ViewSpec, num_sources: int) -> tuple[Field, ...]:
        """Its own recipe fields (partners and the base's fields are added by the container)."""
        return ()

    def check_spec(self, spec: ViewSpec) -> str:
        """Checks across parameters (each alone is checked by its `Param`); "" when fine."""
        return ""

    def sample(self, spec: ViewSpec, d: Draw) -> dict[str, np.ndarray]:
        """Its fields for every element of `d` (numpy, the tensor shapes of `fields`)."""
        return {}

    def derived(self, spec: ViewSpec, data: dict[str, torch.Tensor], image_size: tuple[int, int]
                ) -> dict[str, torch.Tensor]:
        """Fields recomputed from stored ones (not stored themselves)."""
        return {}

    def check_records(self, spec: ViewSpec, data: dict[str, torch.Tensor], image_size: tuple[int, int]) -> str:
        """Why stored fields cannot come from this op on `image_size` images ("" when fine)."""
        return ""

    def render_from_source(self, spec: ViewSpec, source: Any, r: Recipes) -> torch.Tensor | None:
        """Base ops: uint8 [B, S, C, H, W] base views made straight from `source` when it can do
        better than its decoded images (image folders: crop the original file); else None."""
        return None

    def render_base(self, spec: ViewSpec, sources: torch.Tensor, r: Recipes) -> torch.Tensor:
        """Base ops: uint8 [B, S, C, H, W] -> the per-source base views, same shape."""
        raise NotImplementedError

    def render(self, spec: ViewSpec, views: torch.Tensor, r: Recipes) -> torch.Tensor:
        """float32 [B, C, H, W] (0..255) from `views`, uint8 [B, S, C, H, W]: the sources after
        the base (for base ops: after their own transform; for "none": the images)."""
        return views[:, 0].to(torch.float32)

    def weights(self, spec: ViewSpec, r: Recipes) -> torch.Tensor:
        """float32 [B, S]: each source's hard-label weight; rows sum to 1."""
        return torch.ones(len(r), 1, device=r.device)


OPS: dict[str, Op] = {}
_ALIASES: dict[str, str] = {}


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the registry (name, aliases and RNG streams must be new)."""
    op = cls()
    for n in (cls.name, *cls.aliases):
        if n in OPS or n in _ALIASES:
            raise RuntimeError(f"view op name {n!r} registered twice")
    for other in OPS.values():
        if set(other.streams) & set(cls.streams):
            raise RuntimeError(f"view ops {other.name} and {cls.name} share RNG streams")
    OPS[cls.name] = op
    for a in cls.aliases:
        _ALIASES[a] = cls.name
    return cls


def get_op(name: str) -> Op:
    """The op registered as `name` (or an alias); LabelenhError listing the choices."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in OPS:
        for op in OPS.values():
            if op.claims(key):
                return op
        raise LabelenhError(f"unknown augmentation {name!r}; choose one of {', '.join(OPS)}")
    return OPS[key]


def default_base() -> Op:
    return next(op for op in OPS.values() if op.default_base)


def base_ops() -> list[str]:
    return [n for n, op in OPS.items() if op.is_base]
