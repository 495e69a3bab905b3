"""Stage one, part one: train a teacher (or load one) and evaluate it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh import bounds as B
from labelenh import distributed as dist
from labelenh.checkpoint import (
    is_labelenh_checkpoint,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    state_dict_of,
)
from labelenh.data.settings import DataSettings  # noqa: F401 - recorded runs and callers import it from here
from labelenh.devices import resolve_device
from labelenh.engine import Batch, Engine, TrainConfig, check_run_name, predict, with_memory_format
from labelenh.errors import LabelenhError
from labelenh.files import write_json
from labelenh.losses import soft_cross_entropy
from labelenh.metrics import classification_metrics
from labelenh.models import build_model
from labelenh.pipeline import ImagePipeline
from labelenh.plots import write_reliability as _write_reliability
from labelenh.provenance import environment
from labelenh.rng import derive_seed
from labelenh.runrecord import (  # noqa: F401 - callers of earlier versions import them from here
    HOW_KEYS,
    dataset_record,
    default_run_name,
    describe_data,
    recorded_data,
    recorded_train,
)
from labelenh.temperature import fit_temperature, scaled_metrics
from labelenh.views import ViewSpec


@dataclass
class TeachSettings:
    model: str = "resnet20"
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    aug: dict[str, Any] = field(default_factory=lambda: ViewSpec().to_dict())  # crop/flip
    weights: str | None = None  # initialise from a local file (e.g. ImageNet weights for timm models)
    reset_head: bool = False  # keep a fresh classifier where the weights' has another shape
    name: str | None = None
    runs_dir: str = "runs"
    device: str = "auto"
    workers: int | None = None  # loader processes for image folders (None: the CPU count); not a result setting
    log: tuple[str, ...] = ()  # extra loggers (labelenh.loggers); not part of the run's config
    log_every: int = 50  # optimiser steps between logged training losses
    # train settings derived from --epochs (key -> what was done); a resume keeps the recorded ones
    scaled: dict[str, str] = field(default_factory=dict)

    def run_config(self) -> dict[str, Any]:
        return {"stage": "teach", "model": self.model, "data": asdict(self.data),
                "train": asdict(self.train), "aug": self.aug, "weights": self.weights,
                "reset_head": self.reset_head}


class TeacherTask:
    """Plain supervised training on (optionally mixed) views; the target is the dense hard-label
    weights the view recipe produced, so one soft cross-entropy serves every augmentation."""

    def __init__(self, pipe: ImagePipeline, spec: ViewSpec, seed: int, epochs: int) -> None:
        self.pipe, self.spec, self.epochs = pipe, spec, epochs
        self.view_seed = derive_seed(seed, "teacher-views")
        self.eval_splits = pipe.eval_splits()
        self.steps_per_epoch = pipe.steps_per_epoch()
        # The epoch number is the view id: each epoch sees a fresh, replayable view per sample.
        self.make = pipe.view_maker(spec, self.view_seed, num_views=epochs)

    def train_batches(self, epoch: int):
        labels = self.pipe.train.labels
        for idx, (x, w) in self.pipe.made_batches(epoch, self.make):
            yield Batch(x=self.pipe.normalize(x), labels=labels[idx.to(labels.device)].to(x.device), inputs=w)

    def loss(self, model: nn.Module, batch: Batch):
        logits = model(batch.x)
        return logits, {"ce": soft_cross_entropy(logits, batch.inputs)}

    def eval_batches(self, split: str, shard: tuple[int, int] = (0, 1)):
        return self.pipe.eval_batches(split, shard)

    def epoch_end(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _recorded_aug(s: TeachSettings, path: Path) -> TeachSettings:
    """Keep the view spec as the run recorded it when it means the same views: runs started
    before views had one module per op recorded every op's options."""

    from labelenh.views.spec import same_spec

    if not path.is_file():
        return s
    old = (read_checkpoint(path).get("config") or {}).get("aug")
    return replace(s, aug=old) if old != s.aug and same_spec(old, s.aug) else s


