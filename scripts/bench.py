"""What a precomputed soft-label store buys, measured side by side in one process.

The claim: a student trained from the store runs at the speed of plain training, while the
teacher's cost is paid once, at export. Every figure here is a ratio of two things timed in the
same process, on the same data, model and batch size, with torch.set_num_threads(2),
interleaved (A B C A B C ...) over rounds; a ratio is the median of the per-round ratios, so
load from other processes that drifts between rounds cancels out.

Figures (one JSON line each, then a Markdown table):
  student  step time of a student epoch from the store (kd-sl; aug-kd-sl with RICAP views)
           / the same student's vanilla epoch (crop/flip; RICAP drawn on the fly)   <= 1.05
  online   online kd step / store kd-sl step, resnet110 -> resnet20 and a 3-teacher ensemble
           (online kd vs en-sl), as a fraction of the ideal
           (vanilla step + teachers' forward) / vanilla step, all timed here        >= 0.90
  export   export_soft_labels rows/s / the teacher's bare forward (inference mode,
           pre-made tensors, the export's block shapes), resnet110 teacher          >= 0.95
  bytes    bytes per stored view (dense fp16, fp32, top-5, top-10; C = 10, 100, 1000)
  reader   rows/s: preloaded, lazy, and lazy through a DataLoader with 2 workers
  rss      peak RSS of an ImageNet-shaped export (C = 1000) as N grows: flat       <= 1.1x
bytes, reader (preloaded, lazy) and the N = 1.28 M RSS run come from scripts/bench_store.py's
functions when that file is there (its one-thread settings kept); this script adds the loader
workers and an export of real-size 3x224x224 images.

A student "step" is everything an epoch pays per batch: the recipes (drawn, or read from the
store), gathering and applying the views, store reads, normalisation, and the forward, backward
and update of `Engine._train_epoch` (timed between consecutive batch requests of the engine).
`data:<config>` rows time the batches alone, `train-step` one prepared batch over and over.
Teachers are untrained (timing does not depend on the weights; BatchNorm statistics are set
from 256 images so that logits stay finite): saved as labelenh checkpoints and loaded by the
functions behind `labelenh student --teacher` and `labelenh export-soft-labels`.

Usage:
  python scripts/bench.py --quick            # every figure, small sizes (< 5 min on 2 cores)
  python scripts/bench.py --jsonl b.jsonl    # the sizes of BENCHMARKS.md
  python scripts/bench.py --only student,online --rounds 9
  python scripts/bench.py --profile kd-sl    # cProfile 20 steps of one config (data:kd-sl:
                                             # its batches alone)
  python scripts/bench.py --patch normalize-inplace ...   # try a candidate library patch
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

THREADS = 2
SECTIONS = ("student", "online", "export", "bytes", "reader", "rss")


# ---- sizes ----------------------------------------------------------------------------------

@dataclass
class Sizes:
    """Everything that differs between --quick and the full run."""

    train_samples: int = 5085  # cifar10-mini train split (all of it)
    batch_size: int = 64  # TrainConfig's default
    store_views: int = 4  # RICAP views per sample in the student's store
    # many short rounds: an interference burst then spoils a few samples of several configs
    # rather than every sample of one
    rounds: int = 12  # interleaved rounds of student steps
    steps: int = 4  # steps per config per round
    export_samples: int = 512  # samples of the export-throughput run
    export_views: int = 3
    export_reps: int = 3
    # bytes and reader figures measured here only when scripts/bench_store.py is missing
    bytes_samples: int = 256
    bytes_views: int = 4
    reader_samples: int = 50_000  # CIFAR-size store for the reader
    reader_views: int = 8
    reader_classes: int = 100
    reader_batches: int = 400
    rss_samples: list[int] = field(default_factory=lambda: [512, 2048, 8192])
    rss_views: int = 2
    probes: bool = True  # also time data prep on 1 thread and teachers under inference_mode


QUICK = Sizes(train_samples=256, store_views=2, rounds=6, steps=2, export_samples=128,
              export_views=3, export_reps=2, bytes_samples=256, bytes_views=2,
              reader_samples=10_000, reader_views=4, reader_batches=150, rss_samples=[256, 1024],
              probes=False)


# ---- output ---------------------------------------------------------------------------------

class Report:
    """Collects figures: one JSON line each as they come, a Markdown table at the end."""

    def __init__(self, jsonl: Path | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.jsonl = jsonl
        if jsonl is not None:
            jsonl.write_text("")

    def add(self, figure: str, case: str, value: float, unit: str, *, goal: str | None = None,
            met: bool | None = None, **extra: Any) -> None:
        row = {"figure": figure, "case": case, "value": _round(value), "unit": unit,
               "goal": goal, "met": met, **{k: _round(v) for k, v in extra.items()}}
        self.rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(line + "\n")

    def markdown(self) -> str:
        out = ["| figure | case | value | unit | goal | met |", "|---|---|---:|---|---|---|"]
        for r in self.rows:
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            out.append(f"| {r['figure']} | {r['case']} | {_fmt(r['value'])} | {r['unit']} | "
                       f"{r['goal'] or ''} | {met} |")
        return "\n".join(out)


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import h5py

    import labelenh
    from labelenh.utils import git_commit

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
            "python": platform.python_version(), "labelenh": labelenh.__version__,
            "git_commit": git_commit(), "loadavg": list(os.getloadavg())}


# ---- fixtures -------------------------------------------------------------------------------

def subset_npz(path: Path, n: int) -> str:
    """The first n training images of cifar10-mini (and its test split) as an npz: dataset."""
    from importlib import resources

    with resources.as_file(resources.files("labelenh.data") / "cifar10_mini.npz") as src:
        z = np.load(src)
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"], arrays["y_train"] = arrays["x_train"][:n], arrays["y_train"][:n]
    np.savez(path, **arrays)
    return f"npz:{path}"


def save_teacher(path: Path, model_name: str, num_classes: int, seed: int,
                 calib: torch.Tensor | None = None) -> Path:
    """An untrained teacher as a labelenh checkpoint (timing does not depend on the weights).

    calib: normalised images [B, C, H, W] to set the BatchNorm statistics from, so an untrained
    deep net gives logits of a sane size (fresh running stats let resnet110's activations grow
    block by block until float16 logits overflow)."""
    from labelenh.checkpoint import save_checkpoint
    from labelenh.models import build_model

    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG state untouched
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes)
    if calib is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for x in calib.split(128):
                model(x)
        model.eval()
    save_checkpoint(path, {"model_name": model_name, "num_classes": num_classes, "in_chans": 3,
                           "model": model.state_dict()})
    return path


def calibration_images(bundle, n: int = 256) -> torch.Tensor:
    """float [n, C, H, W]: the first n training images, normalised as the teachers see them."""
    from labelenh.data import normalize

    x = bundle.train.load(torch.arange(min(n, len(bundle.train)))).float()
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return normalize(x, mean, std)


class SyntheticImages:
    """A lazy ImageSource: image i is a fixed random image from a small bank, so memory does not
    grow with N (for the RSS and reader figures). The fingerprint hashes what decides every
    image: N, the labels and the bank."""

    def __init__(self, n: int, shape: tuple[int, int, int], num_classes: int, seed: int = 0,
                 bank: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.bank = torch.randint(0, 256, (bank, *shape), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.image_shape = shape
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.bank[torch.as_tensor(indices).long() % len(self.bank)]  # [B, C, H, W]

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(repr(("bench-synthetic", self.n, self.image_shape)).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(self.bank.numpy().tobytes())
        return h.hexdigest()


def tiny_teacher(in_shape: tuple[int, int, int], num_classes: int, pool: int = 1) -> nn.Module:
    """A cheap linear teacher for the store-format figures (bytes, reader, RSS)."""
    c, h, w = in_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(),
                             nn.Linear(c * (h // pool) * (w // pool), num_classes)).eval()


def export(out: Path, teachers, source, *, num_classes: int, views: int, spec, fmt: str = "fp16",
           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dataset: str = "bench",
           chunk_size: int | None = None):
    from labelenh.store import export_soft_labels
    from labelenh.store.schema import DEFAULT_CHUNK_SIZE

    return export_soft_labels(out, teachers, source, dataset=dataset, num_classes=num_classes,
                              mean=mean, std=std, num_views=views, spec=spec if views else None,
                              view_seed=0, fmt=fmt, overwrite=True,
                              chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)


# ---- student steps --------------------------------------------------------------------------

@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n intra-op threads (None: as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TimedTask:
    """Wraps a StudentTask for `Engine._train_epoch`: yields `steps` of its batches and records
    the time between consecutive batch requests, i.e. data preparation + training step."""

    def __init__(self, task: Any, steps: int) -> None:
        self.task, self.steps = task, steps
        self.eval_splits = task.eval_splits
        self.steps_per_epoch = task.steps_per_epoch
        self.times: list[float] = []

    def train_batches(self, epoch: int) -> Iterator[Any]:
        it = iter(self.task.train_batches(epoch))
        t = time.perf_counter()
        for _ in range(self.steps):
            yield next(it)
            now = time.perf_counter()
            self.times.append(now - t)
            t = now

    def loss(self, model, batch):
        return self.task.loss(model, batch)

    def epoch_end(self, epoch: int) -> None:
        self.task.epoch_end(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.task.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task.load_state_dict(state)


class FixedBatchTask(TimedTask):
    """The same prepared batch every step: the bare forward/backward/update of the student."""

    def __init__(self, task: Any, steps: int) -> None:
        super().__init__(task, steps)
        self.batch = next(iter(task.train_batches(0)))

    def train_batches(self, epoch: int) -> Iterator[Any]:
        t = time.perf_counter()
        for _ in range(self.steps):
            yield self.batch
            now = time.perf_counter()
            self.times.append(now - t)
            t = now


class TeacherForward:
    """The online teachers' forward exactly as StudentTask.loss runs it, on real student batches
    prepared before timing starts."""

    def __init__(self, teachers: list[nn.Module], task: Any, steps: int,
                 inference_mode: bool = False) -> None:
        self.teachers, self.steps = teachers, steps
        # StudentTask.loss uses no_grad; inference_mode (no version counters) is the candidate
        self.mode = torch.inference_mode if inference_mode else torch.no_grad
        it = iter(task.train_batches(0))
        self.xs = [next(it).x for _ in range(min(steps, task.steps_per_epoch))]
        self.times: list[float] = []

    def run(self, epoch: int) -> None:
        for i in range(self.steps):
            x = self.xs[i % len(self.xs)]
            t = time.perf_counter()
            with self.mode():
                torch.stack([m(x).float() for m in self.teachers], dim=1)  # [B, M, C]
            self.times.append(time.perf_counter() - t)


class DataOnly:
    """A student config's batches without training: recipes, store reads, gather + apply,
    normalisation; what `TimedTask` measures minus the model's step."""

    def __init__(self, task: Any, steps: int, threads: int | None = None) -> None:
        self.task, self.steps, self.threads = task, steps, threads
        self.times: list[float] = []

    def run(self, epoch: int) -> None:
        it = iter(self.task.train_batches(epoch))
        for _ in range(self.steps):
            t = time.perf_counter()
            with torch_threads(self.threads):
                next(it)
            self.times.append(time.perf_counter() - t)


