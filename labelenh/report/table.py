"""Runs -> rows (mean ± std over seeds) -> a Markdown or CSV table."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelenh.errors import LabelenhError
from labelenh.metrics import METRIC_KEYS
from labelenh.report.runs import EPOCHS, METRICS, RunRecord
from labelenh.temperature import TS_KEYS

GROUP_BY = ("method", "model", "teachers", "dataset")
LABELS = {"acc1": "Acc@1 (%)", "acc5": "Acc@5 (%)", "nll": "NLL", "ece": "ECE (%)",
          "ece_ts": "ECE after TS (%)", "mce": "MCE (%)", "brier": "Brier", "temperature": "T"}
PERCENT = {"acc1", "acc5", "ece", "ece_ts", "mce"}  # in percent, as the original papers' tables
DASH = "—"
TIDY_METRICS = (*METRIC_KEYS, *(f"{k}_ts" for k in TS_KEYS), "temperature", "n")
# the epoch's own training figures (metrics.jsonl): whether a run reached the converged regime
# (train accuracy near 1) is read next to its test metrics
TRAIN_METRICS = ("train_acc", "train_loss")


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof=1) of one metric over a row's seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        # One seed has no spread to report; ddof=1 would divide by zero.
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


@dataclass
class Row:
    """Runs that differ only in train.seed."""

    method: str
    model: str
    teachers: str
    dataset: str
    runs: list[RunRecord]
    settings: str = ""  # what tells this row apart from rows with the same labels
    stats: dict[str, dict[str, Stat]] = field(default_factory=dict)  # [epoch][metric]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def best_by(self) -> str:
        found = sorted({str(r.best_by) for r in self.runs if r.best_by})
        return found[0] if len(found) == 1 else ("mixed" if found else "")

    def stat(self, epoch: str, metric: str) -> Stat:
        return self.stats[epoch][metric]

    def label(self) -> str:
        parts = [self.method, self.model] + ([f"<- {self.teachers}"] if self.teachers else [])
        return " ".join(parts + ([f"({self.settings})"] if self.settings else []))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    flat = _flat(json.loads(json.dumps(config, default=str)))
    flat.pop("train.seed", None)
    if any(k.startswith("method_params.") for k in flat):
        # the resolved parameters say the same as the given ones, with defaults filled in
        flat = {k: v for k, v in flat.items() if not k.startswith("params.")}
    return flat


def _settings(rows: list[Row]) -> None:
    """Each row shows the method parameters its runs were given (e.g. r=-0.2 for gls), and rows
    whose labels coincide also the config values that differ between them."""
    by_label: dict[tuple, list[Row]] = {}
    for r in rows:
        by_label.setdefault((r.method, r.model, r.teachers, r.dataset), []).append(r)
    for same in by_label.values():
        flats = [_comparable(r.runs[0].compared) for r in same]
        keys = sorted(set().union(*flats))
        differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
        for r, f in zip(same, flats, strict=True):
            given = [f"method_params.{k}" for k in sorted(r.runs[0].config.get("params") or {})]
            shown = [k for k in given if k in f] + [k for k in differ if k not in given]
            r.settings = ", ".join(
                f"{k.removeprefix('method_params.')}={json.dumps(f.get(k), separators=(',', ':'))}"
                for k in shown
            )


def aggregate(records: list[RunRecord], group_by: str = "method") -> list[Row]:
    """One row per set of runs that differ only in train.seed; rows ordered by `group_by`
    (method | model | teachers | dataset) so that rows sharing it stand together."""
    if group_by not in GROUP_BY:
        raise LabelenhError(f"--group-by {group_by!r} is not one of {', '.join(GROUP_BY)}")
    groups: dict[str, list[RunRecord]] = {}
    for rec in records:
        groups.setdefault(rec.key, []).append(rec)
    rows = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        first = runs[0]
        stats = {
            epoch: {m: Stat([v for r in runs if (v := r.metric(epoch, m)) is not None]) for m in METRICS}
            for epoch in EPOCHS
        }
        rows.append(Row(first.method, first.model, first.teachers, first.dataset, runs, stats=stats))
    _settings(rows)

    def order(r: Row) -> tuple:
        # teachers first within a dataset/model, then the methods alphabetically
        method = (r.method != "teacher", r.method)
        rest = (r.dataset, method, r.model, r.teachers, r.settings)
        return ((r.method != "teacher", r.method) if group_by == "method" else getattr(r, group_by),) + rest

    return sorted(rows, key=order)


def _cell(s: Stat, metric: str, n_runs: int) -> str:
    if s.mean is None:
        return DASH
    scale, digits = (100.0, 2) if metric in PERCENT else (1.0, 4)
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    if s.n < n_runs:
        text += f" (n={s.n})"  # some seeds lack this metric
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|") or DASH


def to_markdown(rows: list[Row], group_by: str = "method") -> str:
    """A Markdown table, one line per row: labels, seeds, last- and best-epoch test metrics."""
    labels = ["method", "model", "teachers", "dataset"]
    if group_by in labels:
        labels.remove(group_by)
        labels.insert(0, group_by)
    show_settings = any(r.settings for r in rows)
    head = labels + (["settings"] if show_settings else []) + ["seeds"]
    head += [f"{LABELS[m]} {e}" for e in EPOCHS for m in METRICS] + ["best by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [_md_escape(getattr(r, k)) for k in labels]
        cells += [_md_escape(r.settings)] if show_settings else []
        cells.append(str(len(r.runs)))
        cells += [_cell(r.stat(e, m), m, len(r.runs)) for e in EPOCHS for m in METRICS]
        cells.append(_md_escape(r.best_by))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Test metrics, mean ± std (ddof=1) over seeds. last: final epoch; best: the epoch chosen "
        "by validation NLL (val_nll) or, without a validation split, by test Acc@1 (test_acc1, "
        "optimistic). ECE after TS: test ECE of logits / T, T fitted on the validation split by "
        "minimising NLL (— where a run has no validation split)."
    )
    return "\n".join(lines) + "\n"


def csv_header() -> list[str]:
    head = ["method", "model", "teachers", "dataset", "settings", "n_seeds", "seeds", "best_by"]
    for e in EPOCHS:
        for m in METRICS:
            head += [f"{e}_{m}_mean", f"{e}_{m}_std", f"{e}_{m}_n"]
    return head + ["runs"]


def to_csv(rows: list[Row]) -> str:
    """The same rows as CSV, metrics as fractions at full precision (floats round-trip)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_header())
    for r in rows:
        line: list[Any] = [r.method, r.model, r.teachers, r.dataset, r.settings, len(r.runs),
                           ";".join("" if s is None else str(s) for s in r.seeds), r.best_by]
        for e in EPOCHS:
            for m in METRICS:
                s = r.stat(e, m)
                line += ["" if s.mean is None else repr(s.mean), "" if s.std is None else repr(s.std), s.n]
        line.append(";".join(str(x.path) for x in r.runs))
        w.writerow(line)
    return buf.getvalue()


