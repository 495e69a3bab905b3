"""`labelenh report`: run folders -> a results table (mean ± std over seeds) and figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from labelenh import bounds as B
from labelenh.metrics import DEFAULT_BINS


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding run folders (one level down).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, report.csv (one line per table row), runs.csv (one line per run × epoch kind × split) and the PNG figures.")] = Path("report"),
    fmt: Annotated[str, typer.Option("--format", help="md | csv | both")] = "both",
    group_by: Annotated[str, typer.Option("--group-by", help="Column that orders the table: method | model | teachers | dataset.")] = "method",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the accuracy-vs-ECE scatter and the training curves.")] = True,
    diagrams: Annotated[bool, typer.Option("--diagrams/--no-diagrams", help="Draw reliability diagrams from each row's first-seed checkpoint (loads the dataset).")] = True,
    ece_bins: Annotated[int, typer.Option("--ece-bins", help=f"Equal-width bins of the reliability diagrams, in {B.ECE_BINS.text()}.")] = DEFAULT_BINS,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda, for the reliability diagrams' predictions.")] = "auto",
) -> None:
    """Tabulate runs: Acc@1, Acc@5, NLL, ECE, ECE after TS, MCE, Brier and T at the last and best
    epoch, mean ± std over seeds; curves and reliability diagrams."""
    from labelenh.report import write_report

    result = write_report(runs, out, fmt=fmt, group_by=group_by, plots=plots, diagrams=diagrams,
                          device=device, n_bins=ece_bins)
    print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    sys.stdout.flush()
    for note in result.notes:
        print(f"labelenh: note: {note}", file=sys.stderr)
