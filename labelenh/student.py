"""Stage two: train a student against targets built from the soft-label store (or, for the
baselines, from the hard labels or an online teacher), on the same engine as the teachers."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh import distributed as dist
from labelenh.checkpoint import (
    load_teacher,
    load_weights,
    read_checkpoint,
    resolve_checkpoint_path,
    state_dict_of,
)
from labelenh.data.settings import DataSettings
from labelenh.devices import resolve_device
from labelenh.engine import Batch, Engine, TrainConfig, check_run_name, with_memory_format
from labelenh.errors import LabelenhError
from labelenh.methods import METHODS, Method, MethodContext, MethodInputs, build_method
from labelenh.models import build_model
from labelenh.pipeline import ImagePipeline
from labelenh.plots import write_reliability as _write_reliability
from labelenh.rng import derive_seed
from labelenh.runrecord import (
    dataset_record,
    default_run_name,
    describe_data,
    recorded_data,
    recorded_train,
)
from labelenh.sources import Sources, open_store, plan_sources
from labelenh.store.dataset import StoreBatches
from labelenh.views import ViewSpec, get_op


@dataclass
class StudentSettings:
    model: str = "resnet20"
    method: str = "vanilla"
    params: dict[str, Any] = field(default_factory=dict)  # method parameters (temperature, alpha, ...)
    store: str | None = None
    aug: str | None = None  # None: crop/flip images with clean-sample targets; else the store's views
    teachers: list[str] | None = None  # which of the store's teachers (default: all)
    # run folders / checkpoints run at every step: for `kd`, or a store method's teacher instead of --store
    online_teachers: list[str] = field(default_factory=list)
    init: str | None = None  # start from these weights (e.g. the NLS warm-up-then-GLS procedure)
    reset_head: bool = False  # keep a fresh classifier where the init weights' has another shape
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    runs_dir: str = "runs"
    device: str = "auto"
    workers: int | None = None  # loader processes for image folders (None: the CPU count); not a result setting
    preload: bool | None = None  # read the store into memory (None: when it fits 2 GiB) or lazily
    log: tuple[str, ...] = ()  # extra loggers (labelenh.loggers); not part of the run's config
    log_every: int = 50  # optimiser steps between logged training losses
    # train settings derived from --epochs (key -> what was done); a resume keeps the recorded ones
    scaled: dict[str, str] = field(default_factory=dict)

    def run_config(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("name", "runs_dir", "device", "preload", "workers", "log", "log_every", "scaled"):
            d.pop(key)  # where and how the run is made and watched, not what it trains
        return {"stage": "student", **d}


class StudentTask:
    """Builds each batch's images and method inputs with `StoreBatches` (the same path users
    get from `labelenh.store`), from the sources `plan` names (labelenh.sources). With the
    store's views each sample shows one of them per epoch, chosen from (seed, epoch, sample)
    alone (`epoch_views`), so resume and DDP replay exactly."""

    def __init__(self, pipe: ImagePipeline, method: Method, plan: Sources, seed: int, store: Any,
                 teacher_ids: list[str] | None, online: list[nn.Module]) -> None:
        self.pipe, self.method, self.plan = pipe, method, plan
        self.store, self.teacher_ids, self.online = store, teacher_ids, online
        self.eval_splits = pipe.eval_splits()
        self.steps_per_epoch = pipe.steps_per_epoch()
        spec = None if plan.images == "store" else ViewSpec.build(plan.op, {"pad": pipe.bundle.crop_pad})
        self.batches = StoreBatches(store, pipe.train, aug=plan.images == "store", teachers=teacher_ids,
                                    seed=seed, spec=spec, logits=plan.logits == "store",
                                    num_classes=pipe.bundle.num_classes, device=pipe.device)
        # one object: the pipeline keeps a loader per maker
        self.make_images = functools.partial(self.batches.images, uint8_ok=True)

    def epoch_views(self, epoch: int) -> torch.Tensor | None:
        """int64 [N]: the store view every sample shows in `epoch` (None without --aug)."""
        return self.batches.views(torch.arange(self.pipe.num_train), epoch)

    def train_batches(self, epoch: int):
        # images rendered in loader workers for image folders; labels and logits read here
        for idx, images in self.pipe.made_batches(epoch, self.make_images):
            x, inp = self.batches.batch(idx, epoch, images)  # x float 0..255 [B, C, H, W] on the device
            yield Batch(x=self.pipe.normalize(x), labels=inp.labels, inputs=inp)

    def loss(self, model: nn.Module, batch: Batch):
        inp: MethodInputs = batch.inputs
        if self.plan.logits == "online":
            with torch.no_grad():
                # [B, M, C]: the online teachers see exactly the student's input
                inp.teacher_logits = torch.stack([t(batch.x).float() for t in self.online], dim=1)
        logits = model(batch.x)
        self.method.observe(logits.detach().float(), inp)
        ctx = MethodContext(epoch=batch.epoch, step=batch.step, steps_per_epoch=self.steps_per_epoch)
        return logits, self.method.loss(logits.float(), inp, ctx)

    def eval_batches(self, split: str, shard: tuple[int, int] = (0, 1)):
        return self.pipe.eval_batches(split, shard)

    def epoch_end(self, epoch: int) -> None:
        self.method.epoch_end()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state.get("method") or {})


def build_task(s: StudentSettings, device: torch.device | None = None, warn=None) -> StudentTask:
    """Check the settings against the method, the dataset and the store, and build the task
    (everything but the model and the engine). Bad input raises LabelenhError before any file
    is written."""
    device = device if device is not None else resolve_device(s.device)
    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    s.train.validate()
    if s.method not in METHODS:
        raise LabelenhError(f"--method {s.method!r} is unknown; choose from {', '.join(sorted(METHODS))}")
    if s.aug is not None:
        get_op(s.aug)  # an unknown op: one line listing the registered ones
    bundle = s.data.load()
    method = build_method(s.method, bundle.num_classes, **s.params)
    plan = plan_sources(s.method, method.teacher, aug=s.aug, store=s.store, online=s.online_teachers,
                        teachers=s.teachers)
    pipe = ImagePipeline(bundle, device, batch_size=s.train.batch_size,
                         eval_batch_size=s.train.eval_batch_size, seed=s.train.seed, workers=s.workers)
    store, ids = open_store(s.store, plan, bundle, aug=s.aug, teachers=s.teachers, preload=s.preload,
                            epochs=s.train.epochs, warn=warn)
    online = [load_teacher(t, device, num_classes=bundle.num_classes)[0] for t in s.online_teachers]
    return StudentTask(pipe, method, plan, s.train.seed, store, ids, online)


def _keep_older_method_record(cfg: dict[str, Any], method: Method, run_dir: Path) -> None:
    """A run started before a parameter existed did not record it: leave such a parameter out
    of the resumed run's config while it holds its default, which is what the run trained
    with, so the resume is not refused as 'different settings'."""
    try:
        old = json.loads((run_dir / "config.json").read_text()).get("method_params")
    except (OSError, ValueError, AttributeError):
        return  # no readable record: the engine's own comparison decides
    if not isinstance(old, dict):
        return
    for key, spec in method.params.items():
        if key not in old and cfg["method_params"].get(key) == spec.default:
            del cfg["method_params"][key]


def _describe(s: StudentSettings, task: StudentTask, bundle: Any, method: Method) -> list[tuple[str, str]]:
    """The student's lines of the start-up summary: data, method, where its targets come from."""
    params = ", ".join(f"{k}={v}" for k, v in method.describe()["params"].items())
    rows = [describe_data(bundle), ("method", f"{method.name}" + (f" ({params})" if params else ""))]
    if task.store is not None:
        views = (f"its views ({task.store.view_spec.describe()}, {task.store.num_views} per sample)"
                 if task.plan.images == "store" and task.store.view_spec is not None
                 else f"clean logits, {task.plan.describe()}")
        rows.append(("store", f"{s.store}: teachers {', '.join(task.teacher_ids or task.store.teachers)}; {views}"))
    elif s.online_teachers:
        rows.append(("teachers", f"online: {', '.join(s.online_teachers)}; {task.plan.describe()}"))
    else:
        rows.append(("views", task.plan.describe()))
    if s.init:
        rows.append(("weights", f"{s.init}{' (classifier reset)' if s.reset_head else ''}"))
    rows += [("note", text) for text in s.scaled.values() if text]
    return rows


