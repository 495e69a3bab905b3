"""Method comparison on the bundled real CIFAR-10 subset (5,085 train / 1,017 test images).

    teachers (3 seeds, one ensemble) -> one store (clean + RICAP views, all teachers) ->
    students for every method, several seeds each -> `labelenh report` (tables + plots)

and the same on noisy labels (`--noise symmetric:0.4`) for vanilla, ls, gls (r<0), sl, kd-sl.
Everything runs through the `labelenh` command line; every command is printed. Finished runs are
skipped and interrupted ones resumed, so the script can be run again after a stop.

Budgets (`--budget`; wall times measured on 2 CPU cores with `--jobs 2`, clean + noisy):
  tiny   resnet8 teachers and students, 2 epochs: a smoke run of a few minutes
  small  resnet20 teachers 15 epochs, resnet8 students 6 epochs, 8 views: 41 + 25 minutes
  cpu    resnet20 teachers 30 epochs, resnet8 students 15 epochs, 16 views: about two hours
         (clean alone: 116 minutes with the cores shared about half of the time)
  gpu    resnet56 teachers and resnet20 students, 200 epochs with cosine decay, 64 views: the
         full setting, for one GPU (`--device cuda`)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from driver import default_jobs, finished, resume_flag, run, run_all, store_complete

BUDGETS = {
    #        teacher model, teacher epochs, student model, student epochs, views, seeds
    "tiny": dict(teacher="resnet8", t_epochs=2, student="resnet8", s_epochs=2, views=4, seeds=2, batch=128),
    "small": dict(teacher="resnet20", t_epochs=15, student="resnet8", s_epochs=6, views=8, seeds=3, batch=128),
    "cpu": dict(teacher="resnet20", t_epochs=30, student="resnet8", s_epochs=15, views=16, seeds=3, batch=128),
    "gpu": dict(teacher="resnet56", t_epochs=200, student="resnet20", s_epochs=200, views=64, seeds=3, batch=128),
}

# label -> student flags; the Aug- rows train on the store's RICAP views.
CLEAN_METHODS = {
    "vanilla": ["--method", "vanilla"],
    "ls": ["--method", "ls", "--alpha", "0.1"],
    "gls+": ["--method", "gls", "--smooth-rate", "0.2"],
    "gls-": ["--method", "gls", "--smooth-rate", "-0.2"],
    "ols": ["--method", "ols"],
    "kd": ["--method", "kd"],
    "sl": ["--method", "sl", "STORE1"],
    "en-sl": ["--method", "en-sl", "STORE"],
    "kd-sl": ["--method", "kd-sl", "STORE"],
    "ils": ["--method", "ils", "STORE1"],
    "aug-sl": ["--method", "sl", "STORE1", "--aug", "ricap"],
    "aug-kd-sl": ["--method", "kd-sl", "STORE", "--aug", "ricap"],
}
NOISY_METHODS = ["vanilla", "ls", "gls-", "sl", "kd-sl"]


def experiment(out: Path, b: dict, noise: str | None, methods: list[str], device: str, dry: bool,
               jobs: int = 1, val_split: float | None = None) -> Path:
    data = ["--dataset", "cifar10-mini", "--device", device]
    if val_split:  # held out of training: early stopping's and temperature scaling's split
        data += ["--val-split", str(val_split)]
    if noise:
        data += ["--noise", noise, "--noise-seed", "0"]
    runs = out / "runs"
    sched = ["--schedule", "cosine", "--warmup-epochs", "1", "--lr", "0.1", "--nesterov",
             "--batch-size", str(b["batch"]), "--weight-decay", "5e-4"]
    teachers, todo = [], []
    for s in range(b["seeds"]):
        name = f"teacher-s{s}"
        if not finished(runs / name):
            todo.append(["teach", "--model", b["teacher"], "--epochs", str(b["t_epochs"]), "--seed", str(s),
                 "--name", name, "--runs-dir", str(runs), *sched, *data, *resume_flag(runs / name)])
        teachers.append(runs / name)
    run_all(todo, dry, jobs)
    store = out / "store.h5"
    if not store_complete(store):  # an interrupted export resumes when rerun with the same arguments
        tflags = [x for t in teachers for x in ("--teacher", str(t))]
        run(["export-soft-labels", *tflags, "--out", str(store), "--aug", "ricap", "--views", str(b["views"]),
             "--view-seed", "0", "--format", "fp16", *data], dry)
    first = teachers[0].name
    todo = []
    for label in methods:
        flags = []
        for f in CLEAN_METHODS[label]:
            if f == "STORE":
                flags += ["--store", str(store)]
            elif f == "STORE1":  # single-teacher methods read the first teacher only
                flags += ["--store", str(store), "--teachers", first]
            else:
                flags.append(f)
        if label == "kd":
            flags += ["--teacher", str(teachers[0])]
        for s in range(b["seeds"]):
            name = f"{label}-s{s}"
            if finished(runs / name):
                continue
            todo.append(["student", *flags, "--model", b["student"], "--epochs", str(b["s_epochs"]),
                         "--seed", str(s), "--name", name, "--runs-dir", str(runs), *sched, *data,
                         *resume_flag(runs / name)])
    run_all(todo, dry, jobs)
    run(["report", str(runs), "--out", str(out / "report")], dry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--out", default="results/cifar10-mini")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", choices=["clean", "noisy", "both"], default="both")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--jobs", type=int, default=None,
                    help="independent runs at a time (one thread each); default: 2 on a CPU with 2+ cores, "
                         "1 on a GPU")
    ap.add_argument("--val-split", type=float, default=None,
                    help="hold out this fraction of train for validation: every run then reports its "
                         "metrics after temperature scaling fitted there")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated subset of {', '.join(CLEAN_METHODS)} (default: all of the experiment's)")
    a = ap.parse_args()
    a.jobs = default_jobs(a.jobs, a.device, ap)
    chosen = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
    unknown = sorted(set(chosen or []) - set(CLEAN_METHODS))
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(CLEAN_METHODS)}")
    b = BUDGETS[a.budget]
    t0 = time.perf_counter()
    out = Path(a.out)
    if a.only in ("clean", "both"):
        experiment(out / "clean", b, None, chosen or list(CLEAN_METHODS), a.device, a.dry_run, a.jobs,
                   a.val_split)
    if a.only in ("noisy", "both"):
        experiment(out / "noisy-sym0.4", b, "symmetric:0.4", chosen or NOISY_METHODS, a.device, a.dry_run,
                   a.jobs, a.val_split)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min (budget {a.budget}); tables in {out}/*/report/report.md")


if __name__ == "__main__":
    main()