def tidy_header() -> list[str]:
    return ["run", "method", "model", "teachers", "dataset", "settings", "seed", "epoch_kind", "epoch",
            "selected_by", "split", *TIDY_METRICS, *TRAIN_METRICS, "path"]


def to_tidy_csv(rows: list[Row]) -> str:
    """One line per run × epoch kind (last, best) × split (test, val) the run evaluated, every
    metric it recorded as a fraction at full precision (empty where it has none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(tidy_header())
    for r in rows:
        for run in r.runs:
            epochs = {rec["epoch"]: rec for rec in run.history()[0]}
            for kind in EPOCHS:
                entry = run.summary.get(kind) or {}
                for split in ("test", "val"):
                    m = entry.get(split)
                    if not isinstance(m, dict):
                        continue
                    selected = entry.get("selected_by") if kind == "best" else ""
                    w.writerow([run.name, r.method, r.model, r.teachers, r.dataset, r.settings,
                                "" if run.seed is None else run.seed, kind, entry.get("epoch", ""),
                                selected or "", split, *(_number(m.get(k)) for k in TIDY_METRICS),
                                *(_number(epochs.get(entry.get("epoch"), {}).get(k)) for k in TRAIN_METRICS),
                                str(run.path)])
    return buf.getvalue()


def _number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return ""
    return str(v) if isinstance(v, int) else repr(v)  # floats round-trip
