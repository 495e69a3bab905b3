"""`ViewSpec`: which op a view applies, with that op's parameters only.

A spec records only what decides its views' bytes: the op's own parameters and, for ops that
render their sources through a base op (the mixing ops, cutout), the base's spec. Its dict form
(`to_dict`) is part of a store's and a run's identity, so adding an op, or a parameter to another
op, never changes the identity of existing stores and runs.

    ViewSpec("mixup", alpha=0.2, pad=2)          # pad goes to the base (crop-flip)
    ViewSpec("cutmix", base="rrc", scale=(0.35, 1))
    ViewSpec.from_dict({"op": "mixup", "alpha": 0.2, "mix_prob": 1.0,
                        "base": {"op": "crop-flip", "pad": 2, "flip": True}})

Schema-1 stores and runs hold a flat dict naming every option of every op then known
(`V1_KEYS`); `from_dict` reads it as the spec it meant, and `record()` gives back the dict a spec
was read from, so an identity recorded from it stays equal.
"""

from __future__ import annotations

from typing import Any

from labelenh.errors import LabelenhError
from labelenh.views.ops import OPS, default_base, get_op
from labelenh.views.ops.base import Op

# The dict a schema-1 ViewSpec wrote: every option of the five ops it knew, whatever the op.
V1_KEYS = frozenset({"op", "pad", "flip", "mixup_alpha", "cutmix_beta", "mix_prob", "ricap_beta"})


class ViewSpec:
    """An op name, its parameters (checked, JSON-able) and, for ops that take one, a base spec.

    `ViewSpec(op, **options)`: options are the op's parameters (by name or by their schema-1
    name, e.g. `mixup_alpha`), `base` (a base op's name or spec) and the base's parameters.
    Immutable, comparable and hashable.
    """

    __slots__ = ("op", "params", "base", "_record")

    def __init__(self, op: str | None = None, **options: Any) -> None:
        o = get_op(op) if op is not None else default_base()  # crop-flip
        if op is not None and o.claims(str(op).strip().lower()):
            raise LabelenhError(f"{op!r} is not one op: build it with ViewSpec.parse({op!r}, ...)")
        base_opts = {k: options.pop(k) for k in list(options) if _base_param(o, k) and not _own_param(o, k)}
        base = options.pop("base", None)
        params: dict[str, Any] = {}
        for p in o.params:
            given = [k for k in (p.name, p.alias) if k and k in options]
            value = options.pop(given[0]) if given else p.default
            for extra in given[1:]:
                options.pop(extra)
            params[p.name] = p.parse(value, o.name)
        if options:
            raise LabelenhError(f"option(s) {', '.join(sorted(options))} do not apply to --aug {o.name} "
                                f"(its options: {', '.join(options_of(o.name)) or 'none'})")
        if o.takes_base:
            if isinstance(base, ViewSpec):
                if base_opts:
                    raise LabelenhError("give base options inside the base spec, not beside it")
                b = base
            else:
                b = ViewSpec(base if base is not None else default_base().name, **base_opts)
            if not get_op(b.op).is_base:
                raise LabelenhError(f"--base {b.op} cannot be a base; choose one of "
                                    f"{', '.join(n for n, x in OPS.items() if x.is_base)}")
        elif base is not None or base_opts:
            raise LabelenhError(f"--aug {o.name} takes no base (its options: {', '.join(options_of(o.name)) or 'none'})")
        else:
            b = None
        object.__setattr__(self, "op", o.name)
        object.__setattr__(self, "params", tuple(params.items()))
        object.__setattr__(self, "base", b)
        object.__setattr__(self, "_record", None)
        bad = o.check_spec(self)
        if bad:
            raise LabelenhError(f"--aug {o.name}: {bad}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ViewSpec is immutable")

    def __getattr__(self, name: str) -> Any:
        """A parameter of the op (or of its base), e.g. `spec.pad`, `spec.alpha`."""
        if name.startswith("_") or name in ViewSpec.__slots__:
            raise AttributeError(name)
        for k, v in object.__getattribute__(self, "params"):
            if k == name:
                return v
        base = object.__getattribute__(self, "base")
        if base is not None:
            return getattr(base, name)
        raise AttributeError(f"--aug {self.op} has no option {name!r}")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ViewSpec) and self.op == other.op and self.params == other.params
                and self.base == other.base)

    def __hash__(self) -> int:
        return hash((self.op, self.params, self.base))

    def __repr__(self) -> str:
        return f"ViewSpec({self.describe()})"

    def __reduce__(self):  # pickles (DataLoader workers) as its dict form
        return (ViewSpec.from_dict, (self.to_dict(),))

    @property
    def impl(self) -> Op:
        return get_op(self.op)

    @property
    def num_sources(self) -> int:
        """Images a view is made from: 1, 2 (mixup, cutmix) or 4 (ricap)."""
        return self.impl.sources(self)

    @property
    def is_mix(self) -> bool:
        return self.impl.mixes

    @classmethod
    def parse(cls, op: str, **overrides: Any) -> ViewSpec:
        """From a CLI-style op name (or an op's own syntax, e.g. a list of ops) plus options;
        options that are None are left at defaults."""
        return cls.build(op, None, **overrides)

    @classmethod
    def build(cls, op: str, defaults: dict[str, Any] | None = None, **given: Any) -> ViewSpec:
        """Like `parse`, plus `defaults` that apply only where the op (or its base) has the
        option, e.g. the dataset's crop padding: `build(op, {"pad": 4}, **flags)`."""
        o = get_op(op)
        opts = {k: v for k, v in given.items() if v is not None}
        if o.claims(str(op).strip().lower()):
            own = {k: opts.pop(k) for k in list(opts) if _own_param(o, k)}
            return o.from_text(str(op).strip().lower(), own,
                               lambda name: cls.build_some(name, defaults, **opts), set(opts))
        base_name = opts.get("base")
        b = get_op(base_name if isinstance(base_name, str) else default_base().name) if o.takes_base else None
        for k, v in (defaults or {}).items():
            if k not in opts and (_own_param(o, k) or (b is not None and _own_param(b, k))):
                opts[k] = v
        return cls(op, **opts)

    @classmethod
    def build_some(cls, op: str, defaults: dict[str, Any] | None = None, **options: Any
                   ) -> tuple[ViewSpec, set[str]]:
        """`build(op, defaults, options)` taking only the options that apply to `op` (or its
        base); returns (spec, the option names it used)."""
        o = get_op(op)
        b = default_base() if o.takes_base else None
        if b is not None and isinstance(options.get("base"), str):
            b = get_op(options["base"])
        used = {k for k in options if _own_param(o, k) or (b is not None and (k == "base" or _own_param(b, k)))}
        return cls.build(op, defaults, **{k: options[k] for k in used}), used

    def to_dict(self) -> dict[str, Any]:
        """{"op": name, **params, ["base": base.to_dict()]} (JSON-able)."""
        d: dict[str, Any] = {"op": self.op, **{k: _jsonable(v) for k, v in self.params}}
        if self.base is not None:
            d["base"] = self.base.to_dict()
        return d

    def record(self) -> dict[str, Any]:
        """The dict this spec was read from (a schema-1 dict stays as written), else `to_dict()`:
        what an identity records, so that rereading and rewriting it changes nothing."""
        return dict(self._record) if self._record is not None else self.to_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViewSpec:
        if not isinstance(d, dict):
            raise LabelenhError(f"a view spec must be a JSON object, got {d!r}")
        orig = dict(d)
        d = dict(d)
        op = d.pop("op", None)
        if op is None:
            raise LabelenhError(f"view spec {d} names no op")
        if set(d) | {"op"} == V1_KEYS:  # schema 1: keep only the options the op had
            o = get_op(op)
            d = {k: v for k, v in d.items() if _own_param(o, k) or (o.takes_base and _base_param(o, k))}
        base = d.pop("base", None)
        if isinstance(base, dict):
            base = cls.from_dict(base)
        spec = cls(op, **d, **({} if base is None else {"base": base}))
        object.__setattr__(spec, "_record", orig)
        return spec

    def describe(self) -> str:
        """Short human form, e.g. 'ricap(beta=0.3, mix_prob=1, base=crop-flip(pad=4, flip=True))'."""
        parts = [f"{k}={_fmt(v)}" for k, v in self.params]
        if self.base is not None:
            parts.append(f"base={self.base.describe()}")
        return f"{self.op}({', '.join(parts)})" if parts else self.op


