"""Find run folders and read what a report needs from each: labels, the seed, the metrics."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelenh.errors import LabelenhError
from labelenh.views import augments  # a student whose --aug changes the image is "aug-<method>"

# The table's metrics; runs made before metrics after temperature scaling existed show a dash
# for ece_ts and temperature.
METRICS = ("acc1", "acc5", "nll", "ece", "ece_ts", "mce", "brier", "temperature")
EPOCHS = ("last", "best")
TEACHER_STAGES = ("teach", "import")


@dataclass
class RunRecord:
    """One run folder: its summary plus the labels a table row shows."""

    path: Path
    name: str
    stage: str  # "teach" | "import" | "student"
    method: str  # "teacher", "sl", "aug-kd-sl", ...
    model: str
    teachers: str  # "" for teachers and the hard-label baselines
    dataset: str
    seed: int | None
    config: dict[str, Any]
    summary: dict[str, Any]
    key: str = field(repr=False, default="")  # the config without train.seed, canonical JSON
    # the config as rows compare it: `init` names the run it started from, not its path
    compared: dict[str, Any] = field(repr=False, default_factory=dict)

    def metric(self, epoch: str, name: str) -> float | None:
        """Test metric `name` of the "last" or "best" epoch; None when the run has none."""
        test = (self.summary.get(epoch) or {}).get("test") or {}
        v = test.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)

    @property
    def best_by(self) -> str | None:
        return (self.summary.get("best") or {}).get("selected_by")

    def history(self) -> tuple[list[dict[str, Any]], int]:
        """Per-epoch records of metrics.jsonl and how many lines could not be read (a run killed
        mid-write leaves a torn last line)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return [], 0
        out, bad = [], 0
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
                out.append(rec)
            else:
                bad += 1
        return sorted(out, key=lambda r: r["epoch"]), bad


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LabelenhError(
            f"{path} is not readable JSON ({reason}): re-run the stage or remove the folder"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise LabelenhError(
            f"{path} is not a labelenh run summary (no 'config'): pass folders made by "
            "`labelenh teach` or `labelenh student`"
        )
    for epoch in EPOCHS:
        if obj.get(epoch) is not None and not isinstance(obj[epoch], dict):
            raise LabelenhError(f"{path}: '{epoch}' is not an object; the summary is damaged")
    return obj


def _teacher_name(ref: str) -> str:
    """A run folder or checkpoint path -> the teacher's run name."""
    p = Path(ref)
    if p.name in ("checkpoint.pt", "best.pt"):
        return p.parent.name
    return p.stem if p.suffix else p.name


def method_label(config: dict[str, Any]) -> str:
    if config.get("stage") in TEACHER_STAGES:
        return "teacher"
    method = str(config.get("method") or "vanilla")
    return f"aug-{method}" if augments(config.get("aug")) else method


def teachers_label(config: dict[str, Any]) -> str:
    if config.get("stage") in TEACHER_STAGES:
        return ""
    parts = []
    if config.get("store"):
        stem = Path(str(config["store"])).stem
        chosen = config.get("teachers")
        parts.append(f"{stem}[{','.join(chosen)}]" if chosen else stem)
    parts += [_teacher_name(str(t)) for t in config.get("online_teachers") or []]
    return " + ".join(parts)


def dataset_label(config: dict[str, Any]) -> str:
    data = config.get("data") or {}
    name = str(data.get("dataset") or "?")
    noise = data.get("noise") or (f"noisy-labels:{Path(str(data['noisy_labels'])).name}"
                                  if data.get("noisy_labels") else None)
    return f"{name} ({noise})" if noise else name


def group_key(config: dict[str, Any]) -> str:
    """Runs whose configs are equal up to train.seed belong to one row."""
    c = json.loads(json.dumps(config, default=str))
    if isinstance(c.get("train"), dict):
        c["train"].pop("seed", None)
    return json.dumps(c, sort_keys=True)


_CHECKPOINTS = ("checkpoint.pt", "best.pt")


def compared_config(config: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """`config` with an `--init` that names a run's checkpoint replaced by that run's seed-free
    identity: its name with the seed as `*`, the file, and a digest of its config without the
    seed. Students started from the seeds of one run (vanilla-s0/best.pt, vanilla-s1/best.pt,
    ...) then form one row. A path that names no readable run stays as it is."""
    init = config.get("init")
    if not isinstance(init, str) or depth > 8:  # an init chain is short; the bound ends a loop
        return config
    path = Path(init)
    run_dir = path.parent if path.name in _CHECKPOINTS else path
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        source = summary["config"]
        seed = (source.get("train") or {}).get("seed")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return config
    name = str(summary.get("name") or run_dir.name)
    if isinstance(seed, int) and not isinstance(seed, bool):
        name = re.sub(rf"(?<![0-9]){seed}$", "*", name)  # vanilla-s0 -> vanilla-s*
    digest = hashlib.sha1(group_key(compared_config(source, depth + 1)).encode()).hexdigest()[:8]
    file = f"/{path.name}" if path.name in _CHECKPOINTS else ""
    return {**config, "init": f"{name}{file} ({digest})"}


def record_of(run_dir: Path) -> RunRecord:
    summary = _read_summary(run_dir / "summary.json")
    config = summary["config"]
    compared = compared_config(config)
    seed = (config.get("train") or {}).get("seed")
    return RunRecord(
        path=run_dir,
        name=str(summary.get("name") or run_dir.name),
        stage=str(config.get("stage") or "?"),
        method=method_label(config),
        model=str(config.get("model") or "?"),
        teachers=teachers_label(config),
        dataset=dataset_label(config),
        seed=seed if isinstance(seed, int) else None,
        config=config,
        summary=summary,
        key=group_key(compared),
        compared=compared,
    )


def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders (with summary.json) named directly or one level below a parent folder; and
    notes on the subfolders skipped."""
    if not paths:
        raise LabelenhError("no run folders given: pass run folders or a folder holding them")
    found: list[Path] = []
    notes: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.name == "summary.json":
            p = p.parent
        if not p.exists():
            raise LabelenhError(f"{p} does not exist: pass run folders or a folder holding them")
        if not p.is_dir():
            raise LabelenhError(f"{p} is not a folder: pass run folders or a folder holding them")
        if (p / "summary.json").is_file():
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir())
        runs = [d for d in subs if (d / "summary.json").is_file()]
        if not runs:
            raise LabelenhError(
                f"{p} holds no run folders (no summary.json in it or its subfolders): "
                "pass folders made by `labelenh teach` / `labelenh student` that finished"
            )
        found += runs
        notes += [f"skipped {d}: no summary.json (unfinished or not a run)" for d in subs
                  if d not in runs]
    unique = list(dict.fromkeys(d.resolve() for d in found))
    return unique, notes


def collect_runs(paths: list[str | Path], notes: list[str] | None = None) -> list[RunRecord]:
    """Read every run folder under `paths` (a run folder, or a folder of run folders). Notes on
    skipped subfolders are appended to `notes` when given."""
    dirs, skipped = find_run_dirs(list(paths))
    if notes is not None:
        notes += skipped
    return [record_of(d) for d in dirs]