def _data_record(s: StudentSettings, run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The data options the student's images must repeat: the store's export options (its clean
    images are the ones the teachers saw), else those of the run being resumed."""
    if s.store is not None:
        from labelenh.store.derive import export_options

        return export_options(s.store)
    return recorded_data(run_dir / "checkpoint.pt") if resume else None


def train_student(s: StudentSettings, *, resume: bool = False, on_epoch_end=None) -> dict[str, Any]:
    """Train one student into `runs_dir/name`; returns the run summary."""
    device = dist.init_from_env(resolve_device(s.device))
    name = check_run_name(s.name if s.name is not None else default_run_name(
        f"student-{s.method}", s.model, s.data.dataset, s.train.seed))
    run_dir = Path(s.runs_dir) / name
    s = replace(s, data=s.data.for_run(lambda: _data_record(s, run_dir, resume)))
    if resume:
        train, notes = recorded_train(s.train, Path(s.runs_dir) / name, s.scaled)
        s = replace(s, train=train, scaled=notes)
    s = replace(s, train=with_memory_format(s.train, s.model))  # recorded in config.json
    task = build_task(s, device)
    bundle, method, store = task.pipe.bundle, task.method, task.store
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise LabelenhError(f"run folder {run_dir} already holds a run: pass --resume to continue it or a new --name")
    torch.manual_seed(derive_seed(s.train.seed, "init"))
    in_chans = bundle.train.image_shape[0]
    model = build_model(s.model, bundle.num_classes, in_chans=in_chans)
    if s.init:
        from labelenh.models.weights import is_safetensors, read_safetensors, reset_classifier

        path = resolve_checkpoint_path(s.init)
        sd = read_safetensors(path) if is_safetensors(path) else state_dict_of(read_checkpoint(path))
        if s.reset_head:
            sd, _ = reset_classifier(model, sd)
        load_weights(model, sd, what=f"{s.model} with {bundle.num_classes} classes", source=path)
    meta = {"model_name": s.model, "num_classes": bundle.num_classes, "in_chans": in_chans,
            "dataset": dataset_record(bundle), "method": method.describe()}
    cfg = s.run_config()
    cfg["method_params"] = method.describe()["params"]
    if store is not None:  # what the store held, so a resume against another store is refused
        sha = {r.name: r.sha256 for r in store.teacher_records()}
        cfg["store_record"] = {"fingerprint": store.fingerprint,
                               "teachers": {t: sha.get(t, "") for t in task.teacher_ids or store.teachers},
                               "num_views": store.num_views, "view_seed": store.view_seed,
                               # as the store records it: a schema-1 spec keeps its old form
                               "view_spec": store.view_spec.record() if store.view_spec else None}
    if resume:
        _keep_older_method_record(cfg, method, run_dir)
    engine = Engine(model, task, s.train, run_dir, device=device, run_config=cfg,
                    checkpoint_meta=meta, on_epoch_end=on_epoch_end, log=s.log, log_every=s.log_every,
                    describe=_describe(s, task, bundle, method))
    result = engine.fit(resume=resume)
    logits, labels = engine.final_predictions("test")  # collective under DDP
    if dist.is_main():
        _write_reliability(run_dir / "reliability.png", logits, labels, s.train.ece_bins, name)
    return result.summary
