"""`labelenh teach`: train a teacher (or an ensemble of seeds), or import one with --checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from labelenh import bounds as B
from labelenh.cli import common as c
from labelenh.cli.viewopts import aug_names
from labelenh.distributed import env_rank
from labelenh.engine import check_run_name
from labelenh.errors import LabelenhError
from labelenh.utils import write_json


def register(app: typer.Typer) -> None:
    app.command("teach")(teach)


def teach(
    model: Annotated[str | None, typer.Option("--model", help="resnet8/14/20/32/44/56/110, shallow, timm:NAME, torchvision:NAME", show_default="resnet20")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="A teacher recipe TOML (see teachers/) or a run's config.json (repeats that run); flags override it.", show_default="none")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Load this teacher instead of training (labelenh checkpoint or a plain state_dict for --model) and evaluate it.", show_default="none: train")] = None,
    weights: c.Weights = None, reset_head: c.ResetHead = False,
    seeds: Annotated[str | None, typer.Option("--seeds", help=f"Train one teacher per seed, e.g. 0,1,2 (an ensemble); each in {B.SEED.text()}.", show_default="--seed")] = None,
    aug: Annotated[str | None, typer.Option("--aug", help=f"Training views: {aug_names()}.", show_default="crop-flip")] = None,
    dataset: c.Dataset = None, data_root: c.DataRoot = None, val_split: c.ValSplit = None,
    split_seed: c.SplitSeed = None, noise: c.Noise = None, noisy_labels: c.NoisyLabels = None,
    noise_seed: c.NoiseSeed = None, image_size: c.ImageSize = None, crop_pct: c.CropPct = None,
    epochs: c.Epochs = None, batch_size: c.BatchSize = None, lr: c.Lr = None, momentum: c.Momentum = None,
    nesterov: c.Nesterov = None, weight_decay: c.WeightDecay = None, schedule: c.Schedule = None,
    milestones: c.Milestones = None, gamma: c.Gamma = None, warmup_epochs: c.Warmup = None,
    patience: c.Patience = None, seed: c.Seed = None, amp: c.Amp = None, ece_bins: c.EceBins = None,
    opt: c.Opt = None, model_ema: c.ModelEma = None, model_ema_decay: c.ModelEmaDecay = None,
    compile: c.Compile = None, channels_last: c.ChannelsLast = None,
    device: c.Device = "auto", name: c.Name = None, runs_dir: c.RunsDir = Path("runs"), resume: c.Resume = False,
    log: c.Log = None, log_every: c.LogEvery = 50,
    workers: c.Workers = None,
) -> None:
    """Train a teacher on a dataset and report accuracy and calibration."""
    from labelenh.loggers import parse_loggers
    from labelenh.teach import (
        DataSettings,
        TeachSettings,
        default_run_name,
        import_teacher,
        train_teacher,
    )
    from labelenh.views import ViewSpec

    loggers = parse_loggers(log)
    rec = c.read_recipe(recipe, c.TRAIN_KEYS | c.DATA_KEYS | {"model", "aug", "weights", "reset_head"},
                        stage="teach")
    flags = dict(
        model=model, aug=aug, dataset=dataset, data_root=data_root, val_split=val_split,
        split_seed=split_seed, noise=noise, noisy_labels=noisy_labels, noise_seed=noise_seed,
        image_size=image_size, crop_pct=crop_pct, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, milestones=milestones,
        gamma=gamma, warmup_epochs=warmup_epochs, patience=patience, seed=seed, amp=amp, ece_bins=ece_bins,
        opt=opt, model_ema=model_ema, model_ema_decay=model_ema_decay, compile=compile,
        channels_last=channels_last, channels_last_cpu=True if channels_last else None,  # the flag: CPU too
        weights=str(weights) if weights else None, reset_head=reset_head or None,
    )
    v = c.resolve(flags, rec)
    c.check_val_split(v.get("val_split"))
    c.check_workers(workers)
    if name is not None:
        check_run_name(name)
    if v.get("patience") and not v.get("val_split"):
        raise LabelenhError("--patience needs a validation split: add --val-split 0.1")
    data = DataSettings(**{k: v[k] for k in c.DATA_KEYS if k in v})
    model_name = v.get("model", "resnet20")
    if checkpoint is not None:
        if seeds or resume:
            raise LabelenhError("--checkpoint loads a trained teacher: it cannot be combined with --seeds or --resume")
        if env_rank() != 0:
            return  # under torchrun, rank 0 alone imports and evaluates
        summary = import_teacher(checkpoint, model_name, data, name=name, runs_dir=str(runs_dir),
                                 device=device, ece_bins=v.get("ece_bins", 15))
        _print_table(summary["name"], summary["last"]["test"])
        return
    train = c.train_config(v)
    # a run record's view spec is a table; a flag or TOML recipe names the op
    spec = (ViewSpec.from_dict(v["aug"]) if isinstance(v.get("aug"), dict) else
            ViewSpec.parse(v["aug"]) if "aug" in v else ViewSpec())  # default: crop/flip
    base = TeachSettings(model=model_name, data=data, train=train, aug=spec.to_dict(),
                         weights=v.get("weights"), reset_head=bool(v.get("reset_head")), name=name,
                         runs_dir=str(runs_dir), device=device, workers=workers, log=loggers, log_every=log_every,
                         scaled=v[c.SCALED])
    seed_list = c.parse_int_list(seeds, "--seeds") if seeds else [train.seed]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise LabelenhError(f"--seeds must list distinct integers, got {seeds!r}")
    names = {}
    for s in seed_list:  # every member checked before the first one trains
        B.SEED.check(s, "--seeds")
        names[s] = check_run_name(_member_name(name, s, len(seed_list), model_name, data.dataset))
        if not resume and (Path(runs_dir) / names[s] / "checkpoint.pt").exists():
            raise LabelenhError(f"run folder {Path(runs_dir) / names[s]} already holds a run: pass --resume "
                                "to continue it or a new --name")
    members = []
    for s in seed_list:
        settings = replace(base, train=replace(train, seed=s), name=names[s])
        summary = train_teacher(settings, resume=resume)
        members.append(names[s])
        _print_table(names[s], summary["last"]["test"])
        print(f"run folder: {Path(runs_dir) / names[s]}")
        if env_rank() == 0:
            c.note_without_temperature(summary, Path(runs_dir) / names[s])
    if len(seed_list) > 1 and env_rank() == 0:
        index = name or default_run_name("ensemble", model_name, data.dataset, seed_list[0])
        write_json(Path(runs_dir) / index / "ensemble.json",
                   {"members": [str(Path(runs_dir) / m) for m in members], "seeds": seed_list,
                    "model": model_name, "dataset": data.dataset})
        print(f"ensemble index: {Path(runs_dir) / index / 'ensemble.json'}")


def _member_name(name: str | None, seed: int, members: int, model: str, dataset: str) -> str:
    """--name for one teacher, NAME-sSEED for each member of an ensemble, else a default name."""
    from labelenh.teach import default_run_name

    if name and members > 1:
        return f"{name}-s{seed}"
    return name or default_run_name("teach", model, dataset, seed)


def _print_table(title: str, m: dict | None) -> None:
    from labelenh.evaluate import print_metrics

    if m:
        print_metrics({title: m})
