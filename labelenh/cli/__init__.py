"""The `labelenh` command line: one typer app, one module per stage under labelenh/cli/.

Every command reports bad input as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import sys

import typer

from labelenh.errors import LabelenhError

app = typer.Typer(
    name="labelenh",
    help="Teacher-student label enhancement: teachers -> HDF5 soft-label store -> students.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register_commands() -> None:
    # Discovered once per process (main() may be called many times in-process, e.g. by tests).
    global _registered
    if _registered:
        return
    _registered = True
    import importlib
    import pkgutil

    import labelenh.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        mod = importlib.import_module(f"labelenh.cli.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)
    from labelenh.cli._examples import apply

    apply(app)


def _classes(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class `name` and typer's copy of it (typer vendors its own click, whose
    exceptions are not click's): both must end as one line, never a traceback."""
    import importlib

    found: list[type[BaseException]] = []
    for mod in ("click.exceptions", "typer._click.exceptions", "typer"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


USAGE_ERRORS = _classes("UsageError")
CLICK_ERRORS = _classes("ClickException")
ABORTS = _classes("Abort")
EXITS = _classes("Exit")


def fail(message: str) -> None:
    """Print one line naming the problem and exit 2."""
    first = " ".join(str(message).split())  # one line, whatever the message held
    print(f"labelenh: error: {first}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    from labelenh.distributed import cli_process

    if not cli_process(sys.argv[1:] if argv is None else list(argv)):
        return  # under torchrun: a command that rank 0 runs alone
    _register_commands()
    try:
        code = app(args=argv, standalone_mode=False)
        # typer turns Ctrl-C (and ctx.exit) into a returned exit code when not standalone:
        # it must reach the shell, or an interrupted run would look like a finished one.
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                print("labelenh: interrupted", file=sys.stderr)
            raise SystemExit(code)
    except LabelenhError as e:
        fail(str(e))
    except USAGE_ERRORS as e:
        sub, ctx = [], getattr(e, "ctx", None)
        while ctx is not None and ctx.parent is not None:  # e.g. ["store", "info"]; [] at the top
            sub.insert(0, ctx.info_name)
            ctx = ctx.parent
        fail(f"{e.format_message() or 'no command given'} (see `labelenh {' '.join([*sub, '--help'])}`)")
    except CLICK_ERRORS as e:
        fail(e.format_message())
    except ABORTS:
        print("labelenh: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except EXITS as e:
        raise SystemExit(getattr(e, "exit_code", 0)) from None
    except KeyboardInterrupt:
        print("labelenh: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        if e.errno is None:
            raise
        # A path the commands did not check themselves (a file where a folder belongs, a
        # full disk, a read-only folder): one line, not a traceback.
        from labelenh.utils import OUTPUT_FLAGS, WRITE_ERRORS

        where = f": {e.filename}" if e.filename else ""
        reason, fix = WRITE_ERRORS.get(e.errno, (e.strerror or str(e), "check the path, its permissions "
                                                 "and the free space"))
        fail(f"{reason}{where}: {fix.format(where=OUTPUT_FLAGS)}")
