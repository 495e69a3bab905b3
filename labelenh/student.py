"""Stage two: train a student against targets built from the soft-label store (or, for the
baselines, from the hard labels or an online teacher), on the same engine as the teachers."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh import distributed as dist
from labelenh.checkpoint import load_teacher, load_weights, read_checkpoint, resolve_checkpoint_path, state_dict_of
from labelenh.engine import Batch, Engine, TrainConfig
from labelenh.errors import LabelenhError
from labelenh.methods import METHODS, Method, MethodInputs, build_method
from labelenh.models import build_model
from labelenh.pipeline import ImagePipeline
from labelenh.teach import DataSettings, _write_reliability, dataset_record, default_run_name
from labelenh.utils import derive_seed, generator, resolve_device
from labelenh.views import ViewSpec

MIXING_OPS = ("crop-flip", "mixup", "cutmix", "ricap")


@dataclass
class StudentSettings:
    model: str = "resnet20"
    method: str = "vanilla"
    params: dict[str, Any] = field(default_factory=dict)  # method parameters (temperature, alpha, ...)
    store: str | None = None
    aug: str | None = None  # None: crop/flip images with clean-sample targets; else the store's views
    teachers: list[str] | None = None  # which of the store's teachers (default: all)
    online_teachers: list[str] = field(default_factory=list)  # run folders / checkpoints for `kd`
    init: str | None = None  # start from these weights (e.g. the NLS warm-up-then-GLS procedure)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    runs_dir: str = "runs"
    device: str = "auto"

    def run_config(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name"), d.pop("runs_dir"), d.pop("device")
        return {"stage": "student", **d}


class StudentTask:
    """Builds each batch's images and method inputs. Per epoch, each sample gets one of the
    store's views, drawn from (seed, epoch, sample) alone, so resume and DDP replay exactly."""

    def __init__(self, pipe: ImagePipeline, method: Method, settings: StudentSettings, store: Any,
                 teacher_ids: list[str] | None, online: list[nn.Module]) -> None:
        self.pipe, self.method, self.s = pipe, method, settings
        self.store, self.teacher_ids, self.online = store, teacher_ids, online
        self.seed = settings.train.seed
        self.epochs = settings.train.epochs
        self.eval_splits = pipe.eval_splits()
        self.steps_per_epoch = pipe.steps_per_epoch()
        self.uses_store = method.teacher == "store"
        self.store_views = store is not None and settings.aug is not None and settings.aug != "none"
        if not self.store_views:
            # Fresh views every epoch: crop/flip by default (targets of the clean sample), or a
            # mixing op for the hard-label baselines trained without a store.
            op = settings.aug if settings.aug not in (None, "none") else "crop-flip"
            self.spec = ViewSpec(op=op)
            self.view_seed = derive_seed(self.seed, "student-views")

    def _teacher_logits(self, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        if views is None:
            return self.store.clean_logits(idx, self.teacher_ids)
        return self.store.view_logits(idx, views, self.teacher_ids)

    def train_batches(self, epoch: int):
        labels = self.pipe.train.labels
        if self.store_views:
            n, v = self.pipe.num_train, self.store.num_views
            # [N] the view each sample shows this epoch
            choice = torch.randint(v, (n,), generator=generator(self.seed, "view-choice", epoch))
        for idx in self.pipe.epoch_batches(epoch):
            views = None
            if self.store_views:
                views = choice[idx]
                rec = self.store.recipes(idx, views)
            else:
                rec = self.pipe.views_for(idx, self.spec, self.view_seed, view=epoch, num_views=self.epochs)
            x, hard = self.pipe.apply(rec)
            y = labels[idx.to(labels.device)].to(x.device)
            t = None
            if self.uses_store:
                t = self._teacher_logits(idx, views).to(x.device)
            yield Batch(x=x, labels=y, inputs=MethodInputs(labels=y, hard=hard, teacher_logits=t))

    def loss(self, model: nn.Module, batch: Batch):
        inp: MethodInputs = batch.inputs
        if self.method.teacher == "online":
            with torch.no_grad():
                # [B, M, C]: the online teachers see exactly the student's input
                inp.teacher_logits = torch.stack([t(batch.x).float() for t in self.online], dim=1)
        logits = model(batch.x)
        self.method.observe(logits.detach().float(), inp)
        return logits, self.method.loss(logits.float(), inp)

    def eval_batches(self, split: str):
        return self.pipe.eval_batches(split)

    def epoch_end(self, epoch: int) -> None:
        self.method.epoch_end()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state.get("method") or {})


