"""Everything `labelenh report` writes: tables (Markdown, CSV) and figures (PNG)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labelenh import bounds as B
from labelenh.errors import LabelenhError, OutputError
from labelenh.files import atomic_write
from labelenh.report import figures
from labelenh.report.runs import collect_runs
from labelenh.report.table import Row, aggregate, to_csv, to_markdown, to_tidy_csv

FORMATS = ("md", "csv", "both")


@dataclass
class Report:
    rows: list[Row]
    markdown: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # skipped folders, figures that could not be drawn


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_report(
    paths: list[str | Path],
    out: str | Path,
    *,
    fmt: str = "both",
    group_by: str = "method",
    plots: bool = True,
    diagrams: bool = True,
    device: str = "auto",
    n_bins: int = 15,
) -> Report:
    """Collect runs, aggregate them over seeds and write report.md / report.csv (one row per
    table row) / runs.csv (tidy: one row per run × epoch kind × split) and the figures
    (acc-vs-ece.png, curves.png and, with `diagrams`, reliability.png) into `out`.

    A figure that cannot be drawn (matplotlib missing, the dataset or a checkpoint not here)
    becomes a note; the tables are still written."""
    if fmt not in FORMATS:
        raise LabelenhError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    B.ECE_BINS.check(n_bins, "--ece-bins")
    notes: list[str] = []
    records = collect_runs(paths, notes)
    rows = aggregate(records, group_by=group_by)
    markdown = to_markdown(rows, group_by=group_by)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LabelenhError(f"--out {out} is a file: pass a folder for the report")
    report = Report(rows, markdown, notes=notes)
    if fmt in ("md", "both"):
        report.files.append(_write_text(out / "report.md", markdown))
    if fmt in ("csv", "both"):
        report.files.append(_write_text(out / "report.csv", to_csv(rows)))
        report.files.append(_write_text(out / "runs.csv", to_tidy_csv(rows)))
    _draw_figures(report, out, plots=plots, diagrams=diagrams, device=device, n_bins=n_bins)
    return report


def _draw_figures(report: Report, out: Path, *, plots: bool, diagrams: bool, device: str,
                  n_bins: int) -> None:
    """The report's figures into `out`; one that cannot be drawn becomes a note."""
    rows, notes = report.rows, report.notes
    drawers = []
    if plots:
        drawers += [("accuracy-vs-ECE scatter", lambda: figures.scatter(rows, out / "acc-vs-ece.png")),
                    ("training curves", lambda: figures.curves(rows, out / "curves.png", notes))]
    if diagrams:
        drawers.append(("reliability diagrams", lambda: figures.diagrams(
            rows, out / "reliability.png", notes, device=device, n_bins=n_bins)))
    for what, draw in drawers:
        try:
            path = draw()
        except OutputError:
            raise  # a full disk is a failure of the report, not a missing figure
        except LabelenhError as e:
            notes.append(f"{what} not written: {e}")
            continue
        if path is None:
            notes.append(f"{what} not written: the runs hold nothing to draw")
        else:
            report.files.append(path)