@dataclass
class StudentCase:
    name: str
    method: str = "vanilla"
    store: str | None = None
    aug: str | None = None
    online: list[str] = field(default_factory=list)


def build_engine(case: StudentCase, dataset: str, sizes: Sizes, run_dir: Path, steps: int,
                 fixed: bool = False):
    """The StudentTask of `labelenh.student.build_task` and an Engine, as `train_student` makes
    them, with the task wrapped for timing (no fit: `_train_epoch` is called directly)."""
    from labelenh.engine import Engine, TrainConfig
    from labelenh.models import build_model
    from labelenh.student import StudentSettings, build_task
    from labelenh.teach import DataSettings
    from labelenh.utils import derive_seed

    device = torch.device("cpu")
    train = TrainConfig(epochs=10_000, batch_size=sizes.batch_size, schedule="constant",
                        milestones=[], seed=0)
    s = StudentSettings(model="resnet20", method=case.method, store=case.store, aug=case.aug,
                        online_teachers=list(case.online), data=DataSettings(dataset=dataset),
                        train=train, device="cpu")
    task = build_task(s, device, warn=lambda m: None)  # (views < epochs: nothing to warn about)
    torch.manual_seed(derive_seed(s.train.seed, "init"))
    model = build_model(s.model, task.pipe.bundle.num_classes)
    timed = (FixedBatchTask if fixed else TimedTask)(task, steps)
    engine = Engine(model, timed, train, run_dir / case.name, device=device, run_config={},
                    checkpoint_meta={}, progress=False)
    return engine, timed, task, task.online


