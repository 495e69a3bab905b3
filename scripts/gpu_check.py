"""GPU readiness check: the CUDA paths of labelenh exercised and measured in one short run.

GPU time is scarce, so everything a GPU run should prove is prepared here and runs in a few
minutes. `scripts/gpu_check.sh` installs the project and runs each stage in its own process
under a timeout; `--dry-run` runs every stage on the CPU at tiny sizes (the test suite does),
so the check is known to work before a GPU is spent on it.

Stages (`--stage NAME`; `all` runs them in order in this process):
  env         GPU, driver, torch, CUDA and cuDNN versions, the commit
  cuda-tests  `pytest -m cuda`: the tests that need a CUDA device
  views       every view op replayed on CUDA against the CPU replay: bit-identical, except the
              ops that resample or blend in float (mixup, rrc), within a tolerance
  export      a store exported on CUDA (fp32, fp16 and bf16 autocast) against the CPU export:
              max |delta logit| within the tolerance the store's own --verify allows
  student     images/s of resnet20 students on cifar10-mini, batch 128 and 512: vanilla,
              kd-sl from the store, online kd with resnet110; bf16/fp16 autocast, channels-last
              on/off; one process, interleaved rounds, medians
  compile     the same students with torch.compile around the model (the engine has no
              compile option; this says what one would buy), eager and compiled interleaved;
              a stage of its own so that a long compile cannot cost the student figures
  folder      the lazy image-folder path on generated JPEGs: how long the model waits for its
              input, per step; nvjpeg decoding (torchvision.io) where CUDA is there
  report      the JSON lines as a Markdown table

Every figure is one JSON line in OUT/gpu_check.jsonl; `report` writes OUT/gpu_check.md. A
correctness failure (a view that differs, an export beyond tolerance, a failing CUDA test) ends
the stage with exit status 1 and one line naming the stage; a missed speed goal is a figure
with met = false, not an error.

Usage:
  python scripts/gpu_check.py --stage all --out OUT [--dry-run]
  python scripts/gpu_check.py --stage views --out OUT --work WORK
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402  (scripts/ is no package: bench.py sits beside this file)
    DataOnly,
    FixedBatchTask,
    TimedTask,
    calibration_images,
    save_teacher,
    subset_npz,
)

REPO = Path(__file__).resolve().parent.parent
STAGES = ("env", "cuda-tests", "views", "export", "student", "compile", "folder", "report")
JSONL, MARKDOWN = "gpu_check.jsonl", "gpu_check.md"

# Ops whose CUDA rendering may round differently from the CPU's: mixup blends in float32, rrc
# resamples with float filter taps and rounds to uint8 (a value on a .5 boundary may land one
# grey level apart). Every other op copies or selects pixels and must match bit for bit, so an
# op added later is held to bit-identity until it is listed here. Values: max |delta pixel|.
FLOAT_VIEW_OPS = {"mixup": 1e-3, "rrc": 1.0}


class CheckFailed(Exception):
    """A stage found the CUDA path wrong (not merely slow)."""


# ---- sizes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """Everything that differs between a GPU run and the CPU dry run."""

    view_samples: int = 512
    view_image: tuple[int, int] = (40, 36)  # not square, so a swapped axis shows
    export_samples: int = 1024
    export_views: int = 4
    export_chunk: int = 256
    export_teacher: str = "resnet20"
    student_model: str = "resnet20"
    train_samples: int = 5085  # all of cifar10-mini
    batch_sizes: tuple[int, ...] = (128, 512)
    online_teacher: str = "resnet110"
    rounds: int = 6  # interleaved rounds after one warm-up round
    steps: int = 8  # steps per config per round (<= 9: batch 512 never reaches the short batch)
    compile_backend: str = "inductor"
    compile_cases: tuple[str, ...] = ("vanilla", "kd-sl")
    folder_train: int = 512  # generated JPEGs
    folder_file: tuple[int, int] = (256, 320)  # (H, W) of each file
    folder_image_size: int = 224
    folder_model: str = "torchvision:resnet50"
    folder_batch: int = 64
    folder_rounds: int = 3
    folder_steps: int = 3
    nvjpeg_reps: int = 5


# The dry run: the same code on the CPU, every loop 1-2 iterations. torch.compile's default
# backend would compile C++ for minutes on a CPU; "eager" runs the same wrapping without it.
DRY = Sizes(view_samples=24, export_samples=32, export_views=2, export_chunk=16,
            export_teacher="resnet8", student_model="resnet8", train_samples=32, batch_sizes=(8,),
            online_teacher="resnet8", rounds=1, steps=1, compile_backend="eager",
            compile_cases=("vanilla",), folder_train=16, folder_file=(40, 48), folder_image_size=32,
            folder_model="resnet8", folder_batch=8, folder_rounds=1, folder_steps=1, nvjpeg_reps=1)


@dataclass
class Check:
    """One run of the check: where figures go, scratch space, the device and the sizes."""

    out: Path
    work: Path
    dry_run: bool
    sizes: Sizes
    device: torch.device

    def emit(self, figure: str, case: str, value: Any, unit: str = "", *, goal: str | None = None,
             met: bool | None = None, **extra: Any) -> None:
        """One figure: a JSON line on stdout and in OUT/gpu_check.jsonl."""
        row = {"figure": figure, "case": case, "value": _round(value), "unit": unit, "goal": goal,
               "met": met, "device": self.device.type, "dry_run": self.dry_run,
               **{k: _round(v) for k, v in extra.items()}}
        line = json.dumps(row)
        print(line, flush=True)
        with open(self.out / JSONL, "a") as f:
            f.write(line + "\n")


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- stage: env -----------------------------------------------------------------------------

def stage_env(c: Check) -> None:
    import h5py

    import labelenh
    from labelenh.utils import git_commit

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
                            "h5py": h5py.__version__, "labelenh": labelenh.__version__,
                            "labelenh_path": str(Path(labelenh.__file__).parent),
                            "git_commit": git_commit(), "cpus": os.cpu_count()}
    if c.device.type == "cuda":
        p = torch.cuda.get_device_properties(c.device)
        info.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                    bf16=torch.cuda.is_bf16_supported(), driver=_driver_version())
    c.emit("env", "versions", torch.cuda.get_device_name(c.device) if c.device.type == "cuda" else "cpu",
           **info)


def _driver_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    return "unknown"


# ---- stage: cuda-tests ----------------------------------------------------------------------

def stage_cuda_tests(c: Check) -> None:
    """`pytest -m cuda`: on a GPU every selected test must run and pass; on the CPU they skip."""
    xml = c.work / "cuda-tests.xml"
    # one process (-n 0 where xdist is installed): the GPU is one device
    xdist = ["-n", "0"] if importlib.util.find_spec("xdist") is not None else []
    # The dry run collects only the files that mark tests `cuda` (collecting the whole suite
    # takes longer than the tests it selects); on a GPU, all of tests/ in case a mark is missed.
    paths = ["tests"]
    if c.dry_run:
        paths = [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py"))
                 if "mark.cuda" in p.read_text()]
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *xdist, "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *paths]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), file=sys.stderr)
    if not xml.is_file():
        raise CheckFailed(f"pytest -m cuda exited {r.returncode} without a report: {tail[-1] if tail else ''}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    c.emit("cuda-tests", "pytest -m cuda", passed, "passed", goal="all selected pass",
           met=r.returncode == 0 and counts["tests"] > 0, seconds=seconds, **counts)
    if r.returncode != 0 or counts["tests"] == 0:
        raise CheckFailed(f"pytest -m cuda: {counts['failures']} failed, {counts['errors']} errors of "
                          f"{counts['tests']} (exit {r.returncode})")
    if c.device.type == "cuda" and counts["skipped"]:
        raise CheckFailed(f"pytest -m cuda skipped {counts['skipped']} of {counts['tests']} tests on a CUDA machine")


# ---- stage: views ---------------------------------------------------------------------------

def view_ops() -> list[str]:
    """Names of every view op, from the views registry of this checkout: a registry module
    (`labelenh.views.registry` or the `labelenh.views.ops` package) where there is one, else the
    `OPS` tuple of `labelenh.views`."""
    for name in ("labelenh.views.registry", "labelenh.views.ops"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module is there but something it imports is not
                raise
            continue
        ops = getattr(mod, "OPS", None)
        if ops:
            return list(ops)  # a dict of name -> op, or a sequence of names
    from labelenh import views

    return list(views.OPS)


def view_spec(op: str) -> Any:
    """A spec of `op` that mixes most views (mix_prob 0.8, where the op has that option)."""
    from labelenh import views

    get_op = getattr(views, "get_op", None)
    if get_op is not None and hasattr(views.ViewSpec, "build"):
        # registry ops: options apply only where the op (or its base) declares them
        return views.ViewSpec.build(op, {"mix_prob": 0.8}, **get_op(op).example())
    return views.ViewSpec(op=op, mix_prob=0.8)


def view_tolerance(spec: Any) -> float:
    """max |delta pixel| allowed between CUDA and CPU for `spec`: 0 unless it uses a float op
    (a spec may name other ops: a base, or several ops of one store)."""
    names: set[str] = set()

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            if isinstance(d.get("op"), str):
                names.add(d["op"])
            for v in d.values():
                walk(v)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v)

    walk(spec.to_dict())
    return max((FLOAT_VIEW_OPS.get(n, 0.0) for n in names), default=0.0)


def compare_views(op: str, device: torch.device, n: int, image: tuple[int, int], seed: int = 11
                  ) -> dict[str, Any]:
    """Replay 3 views of n random images on `device` and on the CPU; the differences."""
    from labelenh.views import apply_views, sample_views

    g = torch.Generator().manual_seed(seed)
    k = 7
    images = torch.randint(0, 256, (n, 3, *image), dtype=torch.uint8, generator=g)  # [N, 3, H, W]
    labels = torch.randint(0, k, (n,), generator=g)
    spec = view_spec(op)
    rec = sample_views(n, 3, spec, seed, image)
    src, lab = images[rec.sources()], labels[rec.sources()]  # [B, S, 3, H, W], [B, S]
    x, w = apply_views(src, rec, lab, k)
    xd, wd = apply_views(src.to(device), rec, lab.to(device), k)
    if xd.device.type != device.type:
        raise CheckFailed(f"view {op}: rendered on {xd.device}, not on {device}")
    xd, wd = xd.cpu(), wd.cpu()
    tol = view_tolerance(spec)
    dx = float((xd - x).abs().max()) if x.numel() else 0.0
    dw = float((wd - w).abs().max()) if w.numel() else 0.0
    exact = torch.equal(xd, x) and torch.equal(wd, w)
    ok = exact if tol == 0 else (dx <= tol and dw <= 1e-6)
    return {"max_dpixel": dx, "max_dweight": dw, "exact": exact, "tolerance": tol, "ok": ok,
            "differing": float((xd != x).float().mean()), "views": len(rec)}


def stage_views(c: Check) -> None:
    bad = []
    for op in view_ops():
        r = compare_views(op, c.device, c.sizes.view_samples, c.sizes.view_image)
        goal = "bit-identical" if r["tolerance"] == 0 else f"|dpixel| <= {r['tolerance']:g}"
        c.emit("views", f"{op}: {c.device.type} vs cpu replay", r["max_dpixel"], "max |dpixel|", goal=goal,
               met=r["ok"], **{k: v for k, v in r.items() if k not in ("max_dpixel", "ok")})
        if not r["ok"]:
            bad.append(op)
    if bad:
        raise CheckFailed(f"views on {c.device.type} differ from the CPU replay: {', '.join(bad)}")


# ---- stage: export --------------------------------------------------------------------------

def stage_export(c: Check) -> None:
    """The same store written on the CPU and on CUDA (fp32 logits stored, so only the compute
    differs); recipes and labels must match exactly, logits within --verify's tolerance."""
    import h5py

    from labelenh.data import load_dataset
    from labelenh.store import SoftLabelStore, export_soft_labels, load_teachers
    from labelenh.store.schema import LogitFormat
    from labelenh.store.verify import tolerance
    from labelenh.views import ViewSpec

    s = c.sizes
    bundle = load_dataset(subset_npz(c.work / "export.npz", s.export_samples))
    k, n = bundle.num_classes, len(bundle.train)
    ckpt = save_teacher(c.work / "export-teacher.pt", s.export_teacher, k, seed=1, calib=calibration_images(bundle))
    spec = ViewSpec(op="ricap", pad=bundle.crop_pad)
    runs = [("cpu", "off"), (c.device.type, "off"), (c.device.type, "fp16"), (c.device.type, "bf16")]
    stores: dict[int, Path] = {}
    for i, (dev, amp) in enumerate(runs):
        path = c.work / f"export-{i}-{dev}-{amp}.h5"
        t = time.perf_counter()
        export_soft_labels(path, load_teachers([str(ckpt)], dev, k), bundle.train, dataset=bundle.name,
                           num_classes=k, mean=bundle.mean, std=bundle.std, num_views=s.export_views,
                           spec=spec, view_seed=0, fmt="fp32", chunk_size=s.export_chunk, device=dev,
                           amp=amp, overwrite=True)
        sync(torch.device(dev))
        seconds = time.perf_counter() - t
        stores[i] = path
        c.emit("export", f"export on {dev}, amp {amp}", n * (1 + s.export_views) / seconds, "rows/s",
               samples=n, views=s.export_views, seconds=seconds)

    samples = torch.arange(n).repeat_interleave(s.export_views)
    views = torch.arange(s.export_views).repeat(n)

    def read(path: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, dict]:
        with SoftLabelStore.open(path, preload=True) as st:
            clean, vl = st.clean_logits(torch.arange(n)), st.view_logits(samples, views)
            compute = dict(st.attrs.get("compute") or {})
        with h5py.File(path, "r") as f:
            recipes, labels = f["views/recipes"][()], f["labels"][()]
        return clean, vl, recipes, labels, compute

    ref = read(stores[0])
    bad = []
    for i, (dev, amp) in enumerate(runs[1:], 1):
        clean, vl, recipes, labels, compute = read(stores[i])
        same_records = recipes.tobytes() == ref[2].tobytes() and np.array_equal(labels, ref[3])
        atol, rtol = tolerance(LogitFormat.parse("fp32", k), compute)  # what --verify allows here
        diff = torch.cat([(clean - ref[0]).abs().flatten(), (vl - ref[1]).abs().flatten()])
        scale = torch.cat([ref[0].abs().flatten(), ref[1].abs().flatten()])
        worst = float((diff / (atol + rtol * scale)).max())
        ok = same_records and worst <= 1.0
        c.emit("export", f"{dev} amp {compute.get('amp', amp)} vs cpu: logits", float(diff.max()),
               "max |dlogit|", goal=f"<= {atol:g} + {rtol:g}|z|", met=ok, atol=atol, rtol=rtol,
               worst_ratio=worst, same_recipes_and_labels=same_records)
        if not ok:
            bad.append(f"{dev}/{amp} (max |dlogit| {float(diff.max()):.3g}, recipes "
                       f"{'equal' if same_records else 'DIFFER'})")
    if bad:
        raise CheckFailed(f"export on {c.device.type} differs from the CPU export: {'; '.join(bad)}")


