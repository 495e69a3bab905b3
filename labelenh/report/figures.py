"""The report's figures: accuracy against ECE, training curves, reliability diagrams per row."""

from __future__ import annotations

import json
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.report.runs import RunRecord
from labelenh.report.table import Row


def scatter(rows: list[Row], path: Path) -> Path | None:
    """One dot per run (last-epoch test Acc@1 vs ECE) coloured by method, a cross per row mean."""
    from labelenh.plots import accuracy_ece_scatter

    names = [_wrapped(n) for n in _short_names(rows)]
    points = [(name, a, e) for row, name in zip(rows, names, strict=True) for r in row.runs
              if (a := r.metric("last", "acc1")) is not None and (e := r.metric("last", "ece")) is not None]
    means = [(name, row.stat("last", "acc1").mean, row.stat("last", "ece").mean)
             for row, name in zip(rows, names, strict=True)
             if row.stat("last", "acc1").n and row.stat("last", "ece").n]
    if not points:
        return None
    return accuracy_ece_scatter(points, path, means=means, title="last epoch, test split")


def _wrapped(name: str, width: int = 40) -> str:
    """A legend entry or panel title over `width` characters on several lines, so that a row
    whose settings are long (a run started from another run's checkpoint) neither pushes the
    legend off the figure nor runs into the next panel's title."""
    return "\n".join(textwrap.wrap(name, width, break_on_hyphens=False)) or name


def _short_names(rows: list[Row]) -> list[str]:
    """A legend name per row: the method and its settings (e.g. "gls (r=-0.2)"), or the full
    label where rows with other models or teachers would share that name."""
    short = [row.method + (f" ({row.settings})" if row.settings else "") for row in rows]
    return [name if short.count(name) == 1 else row.label() for name, row in zip(short, rows, strict=True)]


def _mean_curve(histories: list[list[dict[str, Any]]], value) -> tuple | None:
    """(epochs, mean, std or None) over the runs that logged a value at each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for hist in histories:
        for rec in hist:
            v = value(rec)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                per_epoch.setdefault(rec["epoch"], []).append(float(v))
    if not per_epoch:
        return None
    epochs = sorted(per_epoch)
    mean = np.array([np.mean(per_epoch[e]) for e in epochs])
    std = np.array([np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else np.nan for e in epochs])
    return np.array(epochs), mean, (None if np.isnan(std).all() else std)


def _test(metric: str, scale: float = 1.0):
    """Per-epoch record -> scale × the test split's `metric`, or None where it was not logged."""
    def value(rec: dict[str, Any]) -> float | None:
        v = (rec.get("test") or {}).get(metric)
        return scale * v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return value


# (y label, value of a metrics.jsonl record); the learning rate is drawn on a log scale
CURVES = (
    ("test Acc@1 (%)", _test("acc1", 100)),
    ("train loss", lambda r: r.get("train_loss")),
    ("test NLL", _test("nll")),
    ("test ECE (%)", _test("ece", 100)),
    ("test ECE after TS (%)", _test("ece_ts", 100)),
    ("learning rate", lambda r: r.get("lr")),
)


def curves(rows: list[Row], path: Path, notes: list[str]) -> Path | None:
    """Test Acc@1, train loss, test NLL, test ECE (and after TS, where runs have it) and the
    learning rate against the epoch, one line per row (mean ± std over seeds)."""
    from labelenh.plots import training_curves

    panels: list[tuple[str, list]] = [(label, []) for label, _ in CURVES]
    for row in rows:
        histories = []
        for run in row.runs:
            hist, bad = run.history()
            if bad:
                notes.append(f"{run.path / 'metrics.jsonl'}: skipped {bad} unreadable line(s)")
            histories.append(hist)
        for (_, value), (_, series) in zip(CURVES, panels, strict=True):
            curve = _mean_curve(histories, value)
            if curve is not None:
                series.append((_wrapped(row.label(), 60), *curve))
    if not any(series for _, series in panels):
        return None
    return training_curves(panels, path, log_y=("learning rate",))


def _data_settings(data: dict[str, Any]):
    from labelenh.data.settings import DataSettings

    known = {f.name for f in fields(DataSettings)}
    return DataSettings(**{k: v for k, v in data.items() if k in known})


def checkpoint_predictions(run: RunRecord, device: Any = "cpu", bundles: dict[str, Any] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] and labels [N] of the run's last checkpoint on its test split, with the data
    rebuilt from the run's config. `bundles` caches datasets across runs by data config."""
    from labelenh.checkpoint import load_teacher
    from labelenh.devices import resolve_device
    from labelenh.engine import predict
    from labelenh.errors import LabelenhError
    from labelenh.pipeline import ImagePipeline

    dev = resolve_device(device) if isinstance(device, str) else device
    ckpt = run.path / "checkpoint.pt"
    if not ckpt.is_file():
        raise LabelenhError(f"{ckpt} is missing: the run folder is incomplete")
    data = run.config.get("data") or {}
    key = json.dumps(data, sort_keys=True, default=str)
    bundles = {} if bundles is None else bundles
    if key not in bundles:
        bundles[key] = _data_settings(data).load()
    bundle = bundles[key]
    model, _ = load_teacher(ckpt, dev, num_classes=bundle.num_classes)
    eval_bs = int((run.config.get("train") or {}).get("eval_batch_size") or 500)
    pipe = ImagePipeline(bundle, dev, batch_size=eval_bs, eval_batch_size=eval_bs)
    return predict(model, pipe.eval_batches("test"), device=dev)


def diagrams(rows: list[Row], path: Path, notes: list[str], *, device: str = "auto",
             n_bins: int = 15) -> Path | None:
    """Reliability diagrams side by side, one per row, from the last checkpoint of the row's
    first seed, recomputed on its test split (the dataset must be available here)."""
    from labelenh.devices import resolve_device
    from labelenh.errors import LabelenhError
    from labelenh.plots import reliability_grid

    dev = resolve_device(device)
    bundles: dict[str, Any] = {}  # one load per distinct data config
    panels, extra = [], []
    for row in rows:
        run = row.runs[0]
        try:
            logits, labels = checkpoint_predictions(run, dev, bundles)
        except LabelenhError as e:
            notes.append(f"no reliability diagram for {row.label()}: {e}")
            continue
        seed = "" if run.seed is None else f", seed {run.seed}"
        panels.append((_wrapped(f"{row.label()}{seed}", 44), logits, labels))
        # the run's own ECE after TS (T fitted on its validation split), same bins only
        same_bins = (run.config.get("train") or {}).get("ece_bins", n_bins) == n_bins
        extra.append({"ece_ts": run.metric("last", "ece_ts") if same_bins else None,
                      "temperature": run.metric("last", "temperature") if same_bins else None})
    if not panels:
        return None
    return reliability_grid(panels, path, n_bins=n_bins, extra=extra)