def open_store(s: StudentSettings, method: Method, pipe: ImagePipeline, warn=print) -> tuple[Any, list[str] | None]:
    """Open and check the store against the method, the dataset, --aug and --teachers."""
    needs = method.teacher == "store"
    if s.store is None:
        if needs:
            raise LabelenhError(f"method {method.name!r} reads soft labels: pass --store STORE.h5 "
                                "(made by `labelenh export-soft-labels`)")
        if s.teachers:
            raise LabelenhError("--teachers selects teachers inside a store: pass --store too")
        return None, None
    from labelenh.store import SoftLabelStore

    store = SoftLabelStore.open(s.store)
    b = pipe.bundle
    store.check_dataset(b.name, b.train.fingerprint(), len(b.train), b.num_classes)
    ids = None
    if s.teachers:
        missing = [t for t in s.teachers if t not in store.teachers]
        if missing:
            raise LabelenhError(f"--teachers: {', '.join(missing)} not in {s.store}; it holds "
                                f"{', '.join(store.teachers)}")
        ids = list(s.teachers)
    if s.aug not in (None, "none"):
        have = store.view_spec.op if (store.view_spec is not None and store.num_views) else None
        if have != s.aug:
            raise LabelenhError(f"--aug {s.aug}: {s.store} holds {'views of ' + have if have else 'no views'}; "
                                f"export with --aug {s.aug} or drop --aug")
        if store.num_views < s.train.epochs and dist.is_main():
            warn(f"labelenh: warning: the store has {store.num_views} views for {s.train.epochs} epochs: views "
                 "will repeat (pre-computed teachers overfit in that regime; export more --views)")
    return store, ids


def train_student(s: StudentSettings, *, resume: bool = False, on_epoch_end=None) -> dict[str, Any]:
    device = dist.init_from_env(resolve_device(s.device))
    s.train.validate()
    if s.method not in METHODS:
        raise LabelenhError(f"--method {s.method!r} is unknown; choose from {', '.join(sorted(METHODS))}")
    if s.aug is not None and s.aug not in ("none", *MIXING_OPS):
        raise LabelenhError(f"--aug {s.aug!r} is not one of none, {', '.join(MIXING_OPS)}")
    bundle = s.data.load()
    method = build_method(s.method, bundle.num_classes, **s.params)
    if method.teacher == "online" and not s.online_teachers:
        raise LabelenhError(f"method {s.method!r} runs a teacher every step: pass --teacher RUN_OR_CKPT")
    if method.teacher != "online" and s.online_teachers:
        raise LabelenhError(f"--teacher is for online methods (kd); {s.method!r} reads teachers from --store")
    pipe = ImagePipeline(bundle, device, batch_size=s.train.batch_size,
                         eval_batch_size=s.train.eval_batch_size, seed=s.train.seed)
    if method.teacher == "store" or s.store is not None:
        store, ids = open_store(s, method, pipe, warn=lambda m: print(m, file=sys.stderr))
    else:
        store, ids = None, None
        if s.aug not in (None, "none") and s.teachers:
            raise LabelenhError("--teachers selects teachers inside a store: pass --store too")
    online = [load_teacher(t, device, num_classes=bundle.num_classes)[0] for t in s.online_teachers]
    name = s.name or default_run_name(f"student-{s.method}", s.model, s.data.dataset, s.train.seed)
    run_dir = Path(s.runs_dir) / name
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise LabelenhError(f"run folder {run_dir} already holds a run: pass --resume to continue it or a new --name")
    torch.manual_seed(derive_seed(s.train.seed, "init"))
    in_chans = bundle.train.image_shape[0]
    model = build_model(s.model, bundle.num_classes, in_chans=in_chans)
    if s.init:
        path = resolve_checkpoint_path(s.init)
        load_weights(model, state_dict_of(read_checkpoint(path)),
                     what=f"{s.model} with {bundle.num_classes} classes", source=path)
    task = StudentTask(pipe, method, s, store, ids, online)
    meta = {"model_name": s.model, "num_classes": bundle.num_classes, "in_chans": in_chans,
            "dataset": dataset_record(bundle), "method": method.describe()}
    cfg = s.run_config()
    cfg["method_params"] = method.describe()["params"]
    engine = Engine(model, task, s.train, run_dir, device=device, run_config=cfg,
                    checkpoint_meta=meta, on_epoch_end=on_epoch_end)
    result = engine.fit(resume=resume)
    if dist.is_main():
        _, logits, labels = engine.evaluate("test")
        _write_reliability(run_dir / "reliability.png", logits, labels, s.train.ece_bins, name)
    return result.summary
