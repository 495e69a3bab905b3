"""Options shared by the training commands (`teach`, `student`) and how they are resolved:
built-in defaults < a recipe file < flags given on the command line."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from labelenh import bounds as B
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

H_DATA = "Data"
H_OPT = "Optimisation"
H_RUN = "Run"

Dataset = Annotated[str | None, typer.Option("--dataset", help="cifar10 | cifar100 | stl10 | fashionmnist | imagenet | folder:PATH | npz:PATH | cifar10-mini | synthetic", rich_help_panel=H_DATA)]
DataRoot = Annotated[str | None, typer.Option("--data-root", help="Folder holding the dataset in torchvision's on-disk format (never downloaded).", rich_help_panel=H_DATA)]
ValSplit = Annotated[float | None, typer.Option("--val-split", help="Fraction of train held out for validation/early stopping, in (0, 1).", rich_help_panel=H_DATA)]
SplitSeed = Annotated[int | None, typer.Option("--split-seed", help=f"Seed of the validation split, in {B.SEED.text()}.", rich_help_panel=H_DATA)]
Noise = Annotated[str | None, typer.Option("--noise", help="Synthetic label noise: symmetric:RATE or pairflip:RATE.", rich_help_panel=H_DATA)]
NoisyLabels = Annotated[str | None, typer.Option("--noisy-labels", help="CIFAR-N label file FILE[:KEY] (e.g. CIFAR-10_human.pt:worst).", rich_help_panel=H_DATA)]
NoiseSeed = Annotated[int | None, typer.Option("--noise-seed", help=f"Seed of the synthetic label noise, in {B.SEED.text()}.", rich_help_panel=H_DATA)]
ImageSize = Annotated[int | None, typer.Option("--image-size", help=f"Resize folder/ImageNet images to this size, in {B.IMAGE_SIZE.text()}.", rich_help_panel=H_DATA)]
CropPct = Annotated[float | None, typer.Option("--crop-pct", help=f"Image folders: evaluation images are the centre crop of the short side resized to image size / crop-pct, in {B.CROP_PCT.text()}; default: 0.875 (256 -> 224, as timm) for a new run or store, what the resumed run or the store read was made with otherwise (1.0 where it records none).", rich_help_panel=H_DATA)]
Workers = Annotated[int | None, typer.Option("--workers", help=f"Image folders: loader processes that decode and render the next batches while the model steps (export: threads decoding the next chunk); default: the CPU count, shared among torchrun's local ranks; 0: in the training process. Results do not depend on it. In {B.WORKERS.text()}.", rich_help_panel=H_DATA)]

Epochs = Annotated[int | None, typer.Option("--epochs", help=f"Training epochs, in {B.EPOCHS.text()}.", rich_help_panel=H_OPT)]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help=f"Batch size (per process under torchrun), in {B.BATCH_SIZE.text()}.", rich_help_panel=H_OPT)]
Lr = Annotated[float | None, typer.Option("--lr", help=f"Peak learning rate, in {B.LR.text()}.", rich_help_panel=H_OPT)]
Momentum = Annotated[float | None, typer.Option("--momentum", rich_help_panel=H_OPT)]
Nesterov = Annotated[bool | None, typer.Option("--nesterov/--no-nesterov", rich_help_panel=H_OPT)]
WeightDecay = Annotated[float | None, typer.Option("--weight-decay", help=f"L2 weight decay, in {B.WEIGHT_DECAY.text()}.", rich_help_panel=H_OPT)]
Schedule = Annotated[str | None, typer.Option("--schedule", help="multistep | cosine | constant, or a preset: default (240 ep, 150/180/210), long (350 ep, 150/200/250/300).", rich_help_panel=H_OPT)]
Milestones = Annotated[str | None, typer.Option("--milestones", help="Comma-separated epochs for multistep decay, e.g. 150,180,210.", rich_help_panel=H_OPT)]
Gamma = Annotated[float | None, typer.Option("--gamma", help="Multistep decay factor.", rich_help_panel=H_OPT)]
Warmup = Annotated[int | None, typer.Option("--warmup-epochs", help="Linear warm-up epochs.", rich_help_panel=H_OPT)]
Patience = Annotated[int | None, typer.Option("--patience", help=f"Early stopping on validation NLL after this many epochs without improvement (needs --val-split); 0 = off; in {B.PATIENCE.text()}.", rich_help_panel=H_OPT)]
Seed = Annotated[int | None, typer.Option("--seed", help=f"Seed of initialisation, data order and augmentation, in {B.SEED.text()}.", rich_help_panel=H_OPT)]
Amp = Annotated[str | None, typer.Option("--amp", help="auto | off | bf16 | fp16 (CUDA only).", rich_help_panel=H_OPT)]
EceBins = Annotated[int | None, typer.Option("--ece-bins", help=f"Bins of ECE, adaptive ECE, class-wise ECE, RMS CE and MCE, in {B.ECE_BINS.text()}.", rich_help_panel=H_OPT)]

Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda", rich_help_panel=H_RUN)]
Name = Annotated[str | None, typer.Option("--name", help="Run folder name under --runs-dir: one path component (no /, \\, .., control characters).", rich_help_panel=H_RUN)]
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

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
DATA_KEYS = {"dataset", "data_root", "val_split", "split_seed", "noise", "noisy_labels", "noise_seed", "image_size",
             "crop_pct"}


def read_recipe(path: Path | None, allowed: set[str]) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise LabelenhError(f"recipe {path} does not exist: see teachers/ for examples")
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
            raise LabelenhError(f"recipe {path}: {key} must be {_TYPE_WORDS[want]}, got {value!r}; fix the file")
    return rec


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list of integers (or a comma-separated string)", dict: "a table of KEY = VALUE"}


def _recipe_types() -> dict[str, type]:
    """The TOML type each recipe key must have (a wrong one would otherwise surface as a
    TypeError deep inside training)."""
    import typing

    out: dict[str, type] = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        base = typing.get_origin(hint) or hint
        if base in _TYPE_WORDS:
            out[name] = base
    out.update(dataset=str, data_root=str, val_split=float, split_seed=int, noise=str, noisy_labels=str,
               noise_seed=int, image_size=int, model=str, aug=str, method=str, store=str, params=dict,
               description=str)
    return out


def _is_a(value: Any, want: type) -> bool:
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


def resolve(flags: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Flags that were given win over the recipe; a schedule preset expands into its settings
    (explicit flags still win over the preset)."""
    merged = {**recipe, **{k: v for k, v in flags.items() if v is not None}}
    sched = merged.get("schedule")
    if sched in SCHEDULE_PRESETS:
        preset = SCHEDULE_PRESETS[sched]
        explicit = {k: v for k, v in flags.items() if v is not None and k != "schedule"}
        merged = {**recipe, **preset, **explicit}
    if "milestones" in merged:
        merged["milestones"] = parse_int_list(merged["milestones"], "--milestones")
    return merged


def train_config(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    cfg = base or TrainConfig()
    kw = {k: v for k, v in values.items() if k in TRAIN_KEYS}
    return TrainConfig(**{**cfg.__dict__, **kw}).validate()


def note_without_temperature(summary: dict[str, Any], run_dir: Path) -> None:
    """Say why a run reports no metrics after temperature scaling, and what would."""
    if "temperature" not in ((summary.get("last") or {}).get("test") or {}):
        print(f"labelenh: note: no validation split, so no temperature scaling: train with --val-split "
              f"0.1, or run `labelenh evaluate {run_dir} --calibrate-on test` (biased: T is fitted on "
              "the split it is scored on)", file=sys.stderr)


def check_val_split(v: float | None) -> None:
    if v is not None and not 0 < v < 1:
        raise LabelenhError(f"--val-split must be in (0, 1), got {v}")


def check_workers(workers: int | None) -> None:
    """--workers in range, before any data is read."""
    if workers is not None:
        B.WORKERS.check(workers, "--workers")
