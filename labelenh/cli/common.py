"""Options shared by the training commands (`teach`, `student`) and how they are resolved:
built-in defaults < a recipe file < flags given on the command line."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from labelenh import bounds as B
from labelenh.data.settings import DATA_KEYS, H_DATA, DataSettings
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError, one_line
from labelenh.options import flag, value_types

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

H_RUN = "Run"
H_W = "Weights"

_D = TrainConfig()  # the defaults the help shows (a preset or recipe may set others)


def _default(value: Any) -> str:
    """How the help shows a default: lists comma-separated, as the flags take them."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)

Workers = Annotated[int | None, typer.Option("--workers", help=f"Image folders: loader processes that decode and render the next batches while the model steps (export: threads decoding the next chunk); default: the CPU count, shared among torchrun's local ranks; 0: in the training process. Results do not depend on it. In {B.WORKERS.text()}.", rich_help_panel=H_DATA)]

Weights = Annotated[Path | None, typer.Option("--weights", "--init", help="Initialise the model from these weights: a .safetensors or torch file (state_dict or labelenh checkpoint) or a run folder; --init is the same flag.", show_default="random initialisation", rich_help_panel=H_W)]
ResetHead = Annotated[bool, typer.Option("--reset-head", help="Keep a freshly initialised classifier where the weights' has another shape (e.g. ImageNet weights for a 10-class dataset), as timm does.", rich_help_panel=H_W)]

Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda", show_default=True, rich_help_panel=H_RUN)]
Name = Annotated[str | None, typer.Option("--name", help="Run folder name under --runs-dir: one path component (no /, \\, .., control characters).", show_default="STAGE-MODEL-DATASET-sSEED", rich_help_panel=H_RUN)]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where run folders go.", rich_help_panel=H_RUN)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --name from its last checkpoint (--epochs may grow, never shrink).", rich_help_panel=H_RUN)]
Log = Annotated[list[str] | None, typer.Option("--log", help="Also log every metrics.jsonl field per epoch (and the loss every --log-every steps) to tensorboard (pip install 'labelenh[tensorboard]') or csv (log.csv); repeat or comma-separate. Rank 0 only.", rich_help_panel=H_RUN)]
LogEvery = Annotated[int, typer.Option("--log-every", help=f"Optimiser steps between training losses sent to --log, in {B.LOG_EVERY.text()}.", rich_help_panel=H_RUN)]

# Schedule presets from the original papers (ALGORITHMS.md section 4).
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"schedule": "multistep", "epochs": 240, "milestones": [150, 180, 210], "gamma": 0.1},
    "long": {"schedule": "multistep", "epochs": 350, "milestones": [150, 200, 250, 300], "gamma": 0.1},
    "imagenet": {"schedule": "multistep", "epochs": 100, "milestones": [30, 60, 90], "gamma": 0.1},
}

TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))
SETTINGS_KEYS = TRAIN_KEYS | DATA_KEYS  # what a training command's recipe may set, besides its own keys


def read_recipe(path: Path | None, allowed: set[str], stage: str | None = None) -> dict[str, Any]:
    """The settings of a recipe: a TOML file of flag names (teachers/), or a run's config.json
    (or any JSON file of a run's record), which repeats that run."""
    if path is None:
        return {}
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"  # a run folder: its record
    if not path.is_file():
        raise LabelenhError(f"recipe {path} does not exist: pass a TOML recipe (see teachers/) or a run's config.json")
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise LabelenhError(f"recipe {path} is not valid JSON ({one_line(e, 120)}); fix the file") from None
        rec = run_record_recipe(doc, path, stage) if isinstance(doc, dict) and "stage" in doc else doc
        if not isinstance(rec, dict):
            raise LabelenhError(f"recipe {path} holds a {type(rec).__name__}, not a table of settings")
    else:
        try:
            rec = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise LabelenhError(f"recipe {path} is not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(rec) - allowed - {"description"})
    if unknown:
        raise LabelenhError(f"recipe {path} has unknown keys {unknown}; valid keys: {', '.join(sorted(allowed))}")
    for key, value in rec.items():
        want = _recipe_types().get(key)
        if want is not None and not _is_a(value, want):
            words = _TYPE_WORDS.get(want, "a list of strings" if want == (list, str) else "a string or a table")
            raise LabelenhError(f"recipe {path}: {key} must be {words}, got {value!r}; fix the file")
    return rec


def run_record_recipe(doc: dict[str, Any], path: Path, stage: str | None) -> dict[str, Any]:
    """A run's config.json as recipe settings (flag names): the run's data, train, model and
    stage settings, so that `--recipe runs/X/config.json --seed 1` repeats X with one change."""
    if stage is not None and doc.get("stage") != stage:
        raise LabelenhError(f"recipe {path} records a {doc.get('stage')!r} run, not a {stage} run: "
                            f"pass it to `labelenh {doc.get('stage')}`" if doc.get("stage") in ("teach", "student")
                            else f"recipe {path} records a {doc.get('stage')!r} run, which cannot be repeated; "
                            "pass a teach or student run's config.json")
    rec: dict[str, Any] = {}
    for part in ("data", "train"):
        value = doc.get(part, {})
        if not isinstance(value, dict):
            raise LabelenhError(f"recipe {path}: {part} must be a table, got {value!r}")
        rec.update({k: v for k, v in value.items() if v is not None})
    if not rec.get("val_split"):
        rec.pop("val_split", None)  # 0: no validation split (the flag's range is (0, 1))
    for key in ("model", "method", "store", "weights", "reset_head"):
        if doc.get(key) is not None:
            rec[key] = doc[key]
    if doc.get("init") is not None:
        rec["weights"] = doc["init"]  # a student's --init is --weights
    if doc.get("aug") is not None:
        rec["aug"] = doc["aug"]  # a teacher's view spec (a table) or a student's op name
    if doc.get("params"):
        rec["params"] = doc["params"]
    if doc.get("teachers"):
        rec["teachers"] = ",".join(doc["teachers"])
    if doc.get("online_teachers"):
        rec["teacher"] = list(doc["online_teachers"])
    return rec


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list of integers (or a comma-separated string)", dict: "a table of KEY = VALUE"}


def _recipe_types() -> dict[str, type]:
    """The TOML type each recipe key must have (a wrong one would otherwise surface as a
    TypeError deep inside training): the declared settings' own, and the commands' keys."""
    return {**value_types(TrainConfig), **value_types(DataSettings), "model": str, "aug": (str, dict),
            "method": str, "store": str, "params": dict, "description": str, "weights": str, "reset_head": bool,
            "teachers": str, "teacher": (list, str)}


def _is_a(value: Any, want: Any) -> bool:
    if isinstance(want, tuple):  # (list, str): a list of strings; else any of the types
        if want == (list, str):
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        return any(_is_a(value, w) for w in want)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is list:
        return isinstance(value, str) or (isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value))
    return isinstance(value, want)