def run_student_section(report: Report, sizes: Sizes, work: Path, sections: set[str]) -> None:
    from labelenh.data import load_dataset
    from labelenh.store import load_teachers
    from labelenh.views import ViewSpec

    t_all = time.perf_counter()
    dataset = subset_npz(work / "cifar10-mini-subset.npz", sizes.train_samples)
    bundle = load_dataset(dataset)
    k = bundle.num_classes
    calib = calibration_images(bundle)
    t110 = str(save_teacher(work / "resnet110.pt", "resnet110", k, seed=1, calib=calib))
    ens = [str(save_teacher(work / f"resnet56-{i}.pt", "resnet56", k, seed=10 + i, calib=calib))
           for i in range(3)]

    # the stores: resnet110 with clean + RICAP views; the 3-teacher ensemble with clean logits
    log(f"exporting the student stores ({len(bundle.train)} samples)")
    store110, store_ens = work / "resnet110-ricap.h5", work / "ensemble.h5"
    t = time.perf_counter()
    export(store110, load_teachers([t110], "cpu", k), bundle.train, num_classes=k,
           views=sizes.store_views, spec=ViewSpec(op="ricap", pad=bundle.crop_pad),
           mean=bundle.mean, std=bundle.std, dataset=bundle.name, chunk_size=64)
    if "online" in sections:
        export(store_ens, load_teachers(ens, "cpu", k), bundle.train, num_classes=k, views=0,
               spec=None, mean=bundle.mean, std=bundle.std, dataset=bundle.name, chunk_size=64)
    log(f"stores written in {time.perf_counter() - t:.1f}s")

    cases = [StudentCase("vanilla"), StudentCase("kd-sl", "kd-sl", str(store110)),
             StudentCase("vanilla+ricap", aug="ricap"),
             StudentCase("aug-kd-sl+ricap", "kd-sl", str(store110), aug="ricap")]
    if "online" in sections:
        cases += [StudentCase("en-sl", "en-sl", str(store_ens)),
                  StudentCase("kd:resnet110", "kd", online=[t110]),
                  StudentCase("kd:ensemble", "kd", online=ens)]
    runners: dict[str, Callable[[int], None]] = {}
    timers: dict[str, Any] = {}
    teachers_of: dict[str, list[nn.Module]] = {}
    for case in cases:
        engine, timed, task, online = build_engine(case, dataset, sizes, work / "runs",
                                                   sizes.steps)
        runners[case.name] = engine._train_epoch
        timers[case.name] = timed
        if not case.online:
            for key, threads in (("data", None), ("data1", 1))[:2 if sizes.probes else 1]:
                data = DataOnly(task, sizes.steps, threads)
                runners[f"{key}:{case.name}"], timers[f"{key}:{case.name}"] = data.run, data
        if case.name == "vanilla":
            vanilla_task = task
            engine_f, timed_f, _, _ = build_engine(StudentCase("train-step"), dataset, sizes,
                                                   work / "runs", sizes.steps, fixed=True)
            runners["train-step"], timers["train-step"] = engine_f._train_epoch, timed_f
        if online:
            teachers_of[case.name] = online
    for name, teachers in teachers_of.items():
        fwd = TeacherForward(teachers, vanilla_task, sizes.steps)
        runners[f"fwd:{name[3:]}"], timers[f"fwd:{name[3:]}"] = fwd.run, fwd
        if sizes.probes and name == "kd:resnet110":
            fwd = TeacherForward(teachers, vanilla_task, sizes.steps, inference_mode=True)
            key = f"fwd:{name[3:]} [inference_mode]"
            runners[key], timers[key] = fwd.run, fwd

    names = list(runners)
    log(f"student steps: {len(names)} configs x {sizes.rounds} rounds x {sizes.steps} steps "
        f"(batch {sizes.batch_size}), interleaved")
    for name in names:  # warm-up round, not recorded
        runners[name](sizes.rounds)
        timers[name].times.clear()
    per_round: dict[str, list[float]] = {n: [] for n in names}  # median step time of each round
    for r in range(sizes.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no fixed position
        for name in order:
            n0 = len(timers[name].times)
            runners[name](r)
            per_round[name].append(statistics.median(timers[name].times[n0:]))
    ms = {n: statistics.median(timers[n].times) * 1e3 for n in names}
    slow_frac = {}
    for n in names:
        ts = timers[n].times
        slow_frac[n] = sum(t > 1.5 * ms[n] / 1e3 for t in ts) / len(ts)  # interference bursts
        report.add("step", n, ms[n], "ms/step", batch=sizes.batch_size, steps=len(ts),
                   rounds=sizes.rounds, slow_frac=slow_frac[n])
    # Medians hold while bursts hit a minority of the steps; past that the figures are noise.
    worst = max(v for n, v in slow_frac.items() if not n.startswith("data"))
    report.add("interference", "steps slowed > 1.5x by other processes (worst config)", worst,
               "fraction", goal="<= 0.2", met=worst <= 0.2, loadavg=list(os.getloadavg()))
    if worst > 0.2:
        log(f"warning: {worst:.0%} of one config's steps ran in interference bursts: the student "
            "figures are not reliable; re-run when the machine is quiet (see `uptime`)")

    # Ratios of medians over every recorded step: on this shared machine interference comes in
    # bursts of a few seconds that slow every op ~10x, so a burst spoils a whole round of one
    # config; a median over all rounds ignores it while bursts hit under half the steps. The
    # median of per-round paired ratios (robust to slow drift instead) goes along as `paired`.
    def ratio(a: str, b: str) -> float:
        return ms[a] / ms[b]

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))

    goal1 = 1.05
    for a, b in (("kd-sl", "vanilla"), ("aug-kd-sl+ricap", "vanilla+ricap"),
                 ("aug-kd-sl+ricap", "vanilla")):
        v = ratio(a, b)
        primary = not (a == "aug-kd-sl+ricap" and b == "vanilla")
        report.add("student", f"{a} / {b}", v, "x", goal=f"<= {goal1}" if primary else None,
                   met=(v <= goal1) if primary else None, paired=paired(a, b))
    for case in cases:
        if not case.online:
            report.add("student", f"data prep share of the {case.name} step",
                       ratio(f"data:{case.name}", case.name), "fraction")
            if sizes.probes:
                report.add("student", f"{case.name} data prep on 1 thread / on {THREADS}",
                           ratio(f"data1:{case.name}", f"data:{case.name}"), "x")
    if "fwd:resnet110 [inference_mode]" in per_round:
        report.add("online", "teacher forward, inference_mode / no_grad (resnet110)",
                   ratio("fwd:resnet110 [inference_mode]", "fwd:resnet110"), "x")
    if "online" in sections:
        for kd, sl, fwd in (("kd:resnet110", "kd-sl", "fwd:resnet110"),
                            ("kd:ensemble", "en-sl", "fwd:ensemble")):
            actual = ratio(kd, sl)
            ideal = (ms["vanilla"] + ms[fwd]) / ms["vanilla"]
            frac = actual / ideal
            report.add("online", f"{kd} / {sl}", actual, "x", ideal=ideal, paired=paired(kd, sl))
            report.add("online", f"{kd} / {sl} as a fraction of ideal", frac, "fraction",
                       goal=">= 0.9", met=frac >= 0.9, ideal=ideal, actual=actual)
    log(f"student section: {time.perf_counter() - t_all:.0f}s")


