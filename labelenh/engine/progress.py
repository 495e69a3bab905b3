"""What a run shows while it trains: the progress bar of an epoch and the line printed after it."""

from __future__ import annotations

import sys
from typing import Any


class Bar:
    """A rich progress bar on a terminal; silent otherwise (logs stay clean in files and CI)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), transient=True,
            )
            self.p.start()
            self.t = self.p.add_task(label, total=total, loss=float("nan"))

    def advance(self, **fields: float) -> None:
        """One step done; `fields` update the shown values (loss)."""
        if self.p is not None:
            self.p.update(self.t, advance=1, **fields)

    def close(self) -> None:
        """Removes the bar from the terminal."""
        if self.p is not None:
            self.p.stop()


def print_epoch(r: dict[str, Any]) -> None:
    """One line on stderr for an epoch's record: train loss and accuracy, the evaluated splits'
    accuracy, NLL and ECE (and ECE after temperature scaling), the EMA's test accuracy, the time."""
    parts = [f"epoch {r['epoch']:>3}", f"loss {r['train_loss']:.4f}", f"train acc {r['train_acc']:.4f}"]
    for split in ("val", "test"):
        if split in r:
            m = r[split]
            ts = f" (ts {m['ece_ts']:.4f})" if "ece_ts" in m else ""
            parts.append(f"{split} acc {m['acc1']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f}{ts}")
    if "ema" in r and "test" in r["ema"]:
        parts.append(f"ema test acc {r['ema']['test']['acc1']:.4f}")
    parts.append(f"{r['train_time_s']:.1f}s")
    print(" | ".join(parts), file=sys.stderr, flush=True)