def parse_int_list(text: str | list[int] | None, what: str) -> list[int] | None:
    if text is None or isinstance(text, list):
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LabelenhError(f"{what} must be comma-separated integers, got {text!r}") from None


SCALED = "_scaled"  # resolve()'s key for {setting: note} of the settings scaled to --epochs


def resolve(flags: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Flags that were given win over the recipe; a schedule preset expands into its settings
    (explicit flags still win over the preset). Milestones and warm-up written for another number
    of epochs (the defaults', a preset's, a recipe's) scale to the run's epochs unless given at the
    level that sets the epochs; `merged[SCALED]` says which and how."""
    from labelenh.schedules import scale_layers

    given = {k: v for k, v in flags.items() if v is not None}
    recipe = dict(recipe)
    if "milestones" in recipe:
        recipe["milestones"] = parse_int_list(recipe["milestones"], "recipe milestones")
    merged = {**recipe, **given}
    defaults = {"epochs": _D.epochs, "milestones": list(_D.milestones), "warmup_epochs": _D.warmup_epochs}
    layers: list[tuple[str, dict[str, Any]]] = [("the default schedule", defaults), ("the recipe", recipe)]
    sched = merged.get("schedule")
    if sched in SCHEDULE_PRESETS:
        preset = SCHEDULE_PRESETS[sched]
        explicit = {k: v for k, v in given.items() if k != "schedule"}
        merged = {**recipe, **preset, **explicit}
        layers += [(f"the {sched} preset", preset), ("flags", explicit)]
    else:
        layers.append(("flags", given))
    if "milestones" in merged:
        merged["milestones"] = parse_int_list(merged["milestones"], "--milestones")
        layers = [(n, {**d, "milestones": parse_int_list(d["milestones"], "--milestones")} if "milestones" in d
                   else d) for n, d in layers]
    scaled, notes = scale_layers(layers)
    merged.update(scaled)
    if "milestones" in notes and merged.get("schedule", _D.schedule) != "multistep":
        notes["milestones"] = ""  # scaled and recorded, but unused: nothing to say
    merged[SCALED] = notes
    if given.get("channels_last"):
        merged["channels_last_cpu"] = True  # the flag forces channels-last on CPU too
    if merged.get("reset_head") and not merged.get("weights"):
        raise LabelenhError("--reset-head drops the classifier of the weights a run starts from: pass --weights too")
    if merged.get("patience") and not merged.get("val_split"):
        raise LabelenhError(f"{flag(TrainConfig, 'patience')} needs a validation split: add "
                            f"{flag(DataSettings, 'val_split')} 0.1")
    return merged


def train_config(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    cfg = base or TrainConfig()
    kw = {k: v for k, v in values.items() if k in TRAIN_KEYS}
    return TrainConfig(**{**cfg.__dict__, **kw}).validate()


def print_run(summary: dict[str, Any], run_dir: Path) -> None:
    """A finished run's test metrics, its folder, and (rank 0) why it has no temperature
    scaling when it has none."""
    from labelenh.distributed import env_rank
    from labelenh.evaluate import print_metrics

    test = (summary.get("last") or {}).get("test")
    if test:
        print_metrics({run_dir.name: test})
    print(f"run folder: {run_dir}")
    if env_rank() == 0 and "temperature" not in (test or {}):
        print(f"labelenh: note: no validation split, so no temperature scaling: train with --val-split "
              f"0.1, or run `labelenh evaluate {run_dir} --calibrate-on test` (biased: T is fitted on "
              "the split it is scored on)", file=sys.stderr)


def check_workers(workers: int | None) -> None:
    """--workers in range, before any data is read."""
    if workers is not None:
        B.WORKERS.check(workers, "--workers")
