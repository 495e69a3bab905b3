"""Evaluation: a model's logits over a split, its metrics, and temperature scaling fitted on val."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from labelenh import distributed as dist
from labelenh.amp import autocast_dtype
from labelenh.metrics import classification_metrics
from labelenh.temperature import fit_temperature, scaled_metrics

if TYPE_CHECKING:
    from labelenh.engine.core import Engine


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


def evaluate_split(engine: Engine, split: str, model: nn.Module | None = None
                   ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Metrics, logits [N, K] and labels [N] of a split (of `model`, default the engine's trained
    one); under DDP every rank must call it (each runs its block of batches, the rows are gathered
    in order on every rank)."""
    batches = engine.task.eval_batches(split, shard=(dist.rank(), dist.world_size()))
    logits, labels = predict(
        engine.model if model is None else model,
        batches,
        device=engine.device,
        amp=engine.cfg.amp,
        channels_last=engine.channels_last,
        channels_last_cpu=True,  # engine.channels_last already says whether it applies here
    )
    if dist.world_size() > 1:
        logits, labels = dist.gather_rows(logits), dist.gather_rows(labels)
    return classification_metrics(logits, labels, n_bins=engine.cfg.ece_bins), logits, labels


def evaluate_splits(engine: Engine) -> dict[str, dict[str, Any]]:
    """Metrics of every evaluation split of the engine's task, their (logits, labels) kept in
    `engine.last_predictions`; with a "val" split, also each split's metrics after temperature
    scaling fitted on val (`*_ts`, `temperature`). Collective under DDP: every rank holds the
    gathered logits and fits the same T."""
    out: dict[str, dict[str, Any]] = {}
    for split in engine.task.eval_splits:
        m, logits, labels = evaluate_split(engine, split)
        engine.last_predictions[split] = (logits, labels)
        out[split] = m
    if "val" in out:
        t = fit_temperature(*engine.last_predictions["val"])
        for split, m in out.items():
            m.update(scaled_metrics(*engine.last_predictions[split], t, engine.cfg.ece_bins))
    if engine.ema is not None:  # the EMA weights, scored the same way (no temperature: one T per run)
        out["ema"] = {split: evaluate_split(engine, split, engine.ema.module)[0] for split in engine.task.eval_splits}
    return out
