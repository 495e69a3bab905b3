"""The training settings (`TrainConfig`), their checks, and what runs recorded before a setting
existed trained with."""

from __future__ import annotations

import functools
from dataclasses import MISSING, dataclass
from typing import Any

from labelenh import bounds as B
from labelenh.amp import AMP_MODES
from labelenh.errors import LabelenhError
from labelenh.metrics import DEFAULT_BINS
from labelenh.options import check_values, flag, legacy_values, option

SCHEDULES = ("multistep", "cosine", "constant")


H_OPT = "Optimisation"


def _opt(default: Any = MISSING, **kw: Any) -> Any:
    return option(default, panel=H_OPT, **kw)


@dataclass
class TrainConfig:
    """How a model trains. Each field declares its flag (labelenh.options): `labelenh teach` and
    `student` take them all, recipes and run records hold them by field name."""

    epochs: int = _opt(240, bound=B.EPOCHS, show_default="240 (--schedule default)",
                       help="Training epochs, in {range}; the preset's or recipe's milestones and warm-up "
                            "scale with it unless given.")
    batch_size: int = _opt(64, bound=B.BATCH_SIZE, help="Batch size (per process under torchrun), in {range}.")
    lr: float = _opt(0.05, bound=B.LR, help="Peak learning rate, in {range}.")
    momentum: float = _opt(0.9, bound=B.MOMENTUM,
                           help="Momentum of sgd (and of timm optimisers that have one), in {range}.")
    nesterov: bool = _opt(False, help="Nesterov momentum (--opt sgd).")
    weight_decay: float = _opt(5e-4, bound=B.WEIGHT_DECAY, help="Weight decay, in {range}.")
    schedule: str = _opt("multistep", choices=SCHEDULES, show_default="multistep (the default preset)",
                         help="multistep | cosine | constant, or a preset: default (240 ep, 150/180/210), long "
                              "(350 ep, 150/200/250/300), imagenet (100 ep, 30/60/90).")
    milestones: list[int] = _opt(factory=lambda: [150, 180, 210], bound=B.EPOCHS, cli_type=str,
                                 show_default="150,180,210 of 240 epochs, scaled to --epochs",
                                 help="Comma-separated epochs for multistep decay, e.g. 150,180,210; without it "
                                      "the preset's scale with --epochs.")
    gamma: float = _opt(0.1, bound=B.GAMMA, help="Multistep decay factor, in {range}.")
    warmup_epochs: int = _opt(0, bound=B.WARMUP_EPOCHS,
                              help="Linear warm-up epochs, in [0, epochs); a recipe's scales with --epochs "
                                   "unless given.")
    min_lr: float = _opt(0.0, bound=B.WEIGHT_DECAY, cli=False, help="The cosine schedule's final rate, in [0, lr].")
    patience: int = _opt(0, bound=B.PATIENCE,
                         help="Early stopping on validation NLL after this many epochs without improvement "
                              "(needs --val-split); 0 = off; in {range}.")
    seed: int = _opt(0, bound=B.SEED, help="Seed of initialisation, data order and augmentation, in {range}.")
    # CUDA only: bf16 where supported, else fp16
    amp: str = _opt("auto", choices=AMP_MODES, help="auto | off | bf16 | fp16 (CUDA only).")
    # NHWC activations: faster convolutions on CUDA and on CPU (BENCHMARKS.md); the flag also sets
    # channels_last_cpu (cli.common.resolve)
    channels_last: bool = _opt(True, show_default="on CUDA; on CPU for labelenh's own models",
                               help="Channels-last (NHWC) memory format: faster convolutions on CUDA, and on CPU "
                                    "for the CIFAR ResNets (not for timm:resnet18 at 32x32, BENCHMARKS.md); "
                                    "--channels-last forces it on CPU too. A resumed run keeps what it recorded.")
    ece_bins: int = _opt(DEFAULT_BINS, bound=B.ECE_BINS,
                         help="Bins of ECE, adaptive ECE, class-wise ECE, RMS CE and MCE, in {range}.")
    eval_batch_size: int = _opt(500, bound=B.BATCH_SIZE, cli=False, help="Images per evaluation forward.")
    eval_every: int = _opt(1, bound=B.EPOCHS, cli=False, help="Epochs between evaluations.")
    # "sgd" is torch's SGD with --momentum and --nesterov and decays every parameter, as the
    # original CIFAR recipes did
    opt: str = _opt("sgd", legacy="sgd", help="Optimiser, any of timm.optim.list_optimizers(): sgd (torch SGD with --momentum/"
                                "--nesterov, decay on every parameter, as the original recipes), adamw, lamb, "
                                "lion, ... (timm's, no decay on biases and norms).")
    model_ema: bool = _opt(False, legacy=False, help="Keep an exponential moving average of the weights (timm's ModelEmaV3), "
                                       "evaluated each epoch (`ema` in metrics.jsonl) and checkpointed.")
    model_ema_decay: float = _opt(0.9998, legacy=0.9998, bound=B.EMA_DECAY,  # timm's train.py default
                                  help="EMA decay per step, in {range}.")
    grad_clip: float = _opt(0.0, legacy=0.0, bound=B.GRAD_CLIP,
                            help="Clip the gradients' global L2 norm to this value before each step (after "
                                 "AMP unscaling, as timm's --clip-grad); 0 = off; in {range}.")
    compile: bool = _opt(False, legacy=False, help="torch.compile the training model (a compile at start; faster steps on GPUs).")
    # channels_last on CPU as well: None = where it was measured faster (`cpu_channels_last`); runs
    # recorded before it applied on CPU (no such key) keep it off there
    channels_last_cpu: bool | None = _opt(None, legacy=False, cli=False, help="Channels-last on CPU as well.")

    def validate(self) -> TrainConfig:
        """Every setting in its declared range before anything is allocated, then the rules
        that tie settings together."""
        check_values(TrainConfig, self.__dict__)
        f = functools.partial(flag, TrainConfig)
        if self.min_lr > self.lr:
            raise LabelenhError(f"min_lr must be in [0, lr], got {self.min_lr!r}")
        if self.nesterov and self.momentum == 0:
            raise LabelenhError(f"{f('nesterov')} needs {f('momentum')} > 0")
        if list(self.milestones) != sorted(self.milestones):
            raise LabelenhError(f"{f('milestones')} must be increasing epochs in {B.EPOCHS.text()}, "
                                f"got {self.milestones}")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise LabelenhError(f"{f('warmup_epochs')} must be in [0, epochs), got {self.warmup_epochs} with "
                                f"{self.epochs} epochs")
        check_optimizer(self.opt)
        if self.nesterov and self.opt != "sgd":
            raise LabelenhError(f"{f('nesterov')} applies to {f('opt')} sgd; {self.opt!r} has its own update rule")
        return self


# What each setting was before it existed (its declared `legacy`): a run recorded without the key
# trained this way, so a resume of it takes this value, and an absent key equal to it is no change
# of settings.
LEGACY_TRAIN = legacy_values(TrainConfig)


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
