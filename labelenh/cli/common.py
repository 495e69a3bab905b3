"""Options shared by the training commands (`teach`, `student`) and how they are resolved:
built-in defaults < a recipe file < flags given on the command line."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

H_DATA = "Data"
H_OPT = "Optimisation"
H_RUN = "Run"

Dataset = Annotated[Optional[str], typer.Option("--dataset", help="cifar10 | cifar100 | stl10 | fashionmnist | imagenet | folder:PATH | npz:PATH | cifar10-mini | synthetic", rich_help_panel=H_DATA)]
DataRoot = Annotated[Optional[str], typer.Option("--data-root", help="Folder holding the dataset in torchvision's on-disk format (never downloaded).", rich_help_panel=H_DATA)]
ValSplit = Annotated[Optional[float], typer.Option("--val-split", help="Fraction of train held out for validation/early stopping, in (0, 1).", rich_help_panel=H_DATA)]
SplitSeed = Annotated[Optional[int], typer.Option("--split-seed", help="Seed of the validation split.", rich_help_panel=H_DATA)]
Noise = Annotated[Optional[str], typer.Option("--noise", help="Synthetic label noise: symmetric:RATE or pairflip:RATE.", rich_help_panel=H_DATA)]
NoisyLabels = Annotated[Optional[str], typer.Option("--noisy-labels", help="CIFAR-N label file FILE[:KEY] (e.g. CIFAR-10_human.pt:worst).", rich_help_panel=H_DATA)]
NoiseSeed = Annotated[Optional[int], typer.Option("--noise-seed", help="Seed of the synthetic label noise.", rich_help_panel=H_DATA)]
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Resize folder/ImageNet images to this size.", rich_help_panel=H_DATA)]

Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs.", rich_help_panel=H_OPT)]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Batch size (per process under torchrun).", rich_help_panel=H_OPT)]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", rich_help_panel=H_OPT)]
Momentum = Annotated[Optional[float], typer.Option("--momentum", rich_help_panel=H_OPT)]
Nesterov = Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", rich_help_panel=H_OPT)]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", rich_help_panel=H_OPT)]
Schedule = Annotated[Optional[str], typer.Option("--schedule", help="multistep | cosine | constant, or a preset: default (240 ep, 150/180/210), long (350 ep, 150/200/250/300).", rich_help_panel=H_OPT)]
Milestones = Annotated[Optional[str], typer.Option("--milestones", help="Comma-separated epochs for multistep decay, e.g. 150,180,210.", rich_help_panel=H_OPT)]
Gamma = Annotated[Optional[float], typer.Option("--gamma", help="Multistep decay factor.", rich_help_panel=H_OPT)]
Warmup = Annotated[Optional[int], typer.Option("--warmup-epochs", help="Linear warm-up epochs.", rich_help_panel=H_OPT)]
Patience = Annotated[Optional[int], typer.Option("--patience", help="Early stopping on validation NLL after this many epochs without improvement (needs --val-split); 0 = off.", rich_help_panel=H_OPT)]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, data order and augmentation.", rich_help_panel=H_OPT)]
Amp = Annotated[Optional[str], typer.Option("--amp", help="auto | off | bf16 | fp16 (CUDA only).", rich_help_panel=H_OPT)]
EceBins = Annotated[Optional[int], typer.Option("--ece-bins", help="Equal-width ECE bins.", rich_help_panel=H_OPT)]

Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda", rich_help_panel=H_RUN)]
Name = Annotated[Optional[str], typer.Option("--name", help="Run folder name under --runs-dir.", rich_help_panel=H_RUN)]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where run folders go.", rich_help_panel=H_RUN)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --name from its last checkpoint.", rich_help_panel=H_RUN)]

# Schedule presets from the seeds (ALGORITHMS.md section 4).
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"schedule": "multistep", "epochs": 240, "milestones": [150, 180, 210], "gamma": 0.1},
    "long": {"schedule": "multistep", "epochs": 350, "milestones": [150, 200, 250, 300], "gamma": 0.1},
    "imagenet": {"schedule": "multistep", "epochs": 100, "milestones": [30, 60, 90], "gamma": 0.1},
}

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
DATA_KEYS = {"dataset", "data_root", "val_split", "split_seed", "noise", "noisy_labels", "noise_seed", "image_size"}


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
    return rec


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


def check_val_split(v: float | None) -> None:
    if v is not None and not 0 < v < 1:
        raise LabelenhError(f"--val-split must be in (0, 1), got {v}")
