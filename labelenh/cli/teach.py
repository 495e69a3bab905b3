"""`labelenh teach`: train a teacher (or an ensemble of seeds), or import one with --checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from labelenh import bounds as B
from labelenh.cli import common as c
from labelenh.cli.viewopts import aug_names
from labelenh.data.settings import DataSettings
from labelenh.distributed import env_rank
from labelenh.engine import TrainConfig, check_run_name
from labelenh.errors import LabelenhError
from labelenh.options import with_options
from labelenh.utils import write_json

if TYPE_CHECKING:
    from labelenh.teach import TeachSettings


def register(app: typer.Typer) -> None:
    app.command("teach")(teach)


@with_options(DataSettings, TrainConfig)
def teach(
    model: Annotated[str | None, typer.Option("--model", help="resnet8/14/20/32/44/56/110, shallow, timm:NAME, torchvision:NAME", show_default="resnet20")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="A teacher recipe TOML (see teachers/) or a run's config.json (repeats that run); flags override it.", show_default="none")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Load this teacher instead of training (labelenh checkpoint or a plain state_dict for --model) and evaluate it.", show_default="none: train")] = None,
    weights: c.Weights = None, reset_head: c.ResetHead = False,
    seeds: Annotated[str | None, typer.Option("--seeds", help=f"Train one teacher per seed, e.g. 0,1,2 (an ensemble); each in {B.SEED.text()}.", show_default="--seed")] = None,
    aug: Annotated[str | None, typer.Option("--aug", help=f"Training views: {aug_names()}.", show_default="crop-flip")] = None,
    options: dict[str, Any] | None = None,
    device: c.Device = "auto", name: c.Name = None, runs_dir: c.RunsDir = Path("runs"), resume: c.Resume = False,
    log: c.Log = None, log_every: c.LogEvery = 50,
    workers: c.Workers = None,
) -> None:
    """Train a teacher on a dataset and report accuracy and calibration."""
    from labelenh.loggers import parse_loggers
    from labelenh.teach import TeachSettings, import_teacher
    from labelenh.views import ViewSpec

    loggers = parse_loggers(log)
    rec = c.read_recipe(recipe, c.SETTINGS_KEYS | {"model", "aug", "weights", "reset_head"}, stage="teach")
    flags = {**(options or {}), "model": model, "aug": aug, "weights": str(weights) if weights else None,
             "reset_head": reset_head or None}
    v = c.resolve(flags, rec)
    c.check_workers(workers)
    if name is not None:
        check_run_name(name)
    data = DataSettings.from_values(v)
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
    _train_members(base, seed_list, resume=resume)


def _train_members(base: TeachSettings, seeds: list[int], *, resume: bool) -> None:
    """One teacher per seed (every member's name checked before the first one trains), and the
    ensemble's index when there are several."""
    from labelenh.teach import default_run_name, train_teacher

    runs_dir = Path(base.runs_dir)
    names = {}
    for s in seeds:
        B.SEED.check(s, "--seeds")
        names[s] = check_run_name(_member_name(base.name, s, len(seeds), base.model, base.data.dataset))
        if not resume and (runs_dir / names[s] / "checkpoint.pt").exists():
            raise LabelenhError(f"run folder {runs_dir / names[s]} already holds a run: pass --resume "
                                "to continue it or a new --name")
    for s in seeds:
        summary = train_teacher(replace(base, train=replace(base.train, seed=s), name=names[s]), resume=resume)
        c.print_run(summary, runs_dir / names[s])
    if len(seeds) > 1 and env_rank() == 0:
        index = base.name or default_run_name("ensemble", base.model, base.data.dataset, seeds[0])
        write_json(runs_dir / index / "ensemble.json",
                   {"members": [str(runs_dir / names[s]) for s in seeds], "seeds": seeds,
                    "model": base.model, "dataset": base.data.dataset})
        print(f"ensemble index: {runs_dir / index / 'ensemble.json'}")


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