# ---- student engines ------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One student configuration of the speed matrix."""

    case: str  # vanilla | kd-sl | kd
    batch: int
    amp: str  # bf16 | fp16 | off
    channels_last: bool
    compiled: bool = False

    @property
    def key(self) -> str:
        return (f"{self.case} b{self.batch} {self.amp} {'cl' if self.channels_last else 'nchw'}"
                f"{' compiled' if self.compiled else ''}")


KNOBS = {"amp": ("autocast", "--amp"), "channels_last": ("channels-last", "--channels-last"),
         "compile": ("torch.compile", "--compile"), "workers": ("loader workers", "--workers")}


def missing_knobs() -> dict[str, str]:
    """Engine and data options this check would measure but the code does not have (yet)."""
    from labelenh.engine import TrainConfig
    from labelenh.student import StudentSettings
    from labelenh.teach import DataSettings

    have = {f.name for cls in (TrainConfig, StudentSettings, DataSettings) for f in fields(cls)}
    return {k: what for k, (what, _) in KNOBS.items() if k not in have}


def knobs_without_flag() -> list[str]:
    """Options the engine has but `labelenh student` offers no flag for (set here directly)."""
    import labelenh.cli

    cli = "".join(p.read_text() for p in Path(labelenh.cli.__file__).parent.glob("*.py"))
    missing = missing_knobs()
    return [what for k, (what, flag) in KNOBS.items() if k not in missing and f'"{flag}"' not in cli]


