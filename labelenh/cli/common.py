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
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError, one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

H_DATA = "Data"
H_OPT = "Optimisation"
H_RUN = "Run"
H_W = "Weights"

_D = TrainConfig()  # the defaults the help shows (a preset or recipe may set others)


def _default(value: Any) -> str:
    """How the help shows a default: lists comma-separated, as the flags take them."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)

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

Epochs = Annotated[int | None, typer.Option("--epochs", help=f"Training epochs, in {B.EPOCHS.text()}; the preset's or recipe's milestones and warm-up scale with it unless given.", show_default=f"{_D.epochs} (--schedule default)", rich_help_panel=H_OPT)]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help=f"Batch size (per process under torchrun), in {B.BATCH_SIZE.text()}.", show_default=_default(_D.batch_size), rich_help_panel=H_OPT)]
Lr = Annotated[float | None, typer.Option("--lr", help=f"Peak learning rate, in {B.LR.text()}.", show_default=_default(_D.lr), rich_help_panel=H_OPT)]
Opt = Annotated[str | None, typer.Option("--opt", help="Optimiser, any of timm.optim.list_optimizers(): sgd (torch SGD with --momentum/--nesterov, decay on every parameter, as the original recipes), adamw, lamb, lion, ... (timm's, no decay on biases and norms).", show_default=_D.opt, rich_help_panel=H_OPT)]
Momentum = Annotated[float | None, typer.Option("--momentum", help="Momentum of sgd (and of timm optimisers that have one), in [0, 1).", show_default=_default(_D.momentum), rich_help_panel=H_OPT)]
Nesterov = Annotated[bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (--opt sgd).", show_default="no-nesterov", rich_help_panel=H_OPT)]
WeightDecay = Annotated[float | None, typer.Option("--weight-decay", help=f"Weight decay, in {B.WEIGHT_DECAY.text()}.", show_default=_default(_D.weight_decay), rich_help_panel=H_OPT)]
Schedule = Annotated[str | None, typer.Option("--schedule", help="multistep | cosine | constant, or a preset: default (240 ep, 150/180/210), long (350 ep, 150/200/250/300), imagenet (100 ep, 30/60/90).", show_default=f"{_D.schedule} (the default preset)", rich_help_panel=H_OPT)]
Milestones = Annotated[str | None, typer.Option("--milestones", help="Comma-separated epochs for multistep decay, e.g. 150,180,210; without it the preset's scale with --epochs.", show_default=f"{_default(_D.milestones)} of {_D.epochs} epochs, scaled to --epochs", rich_help_panel=H_OPT)]
Gamma = Annotated[float | None, typer.Option("--gamma", help="Multistep decay factor, in (0, 1].", show_default=_default(_D.gamma), rich_help_panel=H_OPT)]
Warmup = Annotated[int | None, typer.Option("--warmup-epochs", help="Linear warm-up epochs, in [0, epochs); a recipe's scales with --epochs unless given.", show_default=_default(_D.warmup_epochs), rich_help_panel=H_OPT)]
Patience = Annotated[int | None, typer.Option("--patience", help=f"Early stopping on validation NLL after this many epochs without improvement (needs --val-split); 0 = off; in {B.PATIENCE.text()}.", show_default=_default(_D.patience), rich_help_panel=H_OPT)]
Seed = Annotated[int | None, typer.Option("--seed", help=f"Seed of initialisation, data order and augmentation, in {B.SEED.text()}.", show_default=_default(_D.seed), rich_help_panel=H_OPT)]
Amp = Annotated[str | None, typer.Option("--amp", help="auto | off | bf16 | fp16 (CUDA only).", show_default=_D.amp, rich_help_panel=H_OPT)]
EceBins = Annotated[int | None, typer.Option("--ece-bins", help=f"Bins of ECE, adaptive ECE, class-wise ECE, RMS CE and MCE, in {B.ECE_BINS.text()}.", show_default=_default(_D.ece_bins), rich_help_panel=H_OPT)]
ModelEma = Annotated[bool | None, typer.Option("--model-ema/--no-model-ema", help="Keep an exponential moving average of the weights (timm's ModelEmaV3), evaluated each epoch (`ema` in metrics.jsonl) and checkpointed.", show_default="no-model-ema", rich_help_panel=H_OPT)]
ModelEmaDecay = Annotated[float | None, typer.Option("--model-ema-decay", help=f"EMA decay per step, in {B.EMA_DECAY.text()}.", show_default=_default(_D.model_ema_decay), rich_help_panel=H_OPT)]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the training model (a compile at start; faster steps on GPUs).", show_default="no-compile", rich_help_panel=H_OPT)]
ChannelsLast = Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="Channels-last (NHWC) memory format: faster convolutions on CUDA, and on CPU for the CIFAR ResNets (not for timm:resnet18 at 32x32, BENCHMARKS.md); --channels-last forces it on CPU too. A resumed run keeps what it recorded.", show_default="on CUDA; on CPU for labelenh's own models", rich_help_panel=H_OPT)]

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

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
DATA_KEYS = {"dataset", "data_root", "val_split", "split_seed", "noise", "noisy_labels", "noise_seed", "image_size",
             "crop_pct"}


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
    TypeError deep inside training)."""
    import typing

    out: dict[str, type] = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        base = typing.get_origin(hint) or hint
        if base in _TYPE_WORDS:
            out[name] = base
    out.update(dataset=str, data_root=str, val_split=float, split_seed=int, noise=str, noisy_labels=str,
               noise_seed=int, image_size=int, model=str, aug=(str, dict), method=str, store=str, params=dict,
               description=str, weights=str, reset_head=bool, teachers=str, teacher=(list, str))
    return out


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
    if merged.get("reset_head") and not merged.get("weights"):
        raise LabelenhError("--reset-head drops the classifier of the weights a run starts from: pass --weights too")
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
