"""What the teacher and student stages share about a run's record: its default name, what it
records of its data, the data and train settings a resumed run continues with, and the start-up
summary's line about the data."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelenh.checkpoint import read_checkpoint
from labelenh.data import DatasetBundle
from labelenh.engine import TrainConfig


def default_run_name(prefix: str, model: str, dataset: str, seed: int) -> str:
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(dataset.split(":", 1)[-1]).stem if ":" in dataset else dataset)
    return f"{prefix}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', model)}-{ds}-s{seed}"


def dataset_record(bundle: DatasetBundle) -> dict[str, Any]:
    """What a checkpoint and a store remember of the data they were made from."""
    return {
        "name": bundle.name,
        "num_classes": bundle.num_classes,
        "num_train": len(bundle.train),
        "train_fingerprint": bundle.train.fingerprint(),
        "meta": bundle.meta,
    }


HOW_KEYS = ("channels_last", "channels_last_cpu", "compile")


def recorded_train(train: TrainConfig, run_dir: Path, scaled: dict[str, str]) -> tuple[TrainConfig, dict[str, str]]:
    """The train settings a resumed run continues with: the recorded values of those derived from
    --epochs (a resume that grows --epochs keeps its schedule), and, for settings the record
    predates and the caller left at their defaults, the value the run trained with
    (`LEGACY_TRAIN`). Returns them and the notes that still hold."""
    from dataclasses import fields

    from labelenh.engine import LEGACY_TRAIN

    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return train, scaled
    stored = (read_checkpoint(path).get("config") or {}).get("train")
    if not isinstance(stored, dict):
        return train, scaled
    defaults = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
    changes: dict[str, Any] = {}
    notes = dict(scaled)
    for key in scaled:
        if key in stored:
            changes[key] = stored[key]
            notes[key] = f"{key} {stored[key]} as the run recorded them"
    for key, old in LEGACY_TRAIN.items():
        if key not in stored and getattr(train, key) == defaults[key]:
            changes[key] = old
    for key in HOW_KEYS:
        # how the steps run, not what they compute: a resume left at the defaults keeps the
        # recorded choice (a different memory format would change the low bits of every step)
        if key in stored and getattr(train, key) == defaults[key]:
            changes[key] = stored[key]
    return replace(train, **changes).validate(), notes


def describe_data(bundle: DatasetBundle) -> tuple[str, str]:
    """The start-up summary's line about the data."""
    sizes = [f"{len(bundle.train):,} train"]
    if bundle.val is not None:
        sizes.append(f"{len(bundle.val):,} val")
    sizes.append(f"{len(bundle.test):,} test")
    c, h, w = bundle.train.image_shape
    return "data", f"{bundle.name}: {', '.join(sizes)}, {bundle.num_classes} classes, {c}x{h}x{w}"


def recorded_data(path: Path) -> dict[str, Any] | None:
    """The data settings a run's checkpoint records, None when there is no checkpoint."""
    if not path.is_file():
        return None
    data = (read_checkpoint(path).get("config") or {}).get("data")
    return data if isinstance(data, dict) else {}