def knobs_line() -> str:
    missing, no_flag = list(missing_knobs().values()), knobs_without_flag()
    parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"no student flag: {', '.join(no_flag)}"] if no_flag else [])
    return "; ".join(parts) or "none"


def workers_field() -> str | None:
    """The settings field that sets loader workers for image folders, if the code has one."""
    from labelenh.student import StudentSettings
    from labelenh.teach import DataSettings

    for cls in (DataSettings, StudentSettings):
        for name in ("workers", "num_workers"):
            if name in {f.name for f in fields(cls)}:
                return f"{cls.__name__}.{name}"
    return None


def build_engine(c: Check, cfg: Config, dataset: str, run_dir: Path, *, store: str | None = None,
                 teacher: str | None = None, model: str | None = None, image_size: int | None = None,
                 workers: int | None = None, fixed: bool = False, net: nn.Module | None = None):
    """(engine, timed task, student task) as `labelenh.student.train_student` builds them, with
    the task wrapped for timing (`Engine._train_epoch` is called directly, no fit). `net`: a
    student model to use instead of a fresh one."""
    from labelenh.engine import Engine, TrainConfig
    from labelenh.models import build_model
    from labelenh.student import StudentSettings, build_task
    from labelenh.teach import DataSettings
    from labelenh.utils import derive_seed

    model = model or c.sizes.student_model
    train = TrainConfig(epochs=10_000, batch_size=cfg.batch, schedule="constant", milestones=[], seed=0,
                        amp=cfg.amp, channels_last=cfg.channels_last)
    data = DataSettings(dataset=dataset, image_size=image_size)
    s = StudentSettings(model=model, method=cfg.case, store=store,
                        online_teachers=[teacher] if teacher else [], data=data, train=train,
                        device=c.device.type)
    if workers is not None:
        holder, name = workers_field().split(".")
        setattr(data if holder == "DataSettings" else s, name, workers)
    task = build_task(s, c.device, warn=lambda m: None)
    if net is None:
        torch.manual_seed(derive_seed(0, "init"))
        net = build_model(model, task.pipe.bundle.num_classes, in_chans=task.pipe.bundle.train.image_shape[0])
    timed = (FixedBatchTask if fixed else TimedTask)(task, c.sizes.steps)
    engine = Engine(net, timed, train, run_dir / cfg.key.replace(" ", "_"), device=c.device,
                    run_config={}, checkpoint_meta={}, progress=False)
    return engine, timed, task


