"""`labelenh student`: train a student with any registered target method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelenh.cli import common as c
from labelenh.cli.viewopts import aug_names
from labelenh.errors import LabelenhError

# Flags that set a method parameter; any other parameter goes through --param KEY=VALUE.
PARAM_FLAGS = {"temperature": "T", "alpha": "alpha", "epsilon": "eps", "smooth_rate": "r",
               "wa": "wa", "wb": "wb", "ensemble": "ensemble"}
H_M = "Method"


def register(app: typer.Typer) -> None:
    app.command("student")(student)


def _method_help() -> str:
    from labelenh.methods import METHODS

    return " | ".join(sorted(METHODS))


def student(
    method: Annotated[str | None, typer.Option("--method", help=f"Target method: {_method_help()}", rich_help_panel=H_M)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Student model (see `labelenh teach --help`).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Soft-label store from `labelenh export-soft-labels`.", rich_help_panel=H_M)] = None,
    aug: Annotated[str | None, typer.Option("--aug", help=f"Train on the store's views, as stored (Aug- methods): name the op the store was exported with ({aug_names()}); their stored logits replace the mixed label. Default: fresh crop/flip views with the clean-sample logits; none: no augmentation. Without --store, the methods that need no teacher draw such views on the fly.", rich_help_panel=H_M)] = None,
    teachers: Annotated[str | None, typer.Option("--teachers", help="Comma-separated teacher names inside the store (default: all; several = an ensemble).", rich_help_panel=H_M)] = None,
    teacher: Annotated[list[str] | None, typer.Option("--teacher", help="Online teacher run/checkpoint for `kd` (repeat for an ensemble).", rich_help_panel=H_M)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Teacher softmax temperature T.", rich_help_panel=H_M)] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="ls: smoothing mass; kd/kd-sl: weight of the hard-label CE.", rich_help_panel=H_M)] = None,
    epsilon: Annotated[float | None, typer.Option("--epsilon", help="ils: smoothing mass.", rich_help_panel=H_M)] = None,
    smooth_rate: Annotated[float | None, typer.Option("--smooth-rate", help="gls: smooth rate r (negative = NLS).", rich_help_panel=H_M)] = None,
    wa: Annotated[float | None, typer.Option("--wa", help="gls: weight of plain CE.", rich_help_panel=H_M)] = None,
    wb: Annotated[float | None, typer.Option("--wb", help="gls: weight of the GLS term.", rich_help_panel=H_M)] = None,
    ensemble: Annotated[str | None, typer.Option("--ensemble", help="prob-mean | logit-mean", rich_help_panel=H_M)] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Any method parameter as KEY=VALUE (repeatable).", rich_help_panel=H_M)] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Initialise the student from this run/checkpoint (e.g. GLS after a CE warm-up).")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="A TOML file of these settings; flags override it.")] = None,
    dataset: c.Dataset = None, data_root: c.DataRoot = None, val_split: c.ValSplit = None,
    split_seed: c.SplitSeed = None, noise: c.Noise = None, noisy_labels: c.NoisyLabels = None,
    noise_seed: c.NoiseSeed = None, image_size: c.ImageSize = None,
    epochs: c.Epochs = None, batch_size: c.BatchSize = None, lr: c.Lr = None, momentum: c.Momentum = None,
    nesterov: c.Nesterov = None, weight_decay: c.WeightDecay = None, schedule: c.Schedule = None,
    milestones: c.Milestones = None, gamma: c.Gamma = None, warmup_epochs: c.Warmup = None,
    patience: c.Patience = None, seed: c.Seed = None, amp: c.Amp = None, ece_bins: c.EceBins = None,
    device: c.Device = "auto", name: c.Name = None, runs_dir: c.RunsDir = Path("runs"), resume: c.Resume = False,
    log: c.Log = None, log_every: c.LogEvery = 50,
    preload: Annotated[bool | None, typer.Option("--preload/--no-preload", help="Read the store into memory (default: when it takes at most 2 GiB), or map it lazily and read each batch's rows (each process: its own rows under torchrun).", rich_help_panel=c.H_RUN)] = None,
) -> None:
    """Train a student against enhanced labels (SL, En-SL, KD-SL, ILS, ...) or a baseline."""
    from labelenh.loggers import parse_loggers
    from labelenh.student import StudentSettings, train_student
    from labelenh.teach import DataSettings

    loggers = parse_loggers(log)

    rec = c.read_recipe(recipe, c.TRAIN_KEYS | c.DATA_KEYS | {"model", "method", "aug", "store", "params"})
    flags = dict(
        model=model, method=method, aug=aug, store=str(store) if store else None, dataset=dataset,
        data_root=data_root, val_split=val_split, split_seed=split_seed, noise=noise,
        noisy_labels=noisy_labels, noise_seed=noise_seed, image_size=image_size, epochs=epochs,
        batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=warmup_epochs,
        patience=patience, seed=seed, amp=amp, ece_bins=ece_bins,
    )
    v = c.resolve(flags, rec)
    c.check_val_split(v.get("val_split"))
    if v.get("patience") and not v.get("val_split"):
        raise LabelenhError("--patience needs a validation split: add --val-split 0.1")
    params = dict(rec.get("params") or {})
    given = dict(temperature=temperature, alpha=alpha, epsilon=epsilon, smooth_rate=smooth_rate,
                 wa=wa, wb=wb, ensemble=ensemble)
    method_name = v.get("method", "vanilla")
    from labelenh.methods import METHODS

    for flag, value in given.items():
        if value is None:
            continue
        key = PARAM_FLAGS[flag]
        known = METHODS[method_name].params if method_name in METHODS else None
        if known is not None and key not in known:
            raise LabelenhError(f"--{flag.replace('_', '-')} does not apply to method {method_name!r} "
                                f"(its parameters: {', '.join(known) or 'none'})")
        params[key] = value
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabelenhError(f"--param {item!r}: write it as KEY=VALUE, e.g. --param kl_reduction=batchmean")
        params[key.strip()] = value.strip()
    s = StudentSettings(
        model=v.get("model", "resnet20"), method=method_name, params=params, store=v.get("store"),
        aug=v.get("aug"), teachers=[t.strip() for t in teachers.split(",") if t.strip()] if teachers else None,
        online_teachers=[str(t) for t in teacher or []], init=str(init) if init else None,
        data=DataSettings(**{k: v[k] for k in c.DATA_KEYS if k in v}), train=c.train_config(v),
        name=name, runs_dir=str(runs_dir), device=device, preload=preload, log=loggers, log_every=log_every,
    )
    summary = train_student(s, resume=resume)
    from labelenh.evaluate import print_metrics

    if summary["last"]["test"]:
        print_metrics({summary["name"]: summary["last"]["test"]})
    print(f"run folder: {Path(runs_dir) / summary['name']}")
    from labelenh.distributed import env_rank

    if env_rank() == 0:
        c.note_without_temperature(summary, Path(runs_dir) / summary["name"])