# ---- export throughput ----------------------------------------------------------------------

def forward_blocks(n: int, views: int, chunk: int) -> list[int]:
    """The teacher-forward block sizes of an export (see labelenh.store.export.compute_chunk):
    per chunk of samples, its clean images, then its (sample, view) pairs in blocks of `chunk`."""
    out = []
    for s0 in range(0, n, chunk):
        b = min(chunk, n - s0)
        out.append(b)
        out += [min(chunk, b * views - i) for i in range(0, b * views, chunk)]
    return out


def run_export_section(report: Report, sizes: Sizes, work: Path) -> None:
    """Export rows/s (the whole `export_soft_labels` call: clean + RICAP views, fp16) vs the
    teacher's bare forward in inference mode over the same number of images in the same block
    shapes, interleaved, best of `export_reps`; at the default chunk (256) and at 64."""
    from labelenh.data import load_dataset
    from labelenh.store import load_teachers
    from labelenh.store.schema import DEFAULT_CHUNK_SIZE
    from labelenh.views import ViewSpec

    t_all = time.perf_counter()
    dataset = subset_npz(work / "export-subset.npz", sizes.export_samples)
    bundle = load_dataset(dataset)
    k = bundle.num_classes
    path = str(save_teacher(work / "export-resnet110.pt", "resnet110", k, seed=1,
                            calib=calibration_images(bundle)))
    teachers = load_teachers([path], "cpu", k)
    model = teachers[0].model
    n, v = len(bundle.train), sizes.export_views
    rows = n * (1 + v)
    spec = ViewSpec(op="ricap", pad=bundle.crop_pad)
    bundle.train.fingerprint()  # computed once per dataset, as a CLI export does
    block = torch.randn(DEFAULT_CHUNK_SIZE, *bundle.train.image_shape)

    def bare(chunk: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in forward_blocks(n, v, chunk):
                model(block[:b])
        return time.perf_counter() - t

    def exp(chunk: int) -> float:
        t = time.perf_counter()
        export(work / "export.h5", teachers, bundle.train, num_classes=k, views=v, spec=spec,
               mean=bundle.mean, std=bundle.std, dataset=bundle.name, chunk_size=chunk)
        return time.perf_counter() - t

    chunks = (DEFAULT_CHUNK_SIZE, 64)
    bare(64)  # warm-up
    t_exp: dict[int, list[float]] = {c: [] for c in chunks}
    t_bare: dict[int, list[float]] = {c: [] for c in chunks}
    for _ in range(sizes.export_reps):
        for c in chunks:
            t_exp[c].append(exp(c))
            t_bare[c].append(bare(c))
    # best of the reps: interference only ever adds time
    for c in chunks:
        ratio = min(t_bare[c]) / min(t_exp[c])
        report.add("export", f"export rows/s, resnet110, ricap V={v}, chunk {c}",
                   rows / min(t_exp[c]), "rows/s", rows=rows, all_s=t_exp[c])
        report.add("export", f"bare resnet110 inference, same blocks, chunk {c}",
                   rows / min(t_bare[c]), "images/s", rows=rows, all_s=t_bare[c])
        default = c == DEFAULT_CHUNK_SIZE
        report.add("export", f"export / bare inference, chunk {c}", ratio, "x",
                   goal=">= 0.95" if default else None, met=(ratio >= 0.95) if default else None,
                   reps=sizes.export_reps)
    speed = min(t_bare[chunks[0]]) / min(t_bare[64])
    report.add("export", f"bare inference in blocks of 64 vs {chunks[0]} (speed-up)", speed, "x")
    log(f"export section: {time.perf_counter() - t_all:.0f}s")


# ---- store figures from scripts/bench_store.py ---------------------------------------------

def load_bench_store():
    """scripts/bench_store.py as a module, or None when it is missing or lacks what is used."""
    import importlib.util

    path = Path(__file__).with_name("bench_store.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("bench_store", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_store"] = mod
    spec.loader.exec_module(mod)
    need = ("RESULTS", "bench_bytes", "bench_reader", "bench_rss", "make_random_store")
    return mod if all(hasattr(mod, n) for n in need) else None


def _store_rows(bs, fn: Callable[[], None]) -> list[dict[str, Any]]:
    """Run a bench_store function with its own JSON lines silenced; return its result rows."""
    n0 = len(bs.RESULTS)
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    return bs.RESULTS[n0:]


def run_store_bytes(report: Report, bs) -> None:
    t = time.perf_counter()
    for r in _store_rows(bs, bs.bench_bytes):
        fmt = {"fp16": "dense fp16", "fp32": "dense fp32"}.get(r["format"], r["format"])
        report.add("bytes", f"C={r['num_classes']} {fmt}, {r['view_op']} recipe",
                   r["measured_bytes"], "B/view", logits=r["logits_bytes"],
                   recipe=r["recipe_bytes"])
    log(f"bytes (bench_store.bench_bytes): {time.perf_counter() - t:.0f}s")


def run_store_reader(report: Report, bs, quick: bool, work: Path) -> None:
    t = time.perf_counter()
    for r in _store_rows(bs, lambda: bs.bench_reader(quick, threads=THREADS)):
        report.add("reader", f"{r['mode']}, C={r['num_classes']} {r['format']}, "
                   f"N={r['n']}x{r['views']}, batch {r['batch']}", r["rows_per_s"], "rows/s",
                   threads=r["threads"], what="view logits")
    log(f"reader (bench_store.bench_reader): {time.perf_counter() - t:.0f}s")
    run_reader_workers(report, bs, quick, work)


class _ViewReads(torch.utils.data.Dataset):
    """Item i = batch i of (sample, view) rows read lazily: what one loader worker does."""

    def __init__(self, path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from labelenh.store import SoftLabelStore

        self.store = SoftLabelStore.open(path, preload=False)  # maps reopen per worker
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store.view_logits(*self.batches[i])  # [B, 1, C]


def run_reader_workers(report: Report, bs, quick: bool, work: Path) -> None:
    """Lazy reads through a DataLoader with 2 workers vs in the process, on a store shaped as
    bench_store's C=100 fp16 one, interleaved."""
    from labelenh.store import SoftLabelStore

    t_all = time.perf_counter()
    n, v, c, b = (20_000, 8, 100, 256) if quick else (100_000, 8, 100, 256)
    path = work / "reader-workers.h5"
    bs.make_random_store(path, n, c, v, "fp16")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(n, (b,), generator=g), torch.randint(v, (b,), generator=g))
               for _ in range(100 if quick else 400)]

    def lazy() -> float:
        store = SoftLabelStore.open(path, preload=False)
        store.view_logits(*batches[0])
        t = time.perf_counter()
        for sv in batches:
            store.view_logits(*sv)
        dt = time.perf_counter() - t
        store.close()
        return len(batches) * b / dt

    def workers() -> float:
        loader = torch.utils.data.DataLoader(_ViewReads(path, batches), batch_size=None,
                                             num_workers=2, prefetch_factor=4)
        it = iter(loader)
        next(it)  # worker start-up is not read throughput
        t = time.perf_counter()
        got = sum(1 for _ in it)
        return got * b / (time.perf_counter() - t)

    res: dict[str, list[float]] = {"lazy, in process": [], "lazy, 2 loader workers": []}
    for _ in range(3):
        res["lazy, in process"].append(lazy())
        res["lazy, 2 loader workers"].append(workers())
    for m, vals in res.items():
        report.add("reader", f"{m}, C={c} fp16, N={n}x{v}, batch {b}", statistics.median(vals),
                   "rows/s", threads=THREADS, what="view logits")
    log(f"reader with loader workers: {time.perf_counter() - t_all:.0f}s")