class TeacherProbe:
    """The online teacher's forward as `StudentTask.loss` runs it inside the engine: no_grad,
    under the engine's autocast, on channels-last input when the engine uses it."""

    def __init__(self, c: Check, cfg: Config, teachers: list[nn.Module], task: Any) -> None:
        from labelenh.amp import autocast_dtype

        self.c, self.teachers, self.steps = c, teachers, c.sizes.steps
        self.dtype = autocast_dtype(cfg.amp, c.device)
        it = iter(task.train_batches(0))
        xs = [next(it).x for _ in range(min(self.steps, task.steps_per_epoch))]
        cl = cfg.channels_last and c.device.type == "cuda"
        self.xs = [x.contiguous(memory_format=torch.channels_last) if cl else x for x in xs]
        self.times: list[float] = []

    def run(self, epoch: int) -> None:
        for i in range(self.steps):
            x = self.xs[i % len(self.xs)]
            sync(self.c.device)
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast(self.c.device.type, dtype=self.dtype,
                                                 enabled=self.dtype is not None):
                torch.stack([m(x).float() for m in self.teachers], dim=1)  # [B, M, C]
            sync(self.c.device)
            self.times.append(time.perf_counter() - t)


def interleave(runners: dict[str, Callable[[int], None]], timers: dict[str, Any], rounds: int
               ) -> dict[str, float]:
    """One warm-up round, then `rounds` rounds over every runner in a rotating order; median
    seconds per step of each. Rotation gives no runner a fixed place after another."""
    names = list(runners)
    for name in names:  # warm-up: cuDNN algorithm choice, allocator, autocast caches, compile
        runners[name](0)
        timers[name].times.clear()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runners[name](r + 1)
    return {n: statistics.median(timers[n].times) for n in names}


