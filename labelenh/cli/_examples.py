"""The examples at the end of each command's --help, and the help's defaults.

Kept in one table here so that every command gets runnable examples without each command
module repeating the formatting; `apply` attaches them when the commands are registered.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, list[str]] = {
    "teach": [
        "labelenh teach --dataset cifar10-mini --model resnet20 --epochs 15 --name t0",
        "labelenh teach --dataset cifar10-mini --model timm:resnet18 --weights in1k.safetensors --reset-head "
        "--opt adamw --lr 1e-3 --model-ema --epochs 10",
        "labelenh teach --recipe runs/t0/config.json --seed 1 --name t1   # repeat t0 with another seed",
    ],
    "student": [
        "labelenh student --method sl --store runs/store.h5 --dataset cifar10-mini --model resnet8 --epochs 6",
        "labelenh student --method ls --alpha 0.1 --dataset cifar10-mini --model resnet8 --opt adamw --lr 1e-3",
    ],
    "evaluate": [
        "labelenh evaluate runs/t0",
        "labelenh evaluate runs/t0 --calibrate-on test --json metrics.json",
    ],
    "export-soft-labels": [
        "labelenh export-soft-labels --teacher runs/t0 --dataset cifar10-mini --out runs/store.h5",
        "labelenh export-soft-labels --teacher runs/t0 --dataset cifar10-mini --out runs/aug.h5 --aug ricap --views 8",
    ],
    "methods": ["labelenh methods", "labelenh methods kd-sl"],
    "report": ["labelenh report runs/student-* --out runs/report"],
    "store info": ["labelenh store info runs/store.h5"],
    "store verify": ["labelenh store verify runs/store.h5 --dataset cifar10-mini"],
    "store add-teacher": ["labelenh store add-teacher runs/store.h5 --teacher runs/t1"],
    "store merge": ["labelenh store merge a.h5 b.h5 --out ab.h5"],
    "store convert": ["labelenh store convert runs/store.h5 --format topk:5 --out runs/small.h5"],
    "views show": ["labelenh views show --aug ricap --dataset cifar10-mini --out views.png"],
}


def epilog(name: str) -> str | None:
    lines = EXAMPLES.get(name)
    # blank lines between examples: the help formatter joins the lines of one paragraph
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines) if lines else None


def apply(app: Any, prefix: str = "") -> None:
    """Examples and shown defaults on every command of a typer app (and its sub-apps)."""
    for info in app.registered_commands:
        name = (prefix + (info.name or getattr(info.callback, "__name__", ""))).strip()
        if info.epilog is None:
            info.epilog = epilog(name)
        info.context_settings = {"show_default": True, **(info.context_settings or {})}
    for group in app.registered_groups:
        apply(group.typer_instance, f"{prefix}{group.name} ")