def run_store_rss(report: Report, bs, quick: bool) -> None:
    t = time.perf_counter()
    for r in _store_rows(bs, lambda: bs.bench_rss(quick)):
        if r["bench"] == "export_peak_rss":
            report.add("rss", f"export N={r['n']:,} C={r['num_classes']} V={r['views']} "
                       f"{r['format']} (8x8 images)", r["peak_rss_mib"], "MiB peak RSS",
                       seconds=r["seconds"], store_mib=r["store_mib"])
        else:
            report.add("rss", f"peak RSS at N={r['n_large']:,} / at N={r['n_small']:,}",
                       r["ratio"], "x", goal="<= 1.1 (flat)", met=r["ratio"] <= 1.1)
    log(f"rss (bench_store.bench_rss): {time.perf_counter() - t:.0f}s")


# ---- store figures measured here (224x224 RSS; fallbacks when bench_store is missing) ---------

def run_bytes_section(report: Report, sizes: Sizes, work: Path) -> None:
    """Bytes per stored view, read from written files: the storage of every per-view dataset
    (recipes + the teacher's view logits) / (N V). `file_delta` = (file size with V views - file
    size without views) / (N V) checks that nothing else grows with V."""
    import h5py

    from labelenh.store import teacher_from_model
    from labelenh.views import ViewSpec

    t_all = time.perf_counter()
    n, v = sizes.bytes_samples, sizes.bytes_views
    spec = ViewSpec(op="crop-flip", pad=1)
    for c in (10, 100, 1000):
        src = SyntheticImages(n, (3, 8, 8), c)
        teachers = [teacher_from_model(tiny_teacher((3, 8, 8), c), "t")]
        for fmt, label in (("fp16", "dense fp16"), ("fp32", "dense fp32"), ("topk:5", "top-5"),
                           ("topk:10", "top-10")):
            if fmt.startswith("topk") and int(fmt[5:]) > c:
                continue
            files = {}
            for views in (0, v):
                out = work / f"bytes-{c}-{fmt.replace(':', '')}-{views}.h5"
                export(out, teachers, src, num_classes=c, views=views, spec=spec, fmt=fmt)
                files[views] = out.stat().st_size
            with h5py.File(out) as f:
                g = f["teachers/t/views"]
                dsets = [g] if isinstance(g, h5py.Dataset) else list(g.values())
                logits = sum(d.id.get_storage_size() for d in dsets) / (n * v)
                recipe = f["views/recipes"].id.get_storage_size() / (n * v)
            report.add("bytes", f"C={c} {label}", logits + recipe, "B/view",
                       logits_only=logits, recipe=recipe,
                       file_delta=(files[v] - files[0]) / (n * v))
            for p in work.glob("bytes-*.h5"):
                p.unlink()
    log(f"bytes section: {time.perf_counter() - t_all:.0f}s")