def student_data(c: Check) -> tuple[str, Any, str, str]:
    """(dataset spec, bundle, online teacher checkpoint, store exported from it on the device)."""
    from labelenh.data import load_dataset
    from labelenh.store import export_soft_labels, load_teachers

    dataset = subset_npz(c.work / "student.npz", c.sizes.train_samples)
    bundle = load_dataset(dataset)
    k = bundle.num_classes
    teacher = c.work / f"{c.sizes.online_teacher}.pt"
    store = c.work / f"{c.sizes.online_teacher}-clean.h5"
    if not (teacher.is_file() and store.is_file()):  # the compile stage reuses the student stage's
        save_teacher(teacher, c.sizes.online_teacher, k, seed=1, calib=calibration_images(bundle))
        export_soft_labels(store, load_teachers([str(teacher)], c.device, k), bundle.train,
                           dataset=bundle.name, num_classes=k, mean=bundle.mean, std=bundle.std,
                           fmt="fp16", device=c.device, overwrite=True)
    return dataset, bundle, str(teacher), str(store)


def stage_student(c: Check) -> None:
    s = c.sizes
    dataset, _, teacher, store = student_data(c)
    c.emit("student", "knobs", knobs_line(), "",
           note="missing knobs are not measured; knobs without a flag are set on TrainConfig here")
    configs: list[Config] = []
    for b in s.batch_sizes:
        configs.append(Config("vanilla", b, "off", True))  # the fp32 reference for autocast
        for amp in ("bf16", "fp16"):
            for cl in (True, False):
                configs += [Config(case, b, amp, cl) for case in ("vanilla", "kd-sl", "kd")]
    runners: dict[str, Callable[[int], None]] = {}
    timers: dict[str, Any] = {}
    for cfg in configs:
        engine, timed, task = build_engine(c, cfg, dataset, c.work / "runs", store=store if cfg.case == "kd-sl" else None,
                                           teacher=teacher if cfg.case == "kd" else None)
        runners[cfg.key], timers[cfg.key] = engine._train_epoch, timed
        if cfg.case == "kd":  # the teacher's forward alone, for the ideal online/store ratio
            probe = TeacherProbe(c, cfg, task.online, task)
            key = f"fwd {cfg.key[3:]}"
            runners[key], timers[key] = probe.run, probe
    log(f"student: {len(runners)} configs x {s.rounds} rounds x {s.steps} steps, interleaved")
    sec = interleave(runners, timers, s.rounds)
    for cfg in configs:
        c.emit("student", cfg.key, cfg.batch / sec[cfg.key], "images/s", ms_per_step=sec[cfg.key] * 1e3,
               steps=len(timers[cfg.key].times))
    for b in s.batch_sizes:
        ref = Config("vanilla", b, "off", True).key
        for amp in ("bf16", "fp16"):
            for cl in (True, False):
                def key(case: str) -> str:
                    return Config(case, b, amp, cl).key  # noqa: B023  (used in this iteration only)
                van, sl, kd, fwd = sec[key("vanilla")], sec[key("kd-sl")], sec[key("kd")], sec[f"fwd {key('kd')[3:]}"]
                tag = f"b{b} {amp} {'cl' if cl else 'nchw'}"
                v = van / sl
                c.emit("student", f"kd-sl / vanilla images/s, {tag}", v, "x", goal=">= 0.95", met=v >= 0.95)
                actual, ideal = kd / sl, (van + fwd) / van
                frac = actual / ideal
                c.emit("student", f"online kd ({s.online_teacher}) / kd-sl step, {tag}, of ideal", frac,
                       "fraction", goal=">= 0.9", met=frac >= 0.9, actual=actual, ideal=ideal)
                if cl:
                    c.emit("student", f"vanilla {tag} / fp32 images/s", sec[ref] / van, "x")
            c.emit("student", f"channels-last / NCHW vanilla images/s, b{b} {amp}",
                   sec[Config("vanilla", b, amp, False).key] / sec[Config("vanilla", b, amp, True).key], "x")


