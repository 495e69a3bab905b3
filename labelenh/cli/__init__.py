"""The `labelenh` command line: one typer app, one module per stage under labelenh/cli/.

Every command reports bad input as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import sys

import click
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
        app(args=argv, standalone_mode=False)
    except LabelenhError as e:
        fail(str(e))
    except click.exceptions.UsageError as e:
        hint = f" (see `labelenh {e.ctx.command_path.split(' ', 1)[-1]} --help`)" if e.ctx else ""
        fail(f"{e.format_message()}{hint}")
    except click.exceptions.Abort:
        print("labelenh: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print("labelenh: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
