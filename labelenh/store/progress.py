"""What an export shows while it runs: a progress bar over chunks, sizes in binary units."""

from __future__ import annotations

import time

from labelenh.store.schema import StorePlan


class ProgressBar:
    """A rich progress bar over chunks (samples/s), or nothing."""

    def __init__(self, enabled: bool, plan: StorePlan, done: int, *, total: int | None = None,
                 label: str = "export") -> None:
        self.enabled = enabled
        self.plan = plan
        self.done = done
        self.total = plan.num_chunks if total is None else total
        self.label = label
        self._p = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn(f"[bold]{self.label}[/] chunks"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task("export", total=self.total, completed=self.done, rate="")
            self._t0, self._n = time.perf_counter(), 0
        return self

    def advance(self, bounds: tuple[int, int]) -> None:
        if self._p is None:
            return
        self._n += bounds[1] - bounds[0]
        rate = self._n / max(time.perf_counter() - self._t0, 1e-9)
        self._p.update(self._task, advance=1, rate=f"{rate:,.0f} samples/s")

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


