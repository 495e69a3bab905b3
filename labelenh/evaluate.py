"""Evaluate a checkpoint on a dataset split: accuracy and calibration, a table, JSON, a diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from labelenh.checkpoint import load_teacher
from labelenh.engine import predict
from labelenh.errors import LabelenhError
from labelenh.metrics import classification_metrics
from labelenh.pipeline import ImagePipeline
from labelenh.teach import DataSettings
from labelenh.utils import resolve_device

COLUMNS = (("acc1", "Acc@1"), ("acc5", "Acc@5"), ("nll", "NLL"), ("ece", "ECE"), ("mce", "MCE"), ("brier", "Brier"))


def evaluate_checkpoint(
    checkpoint: str | Path, data: DataSettings, *, split: str = "test", model_name: str | None = None,
    device: str = "auto", ece_bins: int = 15, batch_size: int = 500,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    dev = resolve_device(device)
    bundle = data.load()
    model, info = load_teacher(checkpoint, dev, model_name=model_name, num_classes=bundle.num_classes)
    pipe = ImagePipeline(bundle, dev, batch_size=batch_size, eval_batch_size=batch_size)
    if split not in pipe.splits:
        raise LabelenhError(f"--split {split}: the dataset has splits {', '.join(pipe.splits)} (val needs --val-split)")
    logits, labels = predict(model, pipe.eval_batches(split), device=dev)
    metrics = classification_metrics(logits, labels, n_bins=ece_bins)
    return {"checkpoint": str(checkpoint), "model": info["model"], "dataset": bundle.name, "split": split,
            "ece_bins": ece_bins, **metrics}, logits, labels


def print_metrics(rows: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="accuracy and calibration")
    t.add_column("run")
    for _, label in COLUMNS:
        t.add_column(label, justify="right")
    for name, m in rows.items():
        t.add_row(name, *(f"{m[k]:.4f}" if k in m and m[k] is not None else "-" for k, _ in COLUMNS))
    Console(width=120).print(t)
