"""Result tables over run folders: mean ± std over seeds of last- and best-epoch test accuracy
and calibration, as Markdown and CSV, with figures (accuracy vs ECE, curves, reliability)."""

from labelenh.report.runs import METRICS, RunRecord, collect_runs, find_run_dirs
from labelenh.report.table import GROUP_BY, Row, Stat, aggregate, to_csv, to_markdown
from labelenh.report.write import FORMATS, Report, write_report

__all__ = [
    "FORMATS", "GROUP_BY", "METRICS", "Report", "Row", "RunRecord", "Stat", "aggregate",
    "collect_runs", "find_run_dirs", "to_csv", "to_markdown", "write_report",
]