class _BatchReads(torch.utils.data.Dataset):
    """One item = one batch of (sample, view) rows: view logits + recipes, as a student reads."""

    def __init__(self, path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from labelenh.store import SoftLabelStore

        self.store = SoftLabelStore.open(path, preload=False)  # opened before the fork: safe
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        s, v = self.batches[i]
        rec = self.store.recipes(s, v)
        return self.store.view_logits(s, v), rec.sample


def run_reader_section(report: Report, sizes: Sizes, work: Path) -> None:
    from labelenh.store import SoftLabelStore, teacher_from_model
    from labelenh.views import ViewSpec

    t_all = time.perf_counter()
    n, v, c, b = sizes.reader_samples, sizes.reader_views, sizes.reader_classes, 128
    path = work / "reader.h5"
    src = SyntheticImages(n, (3, 8, 8), c)
    log(f"reader: exporting N={n} V={v} C={c} fp16 (tiny teacher)")
    export(path, [teacher_from_model(tiny_teacher((3, 8, 8), c), "t")], src, num_classes=c,
           views=v, spec=ViewSpec(op="ricap", pad=1))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(n, (b,), generator=g), torch.randint(v, (b,), generator=g))
               for _ in range(sizes.reader_batches)]
    rows = b * len(batches)

    def in_process(preload: bool) -> float:
        store = SoftLabelStore.open(path, preload=preload)
        t = time.perf_counter()
        for s, vv in batches:
            store.recipes(s, vv)
            store.view_logits(s, vv)
        dt = time.perf_counter() - t
        store.close()
        return rows / dt

    def workers(k: int) -> float:
        loader = torch.utils.data.DataLoader(_BatchReads(path, batches), batch_size=None,
                                             num_workers=k, prefetch_factor=4)
        it = iter(loader)
        next(it)  # worker start-up is not read throughput
        t = time.perf_counter()
        got = sum(1 for _ in it)
        return got * b / (time.perf_counter() - t)

    modes = {"preloaded": lambda: in_process(True), "lazy (memmap)": lambda: in_process(False),
             "lazy, 2 loader workers": lambda: workers(2)}
    res: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(3):  # interleaved
        for m, fn in modes.items():
            res[m].append(fn())
    for m in modes:
        report.add("reader", f"{m}, N={n} V={v} C={c} fp16", statistics.median(res[m]), "rows/s",
                   batch=b, what="view logits + recipes", file_mb=path.stat().st_size / 2**20)
    log(f"reader section: {time.perf_counter() - t_all:.0f}s")