def train_teacher(s: TeachSettings, *, resume: bool = False, on_epoch_end=None) -> dict[str, Any]:
    """Train one teacher into `runs_dir/name`; returns the run summary."""

    device = dist.init_from_env(resolve_device(s.device))
    s.train.validate()
    spec = ViewSpec.from_dict(s.aug)
    name = check_run_name(s.name if s.name is not None else default_run_name(
        "teach", s.model, s.data.dataset, s.train.seed))
    run_dir = Path(s.runs_dir) / name
    s = replace(s, data=s.data.for_run(lambda: recorded_data(run_dir / "checkpoint.pt") if resume else None))
    bundle = s.data.load()
    if resume:
        s = _recorded_aug(s, run_dir / "checkpoint.pt")
        train, notes = recorded_train(s.train, run_dir, s.scaled)
        s = replace(s, train=train, scaled=notes)
    s = replace(s, train=with_memory_format(s.train, s.model))  # recorded in config.json
    if run_dir.exists() and (run_dir / "checkpoint.pt").exists() and not resume:
        raise LabelenhError(f"run folder {run_dir} already holds a run: pass --resume to continue it or a new --name")
    torch.manual_seed(derive_seed(s.train.seed, "init"))
    in_chans = bundle.train.image_shape[0]
    model = build_model(s.model, bundle.num_classes, in_chans=in_chans, weights=s.weights,
                        reset_head=s.reset_head)
    pipe = ImagePipeline(bundle, device, batch_size=s.train.batch_size,
                         eval_batch_size=s.train.eval_batch_size, seed=s.train.seed, workers=s.workers)
    task = TeacherTask(pipe, spec, s.train.seed, s.train.epochs)
    meta = {"model_name": s.model, "num_classes": bundle.num_classes, "in_chans": in_chans,
            "dataset": dataset_record(bundle)}
    describe = [describe_data(bundle), ("method", f"teacher: soft cross-entropy on {spec.describe()} views")]
    if s.weights:
        describe.append(("weights", f"{s.weights}{' (classifier reset)' if s.reset_head else ''}"))
    describe += [("note", text) for text in s.scaled.values() if text]
    engine = Engine(model, task, s.train, run_dir, device=device, run_config=s.run_config(),
                    checkpoint_meta=meta, on_epoch_end=on_epoch_end, log=s.log, log_every=s.log_every,
                    describe=describe)
    result = engine.fit(resume=resume)
    logits, labels = engine.final_predictions("test")  # collective under DDP
    if dist.is_main():
        _write_reliability(run_dir / "reliability.png", logits, labels, s.train.ece_bins, name)
    return result.summary


def import_teacher(
    checkpoint: str | Path, model_name: str, data: DataSettings, *, name: str | None, runs_dir: str,
    device: str = "auto", ece_bins: int = 15, eval_batch_size: int = 500,
) -> dict[str, Any]:
    """Load a teacher instead of training it (a labelenh checkpoint or a plain state_dict for the
    named model), evaluate it, and write a run folder that `export-soft-labels` accepts."""
    dev = resolve_device(device)
    if name is not None:
        check_run_name(name)
    B.ECE_BINS.check(ece_bins, "--ece-bins")
    bundle = data.load()
    obj = read_checkpoint(checkpoint)
    if is_labelenh_checkpoint(obj):
        model_name = obj["model_name"]
    in_chans = bundle.train.image_shape[0]
    model = build_model(model_name, bundle.num_classes, in_chans=in_chans)
    load_weights(model, state_dict_of(obj), what=f"{model_name} with {bundle.num_classes} classes",
                 source=checkpoint)
    model.to(dev).eval()
    pipe = ImagePipeline(bundle, dev, batch_size=eval_batch_size, eval_batch_size=eval_batch_size)
    logits, labels = predict(model, pipe.eval_batches("test"), device=dev)
    metrics = classification_metrics(logits, labels, n_bins=ece_bins)
    if "val" in pipe.splits:  # the same temperature scaling a trained run reports
        t = fit_temperature(*predict(model, pipe.eval_batches("val"), device=dev))
        metrics.update(scaled_metrics(logits, labels, t, ece_bins))
    run_name = name or default_run_name("import", model_name, data.dataset, 0)
    run_dir = Path(runs_dir) / run_name
    config = {"stage": "import", "model": model_name, "data": asdict(data), "source": str(checkpoint)}
    save_checkpoint(run_dir / "checkpoint.pt", {
        "model_name": model_name, "num_classes": bundle.num_classes, "in_chans": in_chans,
        "model": model.state_dict(), "epoch": int(obj.get("epoch", 0)) if is_labelenh_checkpoint(obj) else 0,
        "config": config, "metrics": metrics, "env": environment(), "dataset": dataset_record(bundle),
    })
    summary = {"name": run_name, "last": {"test": metrics}, "best": {"test": metrics}, "config": config,
               "env": environment()}
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "summary.json", summary)
    _write_reliability(run_dir / "reliability.png", logits, labels, ece_bins, run_name)
    return summary