def _jsonable(v: Any) -> Any:
    if isinstance(v, ViewSpec):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, ViewSpec):
        return v.describe()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _own_param(o: Op, key: str) -> bool:
    return any(key in (p.name, p.alias) for p in o.params)


def _base_param(o: Op, key: str) -> bool:
    """A parameter of some base op (any: the base is chosen by another option)."""
    return o.takes_base and any(_own_param(b, key) for b in OPS.values() if b.is_base)


def options_of(op: str) -> list[str]:
    """Option names `--aug op` accepts: its own, then `base` and the base ops' options."""
    o = get_op(op)
    names = [p.name for p in o.params]
    if o.takes_base:
        names.append("base")
        for b in OPS.values():
            if b.is_base:
                names += [p.name for p in b.params if p.name not in names]
    return names


def same_spec(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two recorded spec dicts (either form, or None) mean the same views."""
    if a is None or b is None:
        return a is b
    try:
        return ViewSpec.from_dict(a) == ViewSpec.from_dict(b)
    except LabelenhError:
        return False


def augments(aug: str | None) -> bool:
    """Whether `--aug aug` changes the image (any op but the identity; unknown names: False)."""
    if aug is None:
        return False
    try:
        return get_op(aug).augments
    except LabelenhError:
        return False


def names_views_of(aug: str, spec: ViewSpec) -> bool:
    """Whether `--aug aug` names the views `spec` describes (a student's --aug vs its store)."""
    return get_op(aug).matches(spec, str(aug).strip().lower())