def rss_child(n: int, views: int, out: str) -> None:
    """Run in a fresh process: export an ImageNet-shaped store of N samples; print peak RSS."""
    from labelenh.store import teacher_from_model
    from labelenh.views import ViewSpec

    torch.set_num_threads(THREADS)
    shape, c = (3, 224, 224), 1000
    src = SyntheticImages(n, shape, c)
    teachers = [teacher_from_model(tiny_teacher(shape, c, pool=8), "t")]
    base = peak_rss_kib()
    t = time.perf_counter()
    export(Path(out), teachers, src, num_classes=c, views=views,
           spec=ViewSpec(op="crop-flip", pad=28), fmt="fp16")
    peak = peak_rss_kib()
    print(json.dumps({"n": n, "peak_kb": peak, "before_kb": base,
                      "seconds": time.perf_counter() - t, "bytes": Path(out).stat().st_size}))


def peak_rss_kib() -> int:
    """Peak RSS of this process since its exec (VmHWM): ru_maxrss would also count the pages of
    the parent that the forked child held before exec."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_rss_section(report: Report, sizes: Sizes, work: Path) -> None:
    t_all = time.perf_counter()
    peaks = []
    for n in sizes.rss_samples:
        out = work / f"rss-{n}.h5"
        patches = [a for name in PATCHES_APPLIED for a in ("--patch", name)]
        p = subprocess.run([sys.executable, __file__, *patches, "--rss-child", str(n),
                            str(sizes.rss_views), str(out)], capture_output=True, text=True,
                           check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out.unlink(missing_ok=True)
        peaks.append(r["peak_kb"] / 1024)
        report.add("rss", f"export N={n:,} C=1000 V={sizes.rss_views} fp16 (3x224x224 images)",
                   r["peak_kb"] / 1024, "MiB peak RSS", after_imports_mib=r["before_kb"] / 1024,
                   store_mib=r["bytes"] / 2**20, rows_per_s=n * (1 + sizes.rss_views) / r["seconds"])
    growth = peaks[-1] / peaks[0]
    n0, n1 = sizes.rss_samples[0], sizes.rss_samples[-1]
    report.add("rss", f"peak RSS at N={n1:,} / at N={n0:,} (3x224x224 images)", growth, "x",
               goal="<= 1.1 (flat)", met=growth <= 1.1)
    log(f"rss section: {time.perf_counter() - t_all:.0f}s")


# ---- candidate patches (tried here by monkeypatching; the library is not edited) -------------

def _normalize_inplace(x: torch.Tensor, mean, std) -> torch.Tensor:
    """labelenh.data.normalize with the same operations in the same order, but in place on the
    one fresh float tensor: (x / 255 - m) / s makes three full-size temporaries."""
    from labelenh.errors import LabelenhError

    fresh = not x.is_floating_point()
    if fresh:
        x = x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # [C, 1, 1]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    if m.shape[0] != x.shape[-3] or s.shape[0] != x.shape[-3]:
        raise LabelenhError(
            f"normalize: {m.shape[0]} means / {s.shape[0]} stds for {x.shape[-3]} channels")
    y = x.div_(255.0) if fresh else x / 255.0
    return y.sub_(m).div_(s)


def patch_normalize_inplace() -> None:
    import labelenh.data
    import labelenh.data.base
    import labelenh.pipeline

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    for x in (u8, u8.float()):  # bit-identical to the library's function
        assert torch.equal(labelenh.data.base.normalize(x.clone(), mean, std),
                           _normalize_inplace(x.clone(), mean, std))
    for mod in (labelenh.data, labelenh.data.base, labelenh.pipeline):
        mod.normalize = _normalize_inplace


def patch_no_fsync() -> None:
    """Measurement only: what the writer's fsync per chunk costs (durability is not optional;
    the candidate is fewer fsyncs, e.g. one per group of chunks before their flags)."""
    import labelenh.store.writer as writer

    writer.fsync = lambda path: None


def patch_cpu_forward_64() -> None:
    """On CPU, run each export block through the teachers in fixed sub-blocks of 64 images
    (still fixed shapes, so still deterministic; the sub-block size would join the store's
    `compute` identity): 256-image activations of a CIFAR ResNet overflow the caches."""
    from labelenh.store.export import TeacherRunner

    forward = TeacherRunner.forward

    def blocked(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        if self.device.type != "cpu" or x.shape[0] <= 64:
            return forward(self, x, what)
        parts = [forward(self, xb, what) for xb in x.split(64)]  # [blocks][teachers] [b, C]
        return [torch.cat([p[t] for p in parts]) for t in range(len(parts[0]))]

    TeacherRunner.forward = blocked


PATCHES: dict[str, Callable[[], None]] = {"cpu-forward-64": patch_cpu_forward_64,
                                          "normalize-inplace": patch_normalize_inplace,
                                          "no-fsync": patch_no_fsync}
PATCHES_APPLIED: list[str] = []


def apply_patches(names: list[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown --patch {name!r}; choose from {', '.join(PATCHES)}")
        PATCHES[name]()
        PATCHES_APPLIED.append(name)
        log(f"patched: {name}")


# ---- profiling ------------------------------------------------------------------------------

def profile_case(name: str, sizes: Sizes, work: Path, steps: int = 20) -> None:
    """cProfile of `steps` student steps of one config, or with "data:<config>" of its batches
    alone (top 25 functions by own time)."""
    from labelenh.data import load_dataset
    from labelenh.store import load_teachers
    from labelenh.views import ViewSpec

    dataset = subset_npz(work / "cifar10-mini-subset.npz", sizes.train_samples)
    bundle = load_dataset(dataset)
    k = bundle.num_classes
    t110 = str(save_teacher(work / "resnet110.pt", "resnet110", k, seed=1,
                            calib=calibration_images(bundle)))
    store = work / "resnet110-ricap.h5"
    if name.removeprefix("data:") in ("kd-sl", "aug-kd-sl+ricap"):
        export(store, load_teachers([t110], "cpu", k), bundle.train, num_classes=k,
               views=sizes.store_views, spec=ViewSpec(op="ricap", pad=bundle.crop_pad),
               mean=bundle.mean, std=bundle.std, dataset=bundle.name, chunk_size=64)
    data_only = name.startswith("data:")
    name = name.removeprefix("data:")
    case = {"vanilla": StudentCase("vanilla"), "kd-sl": StudentCase("kd-sl", "kd-sl", str(store)),
            "vanilla+ricap": StudentCase("vanilla+ricap", aug="ricap"),
            "aug-kd-sl+ricap": StudentCase("aug-kd-sl+ricap", "kd-sl", str(store), aug="ricap"),
            "kd:resnet110": StudentCase("kd:resnet110", "kd", online=[t110])}[name]
    engine, timed, task, _ = build_engine(case, dataset, sizes, work / "runs", steps)
    if data_only:  # the batches alone, several epochs' worth
        timed = DataOnly(task, task.steps_per_epoch)
        run = timed.run
        steps = task.steps_per_epoch
    else:
        run = engine._train_epoch
    run(0)
    prof = cProfile.Profile()
    prof.enable()
    for epoch in range(1, 2 if not data_only else 6):
        run(epoch)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    print(buf.getvalue())
    print(f"median step {statistics.median(timed.times[steps:]) * 1e3:.1f} ms")


# ---- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: every figure in < 5 min")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of student steps")
    ap.add_argument("--steps", type=int, default=None, help="student steps per config per round")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--jsonl", type=Path, default=None, help="also write the JSON lines here")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--profile", default=None,
                    help="cProfile one student config (or data:<config>, its batches) instead")
    ap.add_argument("--own-store-figures", action="store_true",
                    help="measure bytes/reader here instead of calling scripts/bench_store.py")
    ap.add_argument("--patch", action="append", default=[],
                    help=f"try a candidate library patch, monkeypatched: {', '.join(PATCHES)}")
    ap.add_argument("--rss-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    apply_patches(args.patch)
    if args.rss_child:
        rss_child(int(args.rss_child[0]), int(args.rss_child[1]), args.rss_child[2])
        return
    sizes = QUICK if args.quick else Sizes()
    for key in ("rounds", "steps", "batch_size"):
        if getattr(args, key) is not None:
            setattr(sizes, key, getattr(args, key))
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="labelenh-bench-") as tmp:
        work = Path(tmp)
        if args.profile:
            profile_case(args.profile, sizes, work)
            return
        t0 = time.perf_counter()
        env = machine()
        print(json.dumps({"figure": "machine", **env}), flush=True)
        report = Report(args.jsonl)
        if sections & {"student", "online"}:
            run_student_section(report, sizes, work, sections)
        if "export" in sections:
            run_export_section(report, sizes, work)
        bs = load_bench_store() if not args.own_store_figures else None
        if bs is None:
            log("store figures measured by this script (scripts/bench_store.py not used)")
        if "bytes" in sections:
            if bs:
                run_store_bytes(report, bs)
            else:
                run_bytes_section(report, sizes, work)
        if "reader" in sections:
            if bs:
                run_store_reader(report, bs, args.quick, work)
            else:
                run_reader_section(report, sizes, work)
        if "rss" in sections:
            if bs:
                run_store_rss(report, bs, args.quick)
            run_rss_section(report, sizes, work)  # real 224x224 images: the per-chunk memory
        total = time.perf_counter() - t0
        end_load = list(os.getloadavg())
        print(json.dumps({"figure": "run", "seconds": round(total, 1), "quick": args.quick,
                          "patches": PATCHES_APPLIED,
                          "loadavg_start": env["loadavg"], "loadavg_end": end_load}), flush=True)
        table = report.markdown()
        print("\n" + table)
        if args.markdown is not None:
            args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
