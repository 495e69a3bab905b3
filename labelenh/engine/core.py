"""The training loop for teachers and students.

The engine knows nothing of datasets, views or stores: a *task* hands it batches that already
carry what the loss needs, and computes the loss. The engine owns the optimiser, the learning
rate schedule, AMP/channels-last, evaluation, checkpoints, resume and early stopping.

`Engine` reads top to bottom: fit -> epochs -> train epoch -> train step -> checkpoint. The
evaluation of splits is in `evaluation`, the run's records (checkpoint state, resume, the run
folder's files, the summary) in `records`, the progress bar and the epoch's line in `progress`.
"""

from __future__ import annotations

import math
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
from labelenh.checkpoint import save_checkpoint
from labelenh.engine.config import TrainConfig
from labelenh.engine.evaluation import evaluate_split, evaluate_splits
from labelenh.engine.optim import build_optimizer, learning_rate
from labelenh.engine.progress import Bar, print_epoch
from labelenh.engine.records import (
    checkpoint_state,
    prepare_run_dir,
    restore,
    startup_summary,
    summarize,
    write_metrics,
    write_safetensors,
)
from labelenh.errors import LabelenhError
from labelenh.loggers import STEP_TAG, RunLogger, open_loggers, parse_loggers
from labelenh.utils import derive_seed, write_json


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
        self.model = model
        self.train_model = _placed(model, device, to_channels_last=self.channels_last, compiled=cfg.compile)
        self.optimizer = build_optimizer(model, cfg)
        # after the move and the memory format: the EMA copy is made in the layout it is used in
        self.ema = _ema(model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # completed epochs
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_nll": math.inf, "epoch": None}
        self.bad_epochs = 0
        # split -> (logits, labels) of the latest evaluation, for diagrams without a re-run
        self.last_predictions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch on this rank (the task's)."""
        return int(self.task.steps_per_epoch)

    # ----------------------------------------------------------------- loop
    def fit(self, *, resume: bool = False) -> FitResult:
        """Train to the last epoch or early stopping (continuing from checkpoint.pt with
        `resume`); rank 0 writes the run folder, and at the end summary.json and the weights."""
        if resume:
            restore(self)  # before any file is touched: a refused resume leaves the run as it was
        if dist.is_main():
            prepare_run_dir(self, resume=resume)
            self.loggers = open_loggers(self.log, self.run_dir)
            print(startup_summary(self, resumed=resume), flush=True)
        try:
            stopped_early = self._epochs()
        finally:
            for lg in self.loggers:
                lg.close()
            self.loggers = []
        summary = summarize(self, stopped_early=stopped_early)
        if dist.is_main():
            write_json(self.run_dir / "summary.json", summary)
            write_safetensors(self)
        return FitResult(summary=summary, model=self.model)

    def _epochs(self) -> bool:
        """Train until the last epoch or early stopping; True when stopped early."""
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            record: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last:
                record.update(evaluate_splits(self))
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
                self._checkpoint(record, improved=improved)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
            if cfg.patience and "val" in record and self.bad_epochs >= cfg.patience:
                return True
        return False

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the task's batches of `epoch`: the epoch's averaged loss terms, train
        accuracy, time and last learning rate (summed over ranks)."""
        model, cfg = self.train_model, self.cfg
        model.train()
        # Dropout and any other in-model randomness draw from the global generator: reseed it per
        # epoch from (seed, epoch) so a resumed run replays the uninterrupted one exactly.
        torch.manual_seed(derive_seed(cfg.seed, "epoch-global", epoch))
        batches = self.task.train_batches(epoch)
        steps = self.steps_per_epoch
        sums: dict[str, float] = {}
        n_seen, n_correct = 0, 0
        t0 = time.perf_counter()
        bar = Bar(self.progress, f"epoch {epoch + 1}/{cfg.epochs}", steps)
        for step_in_epoch, batch in enumerate(batches):
            batch.epoch, batch.step = epoch, step_in_epoch
            logits, terms, loss = self._train_step(model, batch, epoch, steps)
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

    def _train_step(self, model: nn.Module, batch: Batch, epoch: int, steps: int
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimiser step on `batch` at the schedule's learning rate: (logits, loss terms, loss)."""
        lr = learning_rate(self.cfg, self.step, steps)
        for g in self.optimizer.param_groups:
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
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not fp16-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            # timm's rule: the global step sets the decay (the first update copies the weights)
            self.ema.update(self.model, step=self.step)
        return logits, terms, loss

    def _checkpoint(self, record: dict[str, Any], *, improved: bool) -> None:
        """Rank 0 at an epoch's end: best.pt (when val improved) and checkpoint.pt, metrics.jsonl,
        the loggers' epoch, the printed line."""
        state = checkpoint_state(self)
        # best.pt first: a kill between the two leaves checkpoint.pt an epoch behind, and
        # the resumed run redoes that epoch exactly (rewriting best.pt). The other order
        # could leave a best.pt older than the epoch the run records as its best.
        if improved:
            save_checkpoint(self.run_dir / "best.pt", state)
        save_checkpoint(self.run_dir / "checkpoint.pt", state)
        write_metrics(self.run_dir, self.history)
        for lg in self.loggers:
            lg.epoch(record)
        print_epoch(record)

    def final_predictions(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the model as it is now: the last epoch's evaluation when fit()
        ran one (collective under DDP), else a fresh one."""
        if split in self.last_predictions and self.history and split in self.history[-1]:
            return self.last_predictions[split]
        _, logits, labels = evaluate_split(self, split)
        return logits, labels

def _placed(model: nn.Module, device: torch.device, *, to_channels_last: bool, compiled: bool) -> nn.Module:
    """Moves `model` to `device` (channels-last when used) and returns the module that trains
    it: DDP-wrapped under several ranks, compiled with `compiled`."""
    model.to(device)
    if to_channels_last:
        model.to(memory_format=torch.channels_last)  # 4-d weights only; others stay as they are
    train_model = dist.wrap_ddp(model, device)
    if compiled:
        # the wrapper shares the model's parameters: checkpoints still save `model`'s plain names
        train_model = torch.compile(train_model)
    return train_model


def _ema(model: nn.Module, cfg: TrainConfig) -> Any:
    """timm's ModelEmaV3 of `model` when `cfg.model_ema`, else None."""
    if not cfg.model_ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.model_ema_decay)
