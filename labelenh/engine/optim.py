"""The optimiser (through timm) and the learning rate at each step."""

from __future__ import annotations

import math

import torch
from torch import nn

from labelenh.engine.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser through timm's factory. `sgd` keeps the original recipes' rule (weight decay on
    every parameter, BatchNorm included, for comparability with the papers); every other optimiser
    follows timm and exempts biases and normalisation weights from decay."""
    from timm.optim import create_optimizer_v2

    if cfg.opt == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        # timm's "sgd" is nesterov SGD and "momentum" plain momentum SGD: both torch.optim.SGD
        return create_optimizer_v2(params, opt="sgd" if cfg.nesterov else "momentum", lr=cfg.lr,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=True)


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step (per-step linear warm-up, then the schedule by epoch/step)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    epoch = step // steps_per_epoch
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch
        t = (step - warm) / max(1, total - warm)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr
