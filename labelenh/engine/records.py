"""A run's records: the checkpoint state and its restoring on resume, the run folder's files
(metrics.jsonl, config.json, env.json, model.safetensors), the summary, and the start-up block.

Only rank 0 calls the functions that write files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from labelenh import distributed as dist
from labelenh.checkpoint import (
    ENGINE_FIELDS,
    RESUME_FIELDS,
    check_fields,
    malformed,
    read_checkpoint,
)
from labelenh.engine.config import LEGACY_TRAIN
from labelenh.engine.runs import RUN_FILES
from labelenh.errors import LabelenhError, one_line
from labelenh.utils import atomic_write, environment, remove_stale_temporaries, write_json

if TYPE_CHECKING:
    from labelenh.engine.core import Engine

# Settings a resumed run may change: more epochs (the schedule is recomputed from them).
RESUMABLE_KEYS = {"epochs"}


# Top-level run settings added later, with the value that reproduces the runs made before them.
LEGACY_RUN = {"reset_head": False}


def config_diffs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ between a run's recorded config and a new
    one, leaving out those a resume may change and those added later at their old behaviour."""
    out = []
    legacy = LEGACY_TRAIN if prefix == "train." else LEGACY_RUN if prefix == "" else {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if k in RESUMABLE_KEYS:
            continue
        if k not in old and k in legacy and b == legacy[k]:
            continue  # recorded before the setting existed, and the run keeps the old behaviour
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diffs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def checkpoint_state(engine: Engine) -> dict[str, Any]:
    """What checkpoint.pt and best.pt hold: the weights, the optimiser, scaler and task states,
    the engine's counters and history, the run's config and environment."""
    return {
        **engine.meta,
        "model": engine.model.state_dict(),
        **({"model_ema": engine.ema.module.state_dict()} if engine.ema is not None else {}),
        "optimizer": engine.optimizer.state_dict(),
        "scaler": engine.scaler.state_dict(),
        "task": engine.task.state_dict(),
        "epoch": engine.epoch,
        "engine": {
            "step": engine.step,
            "world_size": dist.world_size(),  # informative: a resume may use another
            "best": engine.best,
            "bad_epochs": engine.bad_epochs,
            "history": engine.history,
        },
        "config": engine.run_config,
        "metrics": engine.history[-1].get("test", {}) if engine.history else {},
        "env": environment(),
    }


def restore(engine: Engine) -> None:
    """Restore the run from its checkpoint.pt; reads only, so a refused resume changes nothing."""
    path = engine.run_dir / "checkpoint.pt"
    if not path.is_file():
        raise LabelenhError(f"--resume: {path} does not exist; start without --resume")
    ck = read_checkpoint(path)
    check_fields(ck, path, RESUME_FIELDS)
    check_fields(ck["engine"], path, ENGINE_FIELDS, prefix="engine.")
    diffs = config_diffs(ck.get("config", {}), engine.run_config)
    if diffs:
        raise LabelenhError(
            f"--resume: run {engine.run_dir} was started with different settings ({', '.join(diffs[:4])}); "
            "use the same flags or a new --name"
        )
    planned = (ck.get("config") or {}).get("train", {}).get("epochs")
    done = int(ck["epoch"])
    least = max(done, planned if isinstance(planned, int) else 0)
    if engine.cfg.epochs < least:
        raise LabelenhError(
            f"--resume: run {engine.run_dir} has {done} of {planned} epochs; --epochs may only grow: "
            f"pass --epochs {least} or more (got {engine.cfg.epochs}), or start a new --name"
        )
    try:
        engine.model.load_state_dict(ck["model"])
        if engine.ema is not None:
            if "model_ema" not in ck:
                raise KeyError("model_ema (the checkpoint holds no EMA weights)")
            engine.ema.module.load_state_dict(ck["model_ema"])
        engine.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            engine.scaler.load_state_dict(ck["scaler"])
        engine.task.load_state_dict(ck.get("task") or {})
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        # the fields had the right kinds, their contents do not fit this model or optimiser
        raise malformed(path, f"its state does not fit this run ({type(e).__name__}: {one_line(e, 160)})") from None
    engine.epoch = done
    eng = ck["engine"]
    engine.step = int(eng["step"])
    if int(eng.get("world_size", 1)) != dist.world_size():
        # Another number of ranks has another number of steps per epoch. Checkpoints are
        # taken at epoch ends, so the step is completed epochs x this world's steps per
        # epoch: the learning-rate schedule continues from the same epoch.
        engine.step = engine.epoch * engine.steps_per_epoch
    engine.best = dict(eng["best"])
    engine.bad_epochs = int(eng["bad_epochs"])
    engine.history = list(eng["history"])


def prepare_run_dir(engine: Engine, *, resume: bool) -> None:
    """The run folder made ready for the first epoch: created, cleared of what an earlier run
    left that is not this run's, with the run's config.json and env.json."""
    run_dir = engine.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # what a killed earlier run of this folder left half-written (never under a final name)
    remove_stale_temporaries(run_dir, RUN_FILES)
    if resume:
        write_metrics(run_dir, engine.history)  # a kill may have come between checkpoint and metrics
    else:
        # a fresh run: what an earlier, unfinished one left here is not this run's
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "log.csv").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    write_json(run_dir / "config.json", engine.run_config)
    write_json(run_dir / "env.json", environment())


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl, rewritten whole and atomically from the history (which the checkpoint
    holds): a kill never leaves a half line, and a resume never loses or repeats an epoch."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
    atomic_write(run_dir / "metrics.jsonl", lambda p: p.write_text(lines))


