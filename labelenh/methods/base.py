"""The target-method contract: inputs, context, the Method base class and the registry.

A method is a pure loss over the student's logits and the batch's inputs plus a thin class
that declares its parameters and returns named loss terms; the engine sums the terms and logs
each one, and tells the method the epoch and step (`MethodContext`). Methods register
themselves with `@register("name")`; every module in this package is imported by
`labelenh.methods`, so adding a method means adding one module here (and the contract test
in tests/test_methods.py picks it up from `METHODS` automatically). Each `Param` is declared
once: defaults, ranges and help here make the `labelenh student` options and their help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from torch import Tensor

from labelenh.batch import MethodInputs  # noqa: F401 - the batch inputs methods consume
from labelenh.errors import LabelenhError
from labelenh.losses import ENSEMBLE_RULES

TEACHER_KINDS = ("none", "store", "online")


class Param(NamedTuple):
    """One method parameter, declared once: the CLI option, its help and the checks come from it.

    `lo`/`hi` bound numbers (`lo_open` excludes `lo`), `choices` lists a string's values, and
    `flag` is the option's name when it is not the parameter's (e.g. T is `--temperature`).
    """

    type: type
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] | None = None
    flag: str | None = None

    def range_text(self) -> str:
        """"[0, 1]", "(0, inf]", "prob-mean | logit-mean", "true | false" or ""."""
        if self.choices:
            return " | ".join(self.choices)
        if self.type is bool:
            return "true | false"
        if self.lo is None and self.hi is None:
            return ""
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        return f"{'(' if self.lo_open else '['}{_fmt(lo)}, {_fmt(hi)}]"

    def option(self, key: str) -> str:
        """The CLI option's name without dashes, e.g. "temperature", "kl-reduction"."""
        return self.flag or key.replace("_", "-")

    def check(self, method: str, key: str, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise LabelenhError(
                f"method {method!r}: {key} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        if self.type in (int, float) and (self.lo is not None or self.hi is not None):
            lo = -math.inf if self.lo is None else self.lo
            hi = math.inf if self.hi is None else self.hi
            v = float(value)
            ok = math.isfinite(v) and (v > lo if self.lo_open else v >= lo) and v <= hi
            if not ok:
                raise LabelenhError(
                    f"method {method!r}: {key} must be in {self.range_text()}, got {value}"
                )


# Parameters several methods share, declared once.
T_PARAM = Param(float, 1.0, "teacher softmax temperature", 0.0, math.inf, lo_open=True,
                flag="temperature")
ENSEMBLE_PARAM = Param(
    str, "prob-mean",
    "how M teachers combine: mean of probabilities, softmax of the mean logit, or per-sample "
    "weights from each teacher's CE on the label (confidence, CA-MKD-style)",
    choices=ENSEMBLE_RULES,
)
STAND_PARAM = Param(
    bool, False,
    "logit standardisation (Sun et al., CVPR 2024): z-score student and teacher logits before "
    "the tempered softmax; T is then its base temperature. The paper uses T = 2 and a KD "
    "weight of 9 (kd: CE 0.1 + KD 9, i.e. alpha = 0.1/9.1; dkd: alpha and beta times 9)",
)


@dataclass(frozen=True)
class MethodContext:
    """Where training is when a loss is computed: the engine passes it to every `loss`.

    epoch counts from 0 (mdistiller's epoch e + 1); step is the step within the epoch.
    """

    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1



class Method:
    """Base class. Subclasses set the class attributes, `params`, and implement target/loss.

    `hparams` holds the resolved parameters (defaults filled in, types coerced) so runs can
    record them; `describe()` gives the JSON-able form.
    """

    name: ClassVar[str] = ""
    # "none" | "store" (read from a soft-label store; `--teacher RUN` runs it online instead)
    # | "online" (teacher runs every step)
    teacher: ClassVar[str] = "none"
    allows_negative: ClassVar[bool] = False  # target rows still sum to 1 but may hold negative mass
    # False for losses that are not a soft CE against one target (DKD, DIST): no `target()`
    has_target: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {}
    summary: ClassVar[str] = ""  # one line for `labelenh methods` and --help
    formula: ClassVar[str] = ""  # the loss, in one or two lines
    example: ClassVar[str] = ""  # flags after `labelenh student`; made from `teacher` when empty

    def __init__(self, num_classes: int, **params: Any) -> None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise LabelenhError(
                f"method {self.name!r}: num_classes must be an integer >= 2, got {num_classes}"
            )
        self.num_classes = int(num_classes)
        self.hparams: dict[str, Any] = resolve_params(self.name, self.params, params)
        self.setup()

    # --- to override -------------------------------------------------------------------------
    def setup(self) -> None:
        """Read `self.hparams`, each already checked against its Param; check what spans
        several parameters here (e.g. wa + wb > 0), raising LabelenhError naming them."""

    def target(self, inp: MethodInputs) -> Tensor:  # [B, C]
        raise LabelenhError(
            f"method {self.name!r} has no single target: its loss is not a soft CE against one"
        )

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        """Named loss terms; `ctx` says the epoch and step (None outside a training loop)."""
        raise NotImplementedError

    def observe(self, logits: Tensor, inp: MethodInputs) -> None:
        """Stateful methods accumulate statistics here (engine calls it in train mode only)."""

    def epoch_end(self) -> None:
        """Called once after every training epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise LabelenhError(
                f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}; "
                "was it written by another method?"
            )

    # --- shared ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "teacher": self.teacher, "params": dict(self.hparams)}

    @classmethod
    def example_flags(cls) -> str:
        if cls.example:
            return cls.example
        src = {"none": "", "store": " --store STORE.h5", "online": " --teacher RUN"}[cls.teacher]
        return f"--method {cls.name}{src}"

    @classmethod
    def help_text(cls) -> str:
        """What `labelenh methods M` and `labelenh student --method M --help` show."""
        lines = [f"{cls.name}: {cls.summary}"]
        if cls.formula:
            lines += ["", "  loss: " + cls.formula.replace("\n", "\n        ")]
        teacher = {
            "none": "no teacher",
            "store": "a soft-label store (--store), or an online teacher (--teacher RUN)",
            "online": "an online teacher (--teacher RUN)",
        }[cls.teacher]
        lines += ["", f"  teacher: {teacher}", "", "  parameters (option, default, range):"]
        if not cls.params:
            lines.append("    none")
        for key, p in cls.params.items():
            opt = f"--{p.option(key)}" + (f"/--no-{p.option(key)}" if p.type is bool else "")
            rng = f", {p.range_text()}" if p.range_text() else ""
            lines.append(f"    {key} ({opt}, {p.default!r}{rng}): {p.help}")
        lines += ["", f"  example: labelenh student {cls.example_flags()}"]
        return "\n".join(lines)

    def teacher_logits(self, inp: MethodInputs) -> Tensor:
        """The batch's teacher logits as [B, M, C], or a clear error when they are missing."""
        t = inp.teacher_logits
        if t is None:
            raise LabelenhError(
                f"method {self.name!r} needs teacher logits "
                f"({'a soft-label store' if self.teacher == 'store' else 'an online teacher'})"
            )
        if t.ndim == 2:
            t = t.unsqueeze(1)
        if t.ndim != 3 or t.shape[-1] != self.num_classes or t.shape[0] != inp.hard.shape[0]:
            raise LabelenhError(
                f"method {self.name!r}: teacher logits must be [B, M, {self.num_classes}] with "
                f"B={inp.hard.shape[0]}, got {tuple(inp.teacher_logits.shape)}"
            )
        return t


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")  # 1e6, as labelenh.bounds writes it


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(method: str, key: str, spec: Param, value: Any) -> Any:
    """Accept the declared type, or a string the CLI passed through (e.g. "0.1", "true")."""
    try:
        if spec.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if isinstance(value, (str, int)) and text in _TRUE + _FALSE:
                return text in _TRUE
            raise TypeError
        if spec.type is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if spec.type is int:
            if isinstance(value, bool):
                raise TypeError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if spec.type is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise LabelenhError(
            f"method {method!r}: {key} must be a {spec.type.__name__}, got {value!r}"
        ) from None
    return value


def resolve_params(method: str, specs: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown names refused, values coerced to the declared types."""
    unknown = sorted(set(given) - set(specs))
    if unknown:
        valid = ", ".join(specs) if specs else "none"
        raise LabelenhError(
            f"method {method!r} has no parameter {', '.join(map(repr, unknown))}; valid: {valid}"
        )
    out = {}
    for key, spec in specs.items():
        out[key] = _coerce(method, key, spec, given[key]) if key in given else spec.default
        spec.check(method, key, out[key])
    return out


METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: `@register("ls")` adds the method to METHODS under that name."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        if cls.teacher not in TEACHER_KINDS:
            raise ValueError(f"method {name!r}: teacher must be one of {TEACHER_KINDS}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def build_method(name: str, num_classes: int, **params: Any) -> Method:
    """Instantiate a registered method; unknown names or params raise LabelenhError."""
    cls = METHODS.get(name)
    if cls is None:
        raise LabelenhError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    # the CLI's names are accepted too (temperature= for T, ols_init= for init), so code reads
    # like the command line; a parameter named both ways is ambiguous
    by_option = {p.option(k).replace("-", "_"): k for k, p in cls.params.items() if p.option(k) != k}
    named: dict[str, Any] = {}
    for key, value in params.items():
        own = key if key in cls.params else by_option.get(key, key)
        if own in named:
            raise LabelenhError(f"method {name!r}: {own} is given twice (as {own} and as {key})")
        named[own] = value
    return cls(num_classes, **named)
