"""`labelenh methods [M]`: the target methods, or one method's loss, parameters and example."""

from __future__ import annotations

from typing import Annotated

import typer

from labelenh.errors import LabelenhError


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)


def methods(
    name: Annotated[str | None, typer.Argument(help="A method: its loss, parameters (defaults, ranges) and an example.")] = None,
) -> None:
    """List the target methods for `labelenh student --method`, or describe one."""
    from labelenh.methods import METHODS

    if name is None:
        width = max(map(len, METHODS))
        for m in sorted(METHODS):
            cls = METHODS[m]
            print(f"{m:<{width}}  {cls.teacher:<6}  {cls.summary}")
        print("\nteacher: none | store (--store, or --teacher RUN online) | online (--teacher RUN); "
              "`labelenh methods M` describes M")
        return
    if name not in METHODS:
        raise LabelenhError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    print(METHODS[name].help_text())
