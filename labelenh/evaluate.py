"""Evaluate a checkpoint on a dataset split: accuracy and calibration before and after
temperature scaling, a table, JSON, a diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from labelenh.checkpoint import load_teacher
from labelenh.data.settings import DataSettings
from labelenh.devices import resolve_device
from labelenh.engine import predict
from labelenh.errors import LabelenhError
from labelenh.metrics import DEFAULT_BINS, check_bins, classification_metrics
from labelenh.pipeline import ImagePipeline
from labelenh.temperature import FIT_SPLITS, fit_temperature, scaled_metrics

COLUMNS = (("acc1", "Acc@1"), ("acc5", "Acc@5"), ("nll", "NLL"), ("ece", "ECE"), ("adaece", "AdaECE"),
           ("cwece", "cwECE"), ("rmsce", "RMSCE"), ("mce", "MCE"), ("brier", "Brier"))
TS_COLUMNS = (("nll_ts", "NLL TS"), ("ece_ts", "ECE TS"), ("adaece_ts", "AdaECE TS"),
              ("cwece_ts", "cwECE TS"), ("brier_ts", "Brier TS"), ("temperature", "T"))
BIASED = " (biased: T is fitted on {what})"


def evaluate_checkpoint(
    checkpoint: str | Path, data: DataSettings, *, split: str = "test", model_name: str | None = None,
    device: str = "auto", ece_bins: int = DEFAULT_BINS, batch_size: int = 500,
    calibrate_on: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Metrics of a checkpoint on `split` and, unless `calibrate_on` is "none", the same after
    temperature scaling fitted on `calibrate_on` ("val"; "test" only as a labelled, biased
    choice). None: on val when the dataset has a validation split, else no scaling (and the
    result's `calibrated_on` says why)."""
    check_bins(ece_bins)
    if calibrate_on is not None and calibrate_on not in FIT_SPLITS:
        raise LabelenhError(f"--calibrate-on {calibrate_on!r} is not one of {', '.join(FIT_SPLITS)}")
    dev = resolve_device(device)
    bundle = data.load()
    model, info = load_teacher(checkpoint, dev, model_name=model_name, num_classes=bundle.num_classes)
    pipe = ImagePipeline(bundle, dev, batch_size=batch_size, eval_batch_size=batch_size)
    if split not in pipe.splits:
        raise LabelenhError(f"--split {split}: the dataset has splits {', '.join(pipe.splits)} (val needs --val-split)")
    if calibrate_on in ("val", "test") and calibrate_on not in pipe.splits:
        raise LabelenhError(f"--calibrate-on {calibrate_on}: the dataset has splits {', '.join(pipe.splits)}; "
                            "add --val-split (the fraction the model was trained with) or pass --calibrate-on none")
    logits, labels = predict(model, pipe.eval_batches(split), device=dev)
    metrics: dict[str, Any] = classification_metrics(logits, labels, n_bins=ece_bins)
    fit_on = calibrate_on if calibrate_on is not None else ("val" if "val" in pipe.splits else "none")
    if fit_on == "none":
        metrics["calibrated_on"] = ("none" if calibrate_on else
                                    "none: no validation split (--val-split, or --calibrate-on test, biased)")
    else:
        fit_logits, fit_labels = ((logits, labels) if fit_on == split
                                  else predict(model, pipe.eval_batches(fit_on), device=dev))
        metrics.update(scaled_metrics(logits, labels, fit_temperature(fit_logits, fit_labels), ece_bins))
        metrics["calibrated_on"] = fit_on + (BIASED.format(what="the split it is scored on") if fit_on == split
                                             else BIASED.format(what="test data") if fit_on == "test" else "")
    return {"checkpoint": str(checkpoint), "model": info["model"], "dataset": bundle.name, "split": split,
            "ece_bins": ece_bins, **metrics}, logits, labels


def print_metrics(rows: dict[str, dict[str, Any]]) -> None:
    """A table of runs: accuracy, calibration and, where a run has them, the metrics after TS."""
    from rich.console import Console
    from rich.table import Table

    columns = COLUMNS + (TS_COLUMNS if any("temperature" in m for m in rows.values()) else ())
    t = Table(title="accuracy and calibration (TS: after temperature scaling with the fitted T)")
    t.add_column("run")
    for _, label in columns:
        t.add_column(label, justify="right")
    for name, m in rows.items():
        t.add_row(name, *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k, _ in columns))
    Console(width=220).print(t)
    fitted = {str(m["calibrated_on"]) for m in rows.values() if m.get("calibrated_on")}
    for where in sorted(fitted):
        print(f"temperature fitted on: {where}")
