"""The training loop for teachers and students.

The engine knows nothing of datasets, views or stores: a *task* hands it batches that already
carry what the loss needs, and computes the loss. The engine owns the optimiser, the learning
rate schedule, AMP/channels-last, evaluation, checkpoints, resume and early stopping.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from labelenh import bounds as B
from labelenh import distributed as dist
from labelenh.amp import autocast_dtype
from labelenh.checkpoint import (
    ENGINE_FIELDS,
    RESUME_FIELDS,
    check_fields,
    malformed,
    read_checkpoint,
    save_checkpoint,
)
from labelenh.engine.config import LEGACY_TRAIN, TrainConfig
from labelenh.engine.optim import build_optimizer, learning_rate
from labelenh.engine.runs import RUN_FILES
from labelenh.errors import LabelenhError, one_line
from labelenh.loggers import STEP_TAG, RunLogger, open_loggers, parse_loggers
from labelenh.metrics import classification_metrics
from labelenh.temperature import fit_temperature, scaled_metrics
from labelenh.utils import (
    atomic_write,
    derive_seed,
    environment,
    remove_stale_temporaries,
    write_json,
)


@dataclass
class Batch:
    x: torch.Tensor  # [B, C, H, W] normalised input on the training device
    labels: torch.Tensor  # [B] the samples' own hard labels (for train accuracy)
    inputs: Any = None  # whatever the task's loss needs (targets, stored logits, ...)
    # set by the engine before `task.loss`: methods with warm-ups read where training is
    epoch: int = 0  # from 0
    step: int = 0  # within the epoch

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Task(Protocol):
    """Everything the engine asks of a stage (teacher, student)."""

    eval_splits: tuple[str, ...]  # e.g. ("val", "test"); "val" drives early stopping
    steps_per_epoch: int  # optimiser steps per epoch on this rank (the schedule and the bar)

    def train_batches(self, epoch: int) -> Iterable[Batch]: ...

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits [B, K], named loss terms whose sum is minimised)."""
        ...

    def eval_batches(self, split: str, shard: tuple[int, int] = (0, 1)
                     ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Clean (x, y) batches of a split; `shard` = (rank, world) is that rank's contiguous
        block of the unchanged batches (see `ImagePipeline.eval_batches`)."""
        ...

    def epoch_end(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@torch.inference_mode()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    amp: str = "auto",
    channels_last: bool = True,
    channels_last_cpu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels over an evaluation split, model in eval mode.
    `channels_last` applies on CUDA, and on CPU too with `channels_last_cpu` (the engine's choice)."""
    was_training = model.training
    model.eval()
    dtype = autocast_dtype(amp, device)
    outs, labels = [], []  # may stay empty: a rank's share of a small split
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        if channels_last and (device.type == "cuda" or channels_last_cpu) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z = model(x)
        outs.append(z.float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(outs), torch.cat(labels)


@dataclass
class FitResult:
    summary: dict[str, Any]
    model: nn.Module


class Engine:
    """Trains `model` on `task` into `run_dir` (checkpoint.pt each epoch, best.pt, metrics.jsonl,
    summary.json). Only rank 0 writes files."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        cfg: TrainConfig,
        run_dir: str | Path,
        *,
        device: torch.device,
        run_config: dict[str, Any],
        checkpoint_meta: dict[str, Any],
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        progress: bool = True,
        log: tuple[str, ...] = (),
        log_every: int = 50,
        describe: list[tuple[str, str]] | None = None,
    ) -> None:
        self.cfg = cfg.validate()
        self.describe = list(describe or [])  # the stage's lines of the start-up summary
        self.task = task
        self.run_dir = Path(run_dir)
        self.device = device
        self.run_config = run_config
        self.meta = checkpoint_meta  # model_name, num_classes, in_chans, dataset info
        self.on_epoch_end = on_epoch_end
        self.log = parse_loggers(log)  # unknown names and missing packages fail before training
        B.LOG_EVERY.check(log_every, "--log-every")
        self.log_every = log_every
        self.loggers: list[RunLogger] = []  # opened by fit() on rank 0
        self.progress = progress and sys.stderr.isatty() and dist.is_main()
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.channels_last = cfg.channels_last and (device.type == "cuda" or bool(cfg.channels_last_cpu))
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-d weights only; others stay as they are
        self.model = model
        self.train_model = dist.wrap_ddp(model, device)
        if cfg.compile:
            # the wrapper shares the model's parameters: checkpoints still save `model`'s plain names
            self.train_model = torch.compile(self.train_model)
        self.optimizer = build_optimizer(model, cfg)
        self.ema = None
        if cfg.model_ema:
            from timm.utils import ModelEmaV3

            # after the move and the memory format: the copy is made in the layout it is used in
            self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # completed epochs
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_nll": math.inf, "epoch": None}
        self.bad_epochs = 0
        # split -> (logits, labels) of the latest evaluation, for diagrams without a re-run
        self.last_predictions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            **self.meta,
            "model": self.model.state_dict(),
            **({"model_ema": self.ema.module.state_dict()} if self.ema is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "task": self.task.state_dict(),
            "epoch": self.epoch,
            "engine": {
                "step": self.step,
                "world_size": dist.world_size(),  # informative: a resume may use another
                "best": self.best,
                "bad_epochs": self.bad_epochs,
                "history": self.history,
            },
            "config": self.run_config,
            "metrics": self.history[-1].get("test", {}) if self.history else {},
            "env": environment(),
        }

    def resume(self) -> None:
        """Restore the run from its checkpoint.pt; reads only, so a refused resume changes nothing."""
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            raise LabelenhError(f"--resume: {path} does not exist; start without --resume")
        ck = read_checkpoint(path)
        check_fields(ck, path, RESUME_FIELDS)
        check_fields(ck["engine"], path, ENGINE_FIELDS, prefix="engine.")
        diffs = _config_diffs(ck.get("config", {}), self.run_config)
        if diffs:
            raise LabelenhError(
                f"--resume: run {self.run_dir} was started with different settings ({', '.join(diffs[:4])}); "
                "use the same flags or a new --name"
            )
        planned = (ck.get("config") or {}).get("train", {}).get("epochs")
        done = int(ck["epoch"])
        least = max(done, planned if isinstance(planned, int) else 0)
        if self.cfg.epochs < least:
            raise LabelenhError(
                f"--resume: run {self.run_dir} has {done} of {planned} epochs; --epochs may only grow: "
                f"pass --epochs {least} or more (got {self.cfg.epochs}), or start a new --name"
            )
        try:
            self.model.load_state_dict(ck["model"])
            if self.ema is not None:
                if "model_ema" not in ck:
                    raise KeyError("model_ema (the checkpoint holds no EMA weights)")
                self.ema.module.load_state_dict(ck["model_ema"])
            self.optimizer.load_state_dict(ck["optimizer"])
            if ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            self.task.load_state_dict(ck.get("task") or {})
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            # the fields had the right kinds, their contents do not fit this model or optimiser
            raise malformed(path, f"its state does not fit this run ({type(e).__name__}: {one_line(e, 160)})") from None
        self.epoch = done
        eng = ck["engine"]
        self.step = int(eng["step"])
        if int(eng.get("world_size", 1)) != dist.world_size():
            # Another number of ranks has another number of steps per epoch. Checkpoints are
            # taken at epoch ends, so the step is completed epochs x this world's steps per
            # epoch: the learning-rate schedule continues from the same epoch.
            self.step = self.epoch * self.steps_per_epoch
        self.best = dict(eng["best"])
        self.bad_epochs = int(eng["bad_epochs"])
        self.history = list(eng["history"])

    # ----------------------------------------------------------------- loop
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        model, opt, cfg = self.train_model, self.optimizer, self.cfg
        model.train()
        # Dropout and any other in-model randomness draw from the global generator: reseed it per
        # epoch from (seed, epoch) so a resumed run replays the uninterrupted one exactly.
        torch.manual_seed(derive_seed(cfg.seed, "epoch-global", epoch))
        batches = self.task.train_batches(epoch)
        steps = self.steps_per_epoch
        sums: dict[str, float] = {}
        n_seen, n_correct = 0, 0
        t0 = time.perf_counter()
        bar = _Bar(self.progress, f"epoch {epoch + 1}/{cfg.epochs}", steps)
        for step_in_epoch, batch in enumerate(batches):
            batch.epoch, batch.step = epoch, step_in_epoch
            lr = learning_rate(cfg, self.step, steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x = batch.x
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
                batch.x = x
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits, terms = self.task.loss(model, batch)
                loss = sum(terms.values())
            if not torch.isfinite(loss.detach()):
                raise LabelenhError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {self.step + 1}: "
                    "lower --lr, check the method's parameters, "
                    "or use --amp bf16/off instead of fp16"
                )
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            self.step += 1
            if self.ema is not None:
                # timm's rule: the global step sets the decay (the first update copies the weights)
                self.ema.update(self.model, step=self.step)
            b = len(batch)
            n_seen += b
            n_correct += int((logits.detach().argmax(1) == batch.labels).sum())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * b
            bar.advance(loss=float(loss.detach()))
            if self.loggers and self.step % self.log_every == 0:
                for lg in self.loggers:
                    lg.step(STEP_TAG, float(loss.detach()), self.step)
        bar.close()
        dist.average_buffers(self.model)  # BatchNorm statistics: one model on every rank
        self.task.epoch_end(epoch)
        totals = dist.all_reduce_sum([n_seen, n_correct, *sums.values()])
        n_seen, n_correct = int(totals[0]), int(totals[1])
        out = {f"train_{k}": v / max(n_seen, 1) for k, v in zip(sums.keys(), totals[2:], strict=True)}
        out["train_acc"] = n_correct / max(n_seen, 1)
        out["train_time_s"] = time.perf_counter() - t0
        out["lr"] = learning_rate(cfg, max(self.step - 1, 0), steps)
        return out

    def final_predictions(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the model as it is now: the last epoch's evaluation when fit()
        ran one (collective under DDP), else a fresh one."""
        if split in self.last_predictions and self.history and split in self.history[-1]:
            return self.last_predictions[split]
        _, logits, labels = self.evaluate(split)
        return logits, labels

    def evaluate(self, split: str, model: nn.Module | None = None) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Metrics, logits [N, K] and labels [N] of a split (of `model`, default the trained one);
        under DDP every rank must call it (each runs its block of batches, the rows are gathered
        in order on every rank)."""
        batches = self.task.eval_batches(split, shard=(dist.rank(), dist.world_size()))
        logits, labels = predict(
            self.model if model is None else model,
            batches,
            device=self.device,
            amp=self.cfg.amp,
            channels_last=self.channels_last,
            channels_last_cpu=True,  # self.channels_last already says whether it applies here
        )
        if dist.world_size() > 1:
            logits, labels = dist.gather_rows(logits), dist.gather_rows(labels)
        return classification_metrics(logits, labels, n_bins=self.cfg.ece_bins), logits, labels

    def evaluate_splits(self) -> dict[str, dict[str, Any]]:
        """Metrics of every evaluation split; with a "val" split, also each split's metrics
        after temperature scaling fitted on val (`*_ts`, `temperature`). Collective under DDP:
        every rank holds the gathered logits and fits the same T."""
        out: dict[str, dict[str, Any]] = {}
        for split in self.task.eval_splits:
            m, logits, labels = self.evaluate(split)
            self.last_predictions[split] = (logits, labels)
            out[split] = m
        if "val" in out:
            t = fit_temperature(*self.last_predictions["val"])
            for split, m in out.items():
                m.update(scaled_metrics(*self.last_predictions[split], t, self.cfg.ece_bins))
        if self.ema is not None:  # the EMA weights, scored the same way (no temperature: one T per run)
            out["ema"] = {split: self.evaluate(split, self.ema.module)[0] for split in self.task.eval_splits}
        return out

    @property
    def steps_per_epoch(self) -> int:
        return int(self.task.steps_per_epoch)

    def fit(self, *, resume: bool = False) -> FitResult:
        if resume:
            self.resume()  # before any file is touched: a refused resume leaves the run as it was
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # what a killed earlier run of this folder left half-written (never under a final name)
            remove_stale_temporaries(self.run_dir, RUN_FILES)
            if resume:
                self._write_metrics()  # a kill may have come between checkpoint and metrics
            else:
                # a fresh run: what an earlier, unfinished one left here is not this run's
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
                (self.run_dir / "log.csv").unlink(missing_ok=True)
                shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        if dist.is_main():
            write_json(self.run_dir / "config.json", self.run_config)
            write_json(self.run_dir / "env.json", environment())
            self.loggers = open_loggers(self.log, self.run_dir)
            print(self.startup_summary(resumed=resume), flush=True)
        try:
            stopped_early = self._epochs()
        finally:
            for lg in self.loggers:
                lg.close()
            self.loggers = []
        summary = self.summarize(stopped_early=stopped_early)
        if dist.is_main():
            write_json(self.run_dir / "summary.json", summary)
            self._write_safetensors()
        return FitResult(summary=summary, model=self.model)

    def _write_safetensors(self) -> None:
        """model.safetensors (and model_ema.safetensors): the trained weights under the model's
        own parameter names, which timm/torchvision users load with `safetensors.torch.load_file`
        and `model.load_state_dict` without labelenh."""
        from safetensors.torch import save_file

        meta = {k: str(self.meta[k]) for k in ("model_name", "num_classes", "in_chans") if k in self.meta}
        meta["epoch"] = str(self.epoch)
        models = [("model.safetensors", self.model)]
        if self.ema is not None:
            models.append(("model_ema.safetensors", self.ema.module))
        for fname, m in models:
            # contiguous copies: safetensors stores dense row-major tensors and no shared storage
            sd = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                  for k, v in m.state_dict().items()}
            atomic_write(self.run_dir / fname, lambda p, sd=sd: save_file(sd, str(p), metadata=meta))

    def startup_summary(self, *, resumed: bool) -> str:
        """The block printed before the first epoch: what this run is about to do, and where."""
        from labelenh.schedules import schedule_text, schedule_warnings

        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        sched = schedule_text(cfg.schedule, cfg.epochs, cfg.milestones, cfg.gamma, cfg.warmup_epochs,
                              cfg.lr, cfg.min_lr)
        opt = (f"sgd (momentum {cfg.momentum:g}{', nesterov' if cfg.nesterov else ''})" if cfg.opt == "sgd"
               else cfg.opt)
        extras = [f"EMA decay {cfg.model_ema_decay:g}" if cfg.model_ema else "",
                  "torch.compile" if cfg.compile else ""]
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "off"
        rows = [("model", f"{self.meta.get('model_name', type(self.model).__name__)}, "
                          f"{n_params:,} parameters"),
                *self.describe,
                ("epochs", f"{cfg.epochs}" + (f" (resuming after epoch {self.epoch})" if resumed else "")
                 + f", batch {cfg.batch_size}, {self.steps_per_epoch} steps/epoch, seed {cfg.seed}"),
                ("schedule", sched),
                *(("warning", w) for w in schedule_warnings(cfg.schedule, cfg.epochs, cfg.milestones)),
                ("optimiser", f"{opt}, weight decay {cfg.weight_decay:g}"
                 + "".join(f", {e}" for e in extras if e)),
                ("device", f"{self.device}, AMP {amp}, channels-last {'on' if self.channels_last else 'off'}"
                 + (f", {dist.world_size()} processes" if dist.world_size() > 1 else "")),
                ("run folder", str(self.run_dir))]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _epochs(self) -> bool:
        """Train until the last epoch or early stopping; True when stopped early."""
        cfg = self.cfg
        stopped_early = False
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            record: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last:
                record.update(self.evaluate_splits())
            self.epoch = epoch + 1
            improved = False
            if "val" in record:
                if record["val"]["nll"] < self.best["val_nll"]:
                    self.best = {"val_nll": record["val"]["nll"], "epoch": epoch + 1}
                    self.bad_epochs = 0
                    improved = True
                else:
                    self.bad_epochs += 1
            self.history.append(record)
            if dist.is_main():
                state = self._state()
                # best.pt first: a kill between the two leaves checkpoint.pt an epoch behind, and
                # the resumed run redoes that epoch exactly (rewriting best.pt). The other order
                # could leave a best.pt older than the epoch the run records as its best.
                if improved:
                    save_checkpoint(self.run_dir / "best.pt", state)
                save_checkpoint(self.run_dir / "checkpoint.pt", state)
                self._write_metrics()
                for lg in self.loggers:
                    lg.epoch(record)
                _print_epoch(record)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
            if cfg.patience and "val" in record and self.bad_epochs >= cfg.patience:
                stopped_early = True
                break
        return stopped_early

    def _write_metrics(self) -> None:
        """metrics.jsonl, rewritten whole and atomically from the history (which the checkpoint
        holds): a kill never leaves a half line, and a resume never loses or repeats an epoch."""
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lambda p: p.write_text(lines))

    def summarize(self, *, stopped_early: bool) -> dict[str, Any]:
        evaluated = [r for r in self.history if "test" in r]
        last = evaluated[-1] if evaluated else {}
        best_epoch = self.best.get("epoch")
        if best_epoch is not None:
            best = next(r for r in self.history if r["epoch"] == best_epoch)
            selected_by = "val_nll"
        elif evaluated:
            # No validation split: the best epoch can only be chosen on test accuracy, which is
            # optimistic (as in the original tables); it is labelled as such.
            best = max(evaluated, key=lambda r: r["test"]["acc1"])
            selected_by = "test_acc1"
        else:
            best, selected_by = {}, None
        return {
            "name": self.run_dir.name,
            "epochs_run": self.epoch,
            "stopped_early": stopped_early,
            "last": {"epoch": last.get("epoch"), "test": last.get("test"), "val": last.get("val"),
                     **({"ema": last["ema"]} if "ema" in last else {})},
            "best": {"epoch": best.get("epoch"), "selected_by": selected_by, "test": best.get("test"), "val": best.get("val")},
            "train_time_s": sum(r.get("train_time_s", 0.0) for r in self.history),
            "config": self.run_config,
            "env": environment(),
        }


# Settings a resumed run may change: more epochs (the schedule is recomputed from them).
RESUMABLE_KEYS = {"epochs"}


# Top-level run settings added later, with the value that reproduces the runs made before them.
LEGACY_RUN = {"reset_head": False}


def _config_diffs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    legacy = LEGACY_TRAIN if prefix == "train." else LEGACY_RUN if prefix == "" else {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if k in RESUMABLE_KEYS:
            continue
        if k not in old and k in legacy and b == legacy[k]:
            continue  # recorded before the setting existed, and the run keeps the old behaviour
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diffs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


class _Bar:
    """A rich progress bar on a terminal; silent otherwise (logs stay clean in files and CI)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), transient=True,
            )
            self.p.start()
            self.t = self.p.add_task(label, total=total, loss=float("nan"))

    def advance(self, **fields: float) -> None:
        if self.p is not None:
            self.p.update(self.t, advance=1, **fields)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


def _print_epoch(r: dict[str, Any]) -> None:
    parts = [f"epoch {r['epoch']:>3}", f"loss {r['train_loss']:.4f}", f"train acc {r['train_acc']:.4f}"]
    for split in ("val", "test"):
        if split in r:
            m = r[split]
            ts = f" (ts {m['ece_ts']:.4f})" if "ece_ts" in m else ""
            parts.append(f"{split} acc {m['acc1']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f}{ts}")
    if "ema" in r and "test" in r["ema"]:
        parts.append(f"ema test acc {r['ema']['test']['acc1']:.4f}")
    parts.append(f"{r['train_time_s']:.1f}s")
    print(" | ".join(parts), file=sys.stderr, flush=True)
