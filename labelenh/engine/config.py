"""The training settings (`TrainConfig`), their checks, and what runs recorded before a setting
existed trained with."""

from __future__ import annotations

from dataclasses import dataclass, field

from labelenh import bounds as B
from labelenh.amp import AMP_MODES
from labelenh.errors import LabelenhError
from labelenh.metrics import DEFAULT_BINS

SCHEDULES = ("multistep", "cosine", "constant")


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    min_lr: float = 0.0
    patience: int = 0  # early stopping on validation NLL; 0 = off
    seed: int = 0
    amp: str = "auto"  # CUDA only: bf16 where supported, else fp16
    channels_last: bool = True  # NHWC activations: faster convolutions on CUDA and on CPU (BENCHMARKS.md)
    ece_bins: int = DEFAULT_BINS
    eval_batch_size: int = 500
    eval_every: int = 1
    # timm optimiser name (timm.optim.list_optimizers()); "sgd" is torch's SGD with --momentum and
    # --nesterov and decays every parameter, as the original CIFAR recipes did
    opt: str = "sgd"
    model_ema: bool = False  # keep, evaluate and checkpoint an EMA of the weights (timm's ModelEmaV3)
    model_ema_decay: float = 0.9998  # timm's train.py default
    compile: bool = False  # torch.compile the training model (costs a compile at start)
    # channels_last on CPU as well: None = where it was measured faster (`cpu_channels_last`); runs
    # recorded before it applied on CPU (no such key) keep it off there
    channels_last_cpu: bool | None = None

    def validate(self) -> TrainConfig:
        """Every setting in its documented range (labelenh.bounds) before anything is allocated."""
        B.EPOCHS.check(self.epochs, "--epochs")
        B.BATCH_SIZE.check(self.batch_size, "--batch-size")
        B.BATCH_SIZE.check(self.eval_batch_size, "eval_batch_size")
        B.LR.check(self.lr, "--lr")
        B.WEIGHT_DECAY.check(self.weight_decay, "--weight-decay")
        B.SEED.check(self.seed, "--seed")
        B.PATIENCE.check(self.patience, "--patience")
        B.ECE_BINS.check(self.ece_bins, "--ece-bins")
        B.EPOCHS.check(self.eval_every, "eval_every")
        if not (B.WEIGHT_DECAY.contains(self.min_lr) and self.min_lr <= self.lr):
            raise LabelenhError(f"min_lr must be in [0, lr], got {self.min_lr!r}")
        if not 0 <= self.momentum < 1:
            raise LabelenhError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise LabelenhError("--nesterov needs --momentum > 0")
        if self.schedule not in SCHEDULES:
            raise LabelenhError(f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0 < self.gamma <= 1:
            raise LabelenhError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not all(B.EPOCHS.contains(m) for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise LabelenhError(f"--milestones must be increasing epochs in {B.EPOCHS.text()}, got {self.milestones}")
        if not 0 <= self.warmup_epochs < max(self.epochs, 1) + (1 if self.warmup_epochs == 0 else 0):
            raise LabelenhError(
                f"--warmup-epochs must be in [0, epochs), got {self.warmup_epochs} with {self.epochs} epochs"
            )
        if self.amp not in AMP_MODES:
            raise LabelenhError(f"--amp {self.amp!r} is not one of {', '.join(AMP_MODES)}")
        check_optimizer(self.opt)
        if self.nesterov and self.opt != "sgd":
            raise LabelenhError(f"--nesterov applies to --opt sgd; {self.opt!r} has its own update rule")
        B.EMA_DECAY.check(self.model_ema_decay, "--model-ema-decay")
        return self


# What each setting was before it existed: a run recorded without the key trained this way, so a
# resume of it takes this value, and an absent key equal to it is no change of settings.
LEGACY_TRAIN = {"opt": "sgd", "model_ema": False, "model_ema_decay": 0.9998, "compile": False,
                "channels_last_cpu": False}

def cpu_channels_last(model_name: str) -> bool:
    """Whether channels-last speeds up this model's training steps on CPU. Measured side by side
    (scripts/bench_train.py, BENCHMARKS.md): the CIFAR ResNets gain 1.2-1.5x, timm:resnet18 at
    32x32 loses (0.93x); so on CPU it is on for labelenh's own models, off for timm:/torchvision:."""
    return ":" not in model_name


def with_memory_format(cfg: TrainConfig, model_name: str) -> TrainConfig:
    """`cfg` with channels_last_cpu decided for `model_name` when it was left to the default."""
    from dataclasses import replace

    if cfg.channels_last_cpu is not None:
        return cfg
    return replace(cfg, channels_last_cpu=cpu_channels_last(model_name))


def check_optimizer(name: str) -> str:
    """`name` if timm can build it; one line listing a few close names otherwise."""
    import difflib

    from timm.optim import list_optimizers

    known = list_optimizers()
    if not isinstance(name, str) or name.lower() not in known:
        close = difflib.get_close_matches(str(name).lower(), known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LabelenhError(f"--opt {name!r} is not an optimiser timm knows{hint}; e.g. sgd, adamw, lamb, "
                            "lion (all: timm.optim.list_optimizers())")
    return name.lower()
