"""`labelenh student`: train a student with any registered target method.

The method parameters' options (`--alpha`, `--temperature`, `--beta`, ...) are made from the
methods' `Param` declarations: one option per option name, whose help lists what it means in
each method that has it. `--param KEY=VALUE` reaches any parameter by its own name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from labelenh.cli import common as c
from labelenh.cli.viewopts import aug_names
from labelenh.data.settings import DataSettings
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError
from labelenh.options import with_options

H_M = "Method"


@dataclass
class MethodOption:
    """One generated option: `--{name}`, and which parameter it sets in each method."""

    name: str  # e.g. "temperature"
    type: type
    keys: dict[str, str] = field(default_factory=dict)  # method -> parameter name
    helps: dict[str, str] = field(default_factory=dict)  # method -> its line of help

    @property
    def dest(self) -> str:
        return "m_" + self.name.replace("-", "_")


def method_options() -> dict[str, MethodOption]:
    """Option name -> MethodOption over every registered method, in a stable order. An option
    name must mean one type everywhere (one click option carries one type)."""
    from labelenh.methods import METHODS

    out: dict[str, MethodOption] = {}
    for mname in sorted(METHODS):
        for key, p in METHODS[mname].params.items():
            name = p.option(key)
            opt = out.setdefault(name, MethodOption(name, p.type))
            if opt.type is not p.type:
                raise TypeError(f"option --{name} is a {opt.type.__name__} in "
                                f"{', '.join(opt.keys)} but a {p.type.__name__} in {mname}")
            opt.keys[mname] = key
            rng = p.range_text()
            opt.helps[mname] = f"{p.help} (default {p.default!r}{', ' + rng if rng else ''})"
    return dict(sorted(out.items()))


def _option_help(opt: MethodOption) -> str:
    """'ls: ...; kd, kd-sl: ...' with methods of the same help grouped."""
    groups: dict[str, list[str]] = {}
    for mname, text in opt.helps.items():
        groups.setdefault(text, []).append(mname)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())


def _option_parameter(opt: MethodOption) -> inspect.Parameter:
    decl = f"--{opt.name}/--no-{opt.name}" if opt.type is bool else f"--{opt.name}"
    ann = Annotated[opt.type | None, typer.Option(decl, help=_option_help(opt), rich_help_panel=H_M)]
    return inspect.Parameter(opt.dest, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)


def _method_in(args: list[str]) -> str | None:
    """The value of the last --method in raw arguments (for --help before parsing ends)."""
    found = None
    for i, a in enumerate(args):
        if a == "--method" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--method="):
            found = a.split("=", 1)[1]
    return found


class StudentCommand(TyperCommand):
    """`student --method M --help` adds M's summary, loss, parameters and an example."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        ctx.meta["labelenh_method"] = _method_in(list(args))
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        from labelenh.methods import METHODS

        name = ctx.meta.get("labelenh_method")
        if name in METHODS:
            formatter.write("\n" + METHODS[name].help_text() + "\n")
        else:
            formatter.write("\nlabelenh student --method M --help (or labelenh methods M) describes method M.\n")


def register(app: typer.Typer) -> None:
    app.command("student", cls=StudentCommand)(_student_command())


def _student_command():
    """`student` with the generated method options in its signature, which typer reads."""
    base = inspect.signature(student, eval_str=True)
    opts = method_options()
    fixed = [p for p in base.parameters.values() if p.name != "method_values"]
    clash = {f"--{o.name}" for o in opts.values()} & {
        d for p in fixed for info in p.annotation.__metadata__ if hasattr(info, "param_decls")
        for d in (info.param_decls or ())}
    if clash:
        raise TypeError(f"method options {sorted(clash)} clash with student's own options")

    def command(**kw: Any) -> None:
        values = {o.name: kw.pop(o.dest) for o in opts.values()}
        student(**kw, method_values=values)

    command.__signature__ = base.replace(parameters=[*fixed, *map(_option_parameter, opts.values())])
    command.__doc__ = student.__doc__
    command.__name__ = "student"
    return command


def _method_help() -> str:
    from labelenh.methods import METHODS

    return " | ".join(sorted(METHODS))