def stage_compile(c: Check) -> None:
    """torch.compile around the student model, next to the same student in eager mode."""
    from labelenh.models import build_model

    s = c.sizes
    dataset, bundle, _, store = student_data(c)
    b = s.batch_sizes[0]
    # One compiled model serves both methods: their losses lie outside the model, so the graph
    # is the same, and it is compiled once rather than once per config (minutes on a GPU host).
    torch.manual_seed(0)
    compiled_net = torch.compile(build_model(s.student_model, bundle.num_classes), backend=s.compile_backend)
    runners: dict[str, Callable[[int], None]] = {}
    timers: dict[str, Any] = {}
    first: dict[str, float] = {}
    for case in s.compile_cases:
        for compiled in (False, True):
            cfg = Config(case, b, "bf16", True, compiled)
            engine, timed, _ = build_engine(c, cfg, dataset, c.work / "runs-compile",
                                            store=store if case == "kd-sl" else None,
                                            net=compiled_net if compiled else None)
            t = time.perf_counter()
            engine._train_epoch(0)  # the first steps compile: timed apart
            first[cfg.key] = time.perf_counter() - t
            timed.times.clear()
            runners[cfg.key], timers[cfg.key] = engine._train_epoch, timed
    sec = interleave(runners, timers, s.rounds)
    for case in s.compile_cases:
        eager, comp = Config(case, b, "bf16", True).key, Config(case, b, "bf16", True, True).key
        c.emit("compile", f"{case} b{b} bf16 cl: compiled / eager images/s", sec[eager] / sec[comp], "x",
               backend=s.compile_backend, first_epoch_s=first[comp], eager_first_epoch_s=first[eager],
               note="torch.compile applied by this script" + (
                   "; the engine has no compile option" if "compile" in missing_knobs() else ""))


