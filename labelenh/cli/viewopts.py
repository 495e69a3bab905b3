"""View options on the command line, made from the op registry.

`@with_view_options(panel)` adds `--aug`'s companions to a command: one flag per distinct
`Param.cli_flag` of every registered op (`--pad`, `--mixup-alpha`, `--rrc-scale`, ...) plus
`--base`. The command receives them as one dict, `view_flags` ({flag: value}, given ones
only), and turns them into a spec with `spec_from_flags`. A new op's options appear here, in
`--help` and in validation without any edit to the CLI.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from labelenh.errors import LabelenhError

_TYPES = {"int": int, "float": float, "bool": bool, "pair": str, "str": str}


def _flags() -> dict[str, list[tuple[str, Any]]]:
    """{flag: [(op name, Param), ...]} over the registry, in registry order."""
    from labelenh.views import OPS

    out: dict[str, list[tuple[str, Any]]] = {}
    for name, op in OPS.items():
        for p in op.params:
            if p.cli:
                out.setdefault(p.cli_flag, []).append((name, p))
    return out


def aug_help() -> str:
    from labelenh.views import OPS

    return "; ".join(f"{n}: {op.summary}" for n, op in OPS.items())


def aug_names() -> str:
    from labelenh.views import OPS

    return " | ".join(OPS)


def _ident(flag: str) -> str:
    return "view_" + flag.lstrip("-").replace("-", "_")


def with_view_options(panel: str | None = None) -> Callable:
    """Decorator: append the registry's view flags to a typer command (see the module doc)."""
    from labelenh.views.ops import base_ops

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        extra: list[inspect.Parameter] = []
        names: dict[str, str] = {}
        for flag, owners in _flags().items():
            p = owners[0][1]
            ops = ", ".join(o for o, _ in owners)
            default = ",".join(f"{v:g}" for v in p.default) if p.kind == "pair" else p.default
            help_ = f"{p.help} ({ops}; default {default})"
            decl = f"{flag}/--no-{flag[2:]}" if p.kind == "bool" else flag
            ann = Annotated[_TYPES[p.kind] | None, typer.Option(decl, help=help_, rich_help_panel=panel,
                                                                show_default=False)]
            ident = _ident(flag)
            names[ident] = flag
            extra.append(inspect.Parameter(ident, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann))
        base_help = (f"per-source transform of the ops that take one: {' | '.join(base_ops())} "
                     "(default: the first)")
        extra.append(inspect.Parameter("view_base", inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[str | None, typer.Option(
                                           "--base", help=base_help, rich_help_panel=panel)]))
        names["view_base"] = "--base"
        params = [q for q in sig.parameters.values() if q.name != "view_flags"]
        params = [q.replace(kind=inspect.Parameter.KEYWORD_ONLY) for q in params] + extra

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {names[k]: kwargs.pop(k) for k in list(kwargs) if k in names}
            return fn(**kwargs, view_flags={f: v for f, v in given.items() if v is not None})

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {q.name: q.annotation for q in params}
        del wrapper.__wrapped__  # typer must read the new signature, not the wrapped one
        return wrapper

    return deco


def spec_from_flags(aug: str, flags: dict[str, Any], defaults: dict[str, Any] | None = None):
    """The ViewSpec of `--aug aug` plus the given view flags ({flag: value}); `defaults` (e.g.
    the dataset's crop padding) apply where the op has the option. A flag the op does not take
    is refused on one line."""
    from labelenh.views import ViewSpec, get_op
    from labelenh.views.ops import default_base

    op = get_op(aug)
    text = str(aug).strip().lower()
    if op.claims(text):  # a list of ops: flags go to every listed op that takes them
        own = {p.name: flags[p.cli_flag] for p in op.params if p.cli_flag in flags}
        rest = {f: v for f, v in flags.items() if f not in {p.cli_flag for p in op.params}}
        return op.from_text(text, own, lambda name: _some(name, rest, defaults), set(rest))
    base_name = flags.get("--base")
    if base_name is not None and not op.takes_base:
        raise LabelenhError(f"--base does not apply to --aug {op.name}")
    base = get_op(base_name) if base_name is not None else (default_base() if op.takes_base else None)
    opts: dict[str, Any] = {}
    base_opts: dict[str, Any] = {}
    for flag, value in flags.items():
        if flag == "--base":
            continue
        mine = [p for p in op.params if p.cli_flag == flag]
        theirs = [p for p in (base.params if base is not None else ()) if p.cli_flag == flag]
        if mine:
            opts[mine[0].name] = value
        elif theirs:
            base_opts[theirs[0].name] = value
        else:
            takes = [p.cli_flag for p in op.params] + ([p.cli_flag for p in base.params] + ["--base"] if base else [])
            raise LabelenhError(f"{flag} does not apply to --aug {op.name}"
                                + (f" with base {base.name}" if base is not None else "")
                                + f" (it takes {', '.join(takes) or 'no options'})")
    if base is not None:
        b = ViewSpec.build(base.name, defaults, **base_opts)
        return ViewSpec(op.name, **opts, base=b)
    return ViewSpec.build(op.name, defaults, **opts)


def _some(op: str, flags: dict[str, Any], defaults: dict[str, Any] | None):
    """(spec of `op` from the flags that apply to it, those flags)."""
    from labelenh.views import get_op
    from labelenh.views.ops import default_base

    o = get_op(op)
    base = get_op(flags["--base"]) if o.takes_base and "--base" in flags else (default_base() if o.takes_base else None)
    takes = {p.cli_flag for p in o.params} | ({p.cli_flag for p in base.params} | {"--base"} if base else set())
    used = {f for f in flags if f in takes}
    return spec_from_flags(op, {f: flags[f] for f in used}, defaults), used