@with_options(DataSettings, TrainConfig)
def student(
    method: Annotated[str | None, typer.Option("--method", help=f"Target method: {_method_help()}", rich_help_panel=H_M)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Student model (see `labelenh teach --help`).", show_default="resnet20")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Soft-label store from `labelenh export-soft-labels`.", rich_help_panel=H_M)] = None,
    aug: Annotated[str | None, typer.Option("--aug", help=f"Train on the store's views, as stored (Aug- methods): name the op the store was exported with ({aug_names()}); their stored logits replace the mixed label. Default: fresh crop/flip views with the clean-sample logits; none: no augmentation. Without --store, the methods that need no teacher draw such views on the fly.", rich_help_panel=H_M)] = None,
    teachers: Annotated[str | None, typer.Option("--teachers", help="Comma-separated teacher names inside the store (default: all; several = an ensemble).", rich_help_panel=H_M)] = None,
    teacher: Annotated[list[str] | None, typer.Option("--teacher", help="Teacher run/checkpoint run online at every step: for `kd`, or instead of --store for the store methods (repeat for an ensemble).", rich_help_panel=H_M)] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Any method parameter by its own name as KEY=VALUE (repeatable); `labelenh methods M` lists them.", rich_help_panel=H_M)] = None,
    init: c.Weights = None, reset_head: c.ResetHead = False,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="A TOML file of these settings or a student run's config.json (repeats that run); flags override it.", show_default="none")] = None,
    options: dict[str, Any] | None = None,
    device: c.Device = "auto", name: c.Name = None, runs_dir: c.RunsDir = Path("runs"), resume: c.Resume = False,
    log: c.Log = None, log_every: c.LogEvery = 50,
    workers: c.Workers = None,
    preload: Annotated[bool | None, typer.Option("--preload/--no-preload", help="Read the store into memory (default: when it takes at most 2 GiB), or map it lazily and read each batch's rows (each process: its own rows under torchrun).", rich_help_panel=c.H_RUN)] = None,
    method_values: dict[str, Any] | None = None,
) -> None:
    """Train a student against enhanced labels (SL, En-SL, KD-SL, ILS, ...) or a baseline."""
    from labelenh.loggers import parse_loggers
    from labelenh.student import StudentSettings, train_student

    loggers = parse_loggers(log)

    rec = c.read_recipe(recipe, c.SETTINGS_KEYS | {"model", "method", "aug", "store", "params", "weights",
                                                              "reset_head", "teachers", "teacher"}, stage="student")
    flags = {**(options or {}), "model": model, "method": method, "aug": aug,
             "store": str(store) if store else None, "weights": str(init) if init else None,
             "reset_head": reset_head or None, "teachers": teachers, "teacher": list(teacher) if teacher else None}
    v = c.resolve(flags, rec)
    c.check_workers(workers)
    data = DataSettings.from_values(v)
    method_name = v.get("method", "vanilla")
    params = _method_params(method_name, dict(rec.get("params") or {}), method_values or {}, param or [])
    teachers = v.get("teachers")
    s = StudentSettings(
        model=v.get("model", "resnet20"), method=method_name, params=params, store=v.get("store"),
        aug=v.get("aug"), teachers=[t.strip() for t in teachers.split(",") if t.strip()] if teachers else None,
        online_teachers=[str(t) for t in v.get("teacher") or []], init=v.get("weights"),
        reset_head=bool(v.get("reset_head")), data=data, train=c.train_config(v), name=name,
        runs_dir=str(runs_dir), device=device, preload=preload, workers=workers, log=loggers, log_every=log_every,
        scaled=v[c.SCALED],
    )
    summary = train_student(s, resume=resume)
    c.print_run(summary, Path(runs_dir) / summary["name"])


def _method_params(method: str, params: dict[str, Any], values: dict[str, Any], param: list[str]) -> dict[str, Any]:
    """The method's parameters: a recipe's, then the generated method options given
    ({option: value}), then `--param KEY=VALUE`; an option the method does not take is refused."""
    from labelenh.methods import METHODS

    opts = method_options()
    for flag, value in values.items():
        if value is None:
            continue
        key = opts[flag].keys.get(method)
        if method in METHODS and key is None:
            have = [f"--{p.option(k)}" for k, p in METHODS[method].params.items()]
            raise LabelenhError(f"--{flag} does not apply to method {method!r} "
                                f"(its parameters: {', '.join(have) or 'none'})")
        if key is not None:  # an unknown --method is refused, by name, when the run is built
            params[key] = value
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabelenhError(f"--param {item!r}: write it as KEY=VALUE, e.g. --param kl_reduction=batchmean")
        params[key.strip()] = value.strip()
    return params