def write_safetensors(engine: Engine) -> None:
    """model.safetensors (and model_ema.safetensors): the trained weights under the model's
    own parameter names, which timm/torchvision users load with `safetensors.torch.load_file`
    and `model.load_state_dict` without labelenh."""
    from safetensors.torch import save_file

    meta = {k: str(engine.meta[k]) for k in ("model_name", "num_classes", "in_chans") if k in engine.meta}
    meta["epoch"] = str(engine.epoch)
    models = [("model.safetensors", engine.model)]
    if engine.ema is not None:
        models.append(("model_ema.safetensors", engine.ema.module))
    for fname, m in models:
        # contiguous copies: safetensors stores dense row-major tensors and no shared storage
        sd = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
              for k, v in m.state_dict().items()}
        atomic_write(engine.run_dir / fname, lambda p, sd=sd: save_file(sd, str(p), metadata=meta))


def summarize(engine: Engine, *, stopped_early: bool) -> dict[str, Any]:
    """summary.json: the last evaluated epoch, the best one and how it was chosen, the training
    time, the run's config and environment."""
    evaluated = [r for r in engine.history if "test" in r]
    last = evaluated[-1] if evaluated else {}
    best_epoch = engine.best.get("epoch")
    if best_epoch is not None:
        best = next(r for r in engine.history if r["epoch"] == best_epoch)
        selected_by = "val_nll"
    elif evaluated:
        # No validation split: the best epoch can only be chosen on test accuracy, which is
        # optimistic (as in the original tables); it is labelled as such.
        best = max(evaluated, key=lambda r: r["test"]["acc1"])
        selected_by = "test_acc1"
    else:
        best, selected_by = {}, None
    return {
        "name": engine.run_dir.name,
        "epochs_run": engine.epoch,
        "stopped_early": stopped_early,
        "last": {"epoch": last.get("epoch"), "test": last.get("test"), "val": last.get("val"),
                 **({"ema": last["ema"]} if "ema" in last else {})},
        "best": {"epoch": best.get("epoch"), "selected_by": selected_by, "test": best.get("test"), "val": best.get("val")},
        "train_time_s": sum(r.get("train_time_s", 0.0) for r in engine.history),
        "config": engine.run_config,
        "env": environment(),
    }


def startup_summary(engine: Engine, *, resumed: bool) -> str:
    """The block printed before the first epoch: what this run is about to do, and where."""
    from labelenh.schedules import schedule_text, schedule_warnings

    cfg = engine.cfg
    n_params = sum(p.numel() for p in engine.model.parameters())
    sched = schedule_text(cfg.schedule, cfg.epochs, cfg.milestones, cfg.gamma, cfg.warmup_epochs,
                          cfg.lr, cfg.min_lr)
    opt = (f"sgd (momentum {cfg.momentum:g}{', nesterov' if cfg.nesterov else ''})" if cfg.opt == "sgd"
           else cfg.opt)
    extras = [f"EMA decay {cfg.model_ema_decay:g}" if cfg.model_ema else "",
              "torch.compile" if cfg.compile else ""]
    amp = str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype is not None else "off"
    rows = [("model", f"{engine.meta.get('model_name', type(engine.model).__name__)}, "
                      f"{n_params:,} parameters"),
            *engine.describe,
            ("epochs", f"{cfg.epochs}" + (f" (resuming after epoch {engine.epoch})" if resumed else "")
             + f", batch {cfg.batch_size}, {engine.steps_per_epoch} steps/epoch, seed {cfg.seed}"),
            ("schedule", sched),
            *(("warning", w) for w in schedule_warnings(cfg.schedule, cfg.epochs, cfg.milestones)),
            ("optimiser", f"{opt}, weight decay {cfg.weight_decay:g}"
             + "".join(f", {e}" for e in extras if e)),
            ("device", f"{engine.device}, AMP {amp}, channels-last {'on' if engine.channels_last else 'off'}"
             + (f", {dist.world_size()} processes" if dist.world_size() > 1 else "")),
            ("run folder", str(engine.run_dir))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