# ---- stage: folder --------------------------------------------------------------------------

def make_jpegs(root: Path, n_train: int, size: tuple[int, int], classes: int = 8, seed: int = 0) -> None:
    """An ImageFolder of smooth random JPEGs (train/ and a small val/), made once."""
    from PIL import Image

    if (root / "done").is_file():
        return
    rng = np.random.default_rng(seed)
    h, w = size
    for split, count in (("train", n_train), ("val", classes * 2)):
        for i in range(count):
            d = root / split / f"class{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((w, h), Image.BILINEAR)  # photo-like: compresses as JPEGs do
            img.save(d / f"{i:05d}.jpg", quality=90)
    (root / "done").write_text("")


def stage_folder(c: Check) -> None:
    """A student step on the lazy folder path vs the same step on a prepared batch: the
    difference is the time the model waits for its input."""
    s = c.sizes
    root = c.work / "jpegs"
    make_jpegs(root, s.folder_train, s.folder_file)
    dataset = f"folder:{root}"
    wf = workers_field()
    workers = None if wf is None else min(8, os.cpu_count() or 1)
    cfg = Config("vanilla", s.folder_batch, "bf16", True)
    kw = {"model": s.folder_model, "image_size": s.folder_image_size, "workers": workers}
    engine, timed, task = build_engine(c, cfg, dataset, c.work / "runs-folder", **kw)
    engine_f, timed_f, _ = build_engine(c, cfg, dataset, c.work / "runs-folder-fixed", fixed=True, **kw)
    data = DataOnly(task, s.folder_steps)
    runners = {"step": engine._train_epoch, "model step": engine_f._train_epoch, "data": data.run}
    timers = {"step": timed, "model step": timed_f, "data": data}
    for t in timers.values():
        t.steps = s.folder_steps
    sec = interleave(runners, timers, s.folder_rounds)
    path = f"{workers} loader workers ({wf})" if wf else "in-process decode (no loader-workers option)"
    wait = max(0.0, sec["step"] - sec["model step"]) / sec["step"]
    common = {"model": s.folder_model, "batch": s.folder_batch, "image_size": s.folder_image_size,
              "file": list(s.folder_file), "path": path}
    c.emit("folder", "student step, lazy folder", s.folder_batch / sec["step"], "images/s",
           ms_per_step=sec["step"] * 1e3, **common)
    c.emit("folder", "model step on a prepared batch", sec["model step"] * 1e3, "ms", **common)
    c.emit("folder", "making one batch (decode + views + normalise)", sec["data"] * 1e3, "ms", **common)
    c.emit("folder", "share of a step spent waiting for input", wait, "fraction", goal="<= 0.05",
           met=wait <= 0.05, **common)
    nvjpeg_probe(c, root, s.folder_batch)


