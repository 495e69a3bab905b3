"""Settings declared once, on the dataclass field they fill.

A field made with `option(default, help=..., bound=..., panel=...)` carries its flag, type,
default, range and help. Everything else is generated from that declaration:

- the typer options of every command that takes the settings (`with_options`);
- the range and choice checks, whose messages name the flag (`check_values`);
- the type a recipe (TOML or a run's config.json) must give each key (`value_types`);
- the help text, which states the range and the default.

Adding a training option is one field here plus one test; the commands, recipes, records and
help follow.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Annotated, Any

import typer

from labelenh.bounds import Bound
from labelenh.errors import LabelenhError

NEW = "NEW"  # Option.legacy of a setting every recorded run has


@dataclass(frozen=True)
class Option:
    """What the command line knows of one setting. `help` may hold `{range}` (the bound's text);
    without it a bound is appended. `cli_type` is what the flag takes when it is not the field's
    type (comma-separated integers for a list); `show_default` False hides the default, a string
    replaces it. A setting with `cli=False` is recorded and checked but has no flag."""

    help: str
    panel: str | None = None
    bound: Bound | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()
    cli_type: type | None = None
    show_default: str | bool | None = None
    cli: bool = True
    # what runs recorded before the setting existed trained with (NEW: none recorded it)
    legacy: Any = NEW

    def flag_for(self, name: str) -> str:
        """How messages name the setting: its flag, or its recorded name when it has none."""
        if not self.cli:
            return name
        return self.flag or "--" + name.replace("_", "-")

    def help_text(self) -> str:
        rng = self.bound.text() if self.bound else " | ".join(self.choices)
        if "{range}" in self.help:
            return self.help.replace("{range}", rng)
        return f"{self.help} In {rng}." if self.bound else self.help


def option(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **declaration: Any) -> Any:
    """A dataclass field declared as an option (see `Option` for the keywords)."""
    meta = {"option": Option(**declaration)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> dict[str, Option]:
    """{field name: Option} of a settings dataclass, in field order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}


def flag(cls: type, name: str) -> str:
    """The flag that sets field `name` of `cls`, e.g. flag(TrainConfig, "warmup_epochs")."""
    return declared(cls)[name].flag_for(name)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def defaults(cls: type) -> dict[str, Any]:
    return {f.name: _default(f) for f in dataclasses.fields(cls)}


def legacy_values(cls: type) -> dict[str, Any]:
    """{field: declared legacy value} of the settings added after runs were first recorded."""
    return {name: opt.legacy for name, opt in declared(cls).items() if opt.legacy != NEW}


def check_values(cls: type, values: dict[str, Any], *, choices: bool = True) -> None:
    """Every declared range (and choice) that `values` (field -> value) sets; None means unset.
    The message names the flag and its range on one line."""
    for name, opt in declared(cls).items():
        value = values.get(name)
        if value is None:
            continue
        if opt.bound is not None:
            for v in value if isinstance(value, list) else [value]:
                opt.bound.check(v, opt.flag_for(name))
        if choices and opt.choices and value not in opt.choices:
            raise LabelenhError(f"{opt.flag_for(name)} {value!r} is not one of {', '.join(opt.choices)}")


def _base(hint: Any) -> Any:
    """int for `int | None`, list for `list[int]`, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def value_types(cls: type) -> dict[str, type]:
    """{field: the type a recipe must give it} (int, float, bool, str or list)."""
    hints = typing.get_type_hints(cls)
    return {name: _base(hints[name]) for name in declared(cls)}


def _parameter(field: dataclasses.Field, opt: Option, hint: Any) -> inspect.Parameter:
    base = opt.cli_type or _base(hint)
    name = opt.flag_for(field.name)
    decls = [f"{name}/--no-{name[2:]}" if base is bool else name, *opt.aliases]
    shown = opt.show_default
    if shown is None:
        value = _default(field)
        shown = (name[2:] if value else f"no-{name[2:]}") if base is bool else (
            ",".join(map(str, value)) if isinstance(value, list) else str(value))
    info = typer.Option(*decls, help=opt.help_text(), show_default=shown, rich_help_panel=opt.panel)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[base | None, info])


def parameters(sources: Iterable[type | tuple[type, Iterable[str]]]) -> list[inspect.Parameter]:
    """The typer parameters of the declared options of each source: a settings class (all its
    flags) or (class, names) for some of them."""
    out: list[inspect.Parameter] = []
    for src in sources:
        cls, names = src if isinstance(src, tuple) else (src, None)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, opt in declared(cls).items():
            if opt.cli and (names is None or name in names):
                out.append(_parameter(fields[name], opt, hints[name]))
    return out


def with_options(*sources: type | tuple[type, Iterable[str]]) -> Callable:
    """Decorator: add the declared options of `sources` to a typer command. The command gets
    them as one dict, its parameter `options` ({field: value} for the flags given); the flags
    take that parameter's place in the signature (and so in --help), which typer reads."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
        at = [p.name for p in own].index("options")
        extra = parameters(sources)
        clash = {p.name for p in own} & {p.name for p in extra}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are also declared options")
        names = {p.name for p in extra}

        classes = [src[0] if isinstance(src, tuple) else src for src in sources]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            flags = {k: kwargs.pop(k) for k in names & kwargs.keys()}
            given = {k: v for k, v in flags.items() if v is not None}
            for cls in classes:  # ranges now; choices once presets and recipes are applied
                decl = declared(cls)
                check_values(cls, {k: v for k, v in given.items() if k in decl and decl[k].cli_type is None},
                             choices=False)
            return fn(**kwargs, options=given)

        params = own[:at] + extra + own[at + 1:]
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the new signature, not the wrapped one
        return command

    return deco
