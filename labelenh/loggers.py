"""Optional run loggers that mirror metrics.jsonl: TensorBoard event files and a tidy CSV.

Each epoch record becomes one scalar per numeric field, named by its path in the record
("train_loss", "lr", "test/acc1", "val/ece_ts", ...) at step = the epoch number; the training
loss is also logged every `log_every` optimiser steps as "train/loss_step" at the global step.
Only rank 0 writes (the engine opens loggers there alone). A resumed run appends.
"""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from labelenh.errors import LabelenhError

STEP_TAG = "train/loss_step"


class RunLogger(Protocol):
    def epoch(self, record: dict[str, Any]) -> None: ...

    def step(self, tag: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


def parse_loggers(values: Iterable[str] | None) -> tuple[str, ...]:
    """Logger names from repeated and/or comma-separated --log values; checks each is known and
    its package importable (a LabelenhError naming the extra to install otherwise)."""
    names: list[str] = []
    for v in values or ():
        names += [t.strip() for t in str(v).split(",") if t.strip()]
    for name in names:
        if name not in LOGGERS:
            raise LabelenhError(f"--log {name!r} is not one of {', '.join(sorted(LOGGERS))}")
        _, module, extra = LOGGERS[name]
        if module is not None:
            try:
                importlib.import_module(module)
            except ImportError:
                raise LabelenhError(
                    f"--log {name} needs the {extra} package: pip install 'labelenh[{extra}]'"
                ) from None
    return tuple(dict.fromkeys(names))


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of an epoch record by path ("test/acc1"); "epoch" is the step, not a value."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key == "epoch":
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoardLogger:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def epoch(self, record: dict[str, Any]) -> None:
        for tag, value in flatten(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def step(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class CsvLogger:
    """log.csv in long form (kind, epoch, step, tag, value): fields that appear only on some
    epochs (evaluations every few epochs, metrics after TS) need no changing header."""

    HEADER = ("kind", "epoch", "step", "tag", "value")

    def __init__(self, run_dir: Path) -> None:
        path = run_dir / "log.csv"
        new = not path.is_file() or path.stat().st_size == 0
        self.file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.file, lineterminator="\n")
        if new:
            self.writer.writerow(self.HEADER)

    def epoch(self, record: dict[str, Any]) -> None:
        for tag, value in flatten(record).items():
            self.writer.writerow(("epoch", record["epoch"], "", tag, repr(value)))
        self.file.flush()

    def step(self, tag: str, value: float, step: int) -> None:
        if math.isfinite(value):
            self.writer.writerow(("step", "", step, tag, repr(float(value))))

    def close(self) -> None:
        self.file.close()


class LoggerEntry(NamedTuple):
    make: Callable[[Path], RunLogger]
    module: str | None  # what must import for it to work (None: the standard library)
    extra: str | None  # the pyproject extra that installs that module


LOGGERS: dict[str, LoggerEntry] = {
    "tensorboard": LoggerEntry(TensorBoardLogger, "torch.utils.tensorboard", "tensorboard"),
    "csv": LoggerEntry(CsvLogger, None, None),
}


def open_loggers(names: Iterable[str], run_dir: Path) -> list[RunLogger]:
    return [LOGGERS[name].make(run_dir) for name in parse_loggers(names)]