def nvjpeg_probe(c: Check, root: Path, batch: int) -> None:
    """Decode throughput of the same files with nvjpeg (torchvision.io.decode_jpeg on CUDA)
    against PIL as the folder source uses it; labelenh itself decodes with PIL."""
    from labelenh.data.folder import decode

    files = sorted((root / "train").rglob("*.jpg"))[:batch]
    t = time.perf_counter()
    for f in files:
        decode(f, c.sizes.folder_image_size)
    pil = len(files) / (time.perf_counter() - t)
    c.emit("folder", "PIL decode + resize (as FolderImages)", pil, "images/s", images=len(files))
    if c.device.type != "cuda":
        c.emit("folder", "nvjpeg decode", "skipped", "", note="needs CUDA")
        return
    from torchvision.io import decode_jpeg, read_file

    data = [read_file(str(f)) for f in files]
    decode_jpeg(data, device=c.device)  # warm-up: creates the nvjpeg handle
    sync(c.device)
    t = time.perf_counter()
    for _ in range(c.sizes.nvjpeg_reps):
        decode_jpeg(data, device=c.device)
    sync(c.device)
    gpu = len(files) * c.sizes.nvjpeg_reps / (time.perf_counter() - t)
    c.emit("folder", "nvjpeg decode (torchvision.io, batched)", gpu, "images/s", images=len(files),
           vs_pil=gpu / pil, note="decode only (PIL's figure includes the resize); labelenh decodes with PIL")


# ---- stage: report --------------------------------------------------------------------------

def stage_report(c: Check) -> None:
    rows = [json.loads(line) for line in (c.out / JSONL).read_text().splitlines() if line.strip()]
    env = next((r for r in rows if r["figure"] == "env"), {})
    head = ["# GPU check", ""]
    if env:
        keys = ("gpu", "driver", "torch", "cuda", "cudnn", "python", "labelenh", "git_commit")
        head += [f"- {k}: {env.get(k, env['value'] if k == 'gpu' else '-')}" for k in keys]
        head.append(f"- dry run: {env.get('dry_run')}")
    table = ["", "| figure | case | value | unit | goal | met |", "|---|---|---:|---|---|---|"]
    for r in rows:
        if r["figure"] == "env":
            continue
        met = "" if r.get("met") is None else ("yes" if r["met"] else "**no**")
        v = r["value"]
        vs = f"{v:,.3f}" if isinstance(v, float) and abs(v) < 100 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
        table.append(f"| {r['figure']} | {r['case']} | {vs} | {r.get('unit', '')} | {r.get('goal') or ''} | {met} |")
    text = "\n".join(head + table) + "\n"
    (c.out / MARKDOWN).write_text(text)
    print(text)


# ---- main -----------------------------------------------------------------------------------

RUN: dict[str, Callable[[Check], None]] = {
    "env": stage_env, "cuda-tests": stage_cuda_tests, "views": stage_views, "export": stage_export,
    "student": stage_student, "compile": stage_compile, "folder": stage_folder, "report": stage_report,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as labelenh's own CLI
        print(f"gpu_check.py: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description="GPU readiness check (see the module doc).")
    p.add_argument("--stage", default="all", choices=(*STAGES, "all"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    return p.parse_args(argv)


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        yield Path(d)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device here (torch sees none); use --dry-run on a CPU machine",
              file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = False  # as the engine leaves it: measure what users get
    with work_dir(a.work) as work:
        c = Check(out=a.out, work=work, dry_run=a.dry_run, sizes=DRY if a.dry_run else Sizes(),
                  device=torch.device("cpu" if a.dry_run else "cuda"))
        if a.dry_run:
            torch.set_num_threads(min(2, torch.get_num_threads()))
        for stage in STAGES if a.stage == "all" else (a.stage,):
            t = time.perf_counter()
            try:
                RUN[stage](c)
            except Exception as e:  # noqa: BLE001  (any error fails the stage, in one named line)
                if not isinstance(e, CheckFailed):
                    traceback.print_exc()
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                c.emit("stage", stage, "failed", "", seconds=time.perf_counter() - t, error=msg)
                print(f"gpu_check.py: stage {stage} failed: {msg}", file=sys.stderr)
                return 1
            if stage != "report":
                c.emit("stage", stage, "ok", "", seconds=time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
