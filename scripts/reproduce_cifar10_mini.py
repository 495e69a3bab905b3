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
  converged  the regime of the label-enhancement claims: resnet20 teachers and resnet8 students
         trained on clean images until their train accuracy passes 99 % (30 epochs, multistep
         at 20 and 25), a validation split every method shares for temperature scaling, one
         store per view op (RICAP and CutMix) with a view for every student epoch, every method
         on clean and on 40 % symmetric noise, 3 seeds; the expected wall time of each part is
         printed before it starts (about 3 hours a half on two free cores)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from driver import default_jobs, finished, on_gpu, resume_flag, run, run_all, store_complete

BUDGETS = {
    #        teacher model, teacher epochs, student model, student epochs, views, seeds
    "tiny": dict(teacher="resnet8", t_epochs=2, student="resnet8", s_epochs=2, views=4, seeds=2, batch=128),
    "small": dict(teacher="resnet20", t_epochs=15, student="resnet8", s_epochs=6, views=8, seeds=3, batch=128),
    "cpu": dict(teacher="resnet20", t_epochs=30, student="resnet8", s_epochs=15, views=16, seeds=3, batch=128),
    "gpu": dict(teacher="resnet56", t_epochs=200, student="resnet20", s_epochs=200, views=64, seeds=3, batch=128),
    # Measured on this subset (RESULTS.md, "Converged"): with crop/flip a resnet20 reached only
    # 94.5 % train accuracy after 51 epochs (milestones 30, 45) and would need ~150 or more,
    # about 100 CPU hours for this grid; without augmentation a resnet8 passes 99 % at epoch 22
    # with milestones at 20. So teachers and students train on the clean images (the Aug- rows
    # on their stored views), 30 epochs with the rate cut at 20 and 25.
    "converged": dict(teacher="resnet20", t_epochs=30, student="resnet8", s_epochs=30, views=30, seeds=3,
                      batch=128, schedule=["--schedule", "multistep", "--milestones", "20,25", "--gamma", "0.1"],
                      aug="none", stores=("ricap", "cutmix"), val_split=0.1, gls_finetune_epochs=8,
                      methods="all", noisy_methods="all"),
}
COSINE = ["--schedule", "cosine", "--warmup-epochs", "1"]

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
    # the methods of the converged budget on top of the above; a store is picked by --aug's op
    "aug-sl-cutmix": ["--method", "sl", "STORE1", "--aug", "cutmix"],
    "aug-kd-sl-cutmix": ["--method", "kd-sl", "STORE", "--aug", "cutmix"],
    "dkd": ["--method", "dkd", "STORE"],
    "dist": ["--method", "dist", "STORE"],
    # logit standardisation at the paper's base temperature (Sun et al. 2024: T = 2)
    "kd-sl-stand": ["--method", "kd-sl", "STORE", "--logit-stand", "--temperature", "2"],
    # the negative-LS paper's procedure: CE first (this seed's vanilla run, its best epoch by
    # validation NLL), then r < 0 at a constant learning rate of 1e-6
    "gls-warm": ["--method", "gls", "--smooth-rate", "-0.2", "WARM", "--schedule", "constant", "--lr", "1e-6"],
}
BASE_METHODS = [m for m in CLEAN_METHODS if m not in
                ("aug-sl-cutmix", "aug-kd-sl-cutmix", "dkd", "dist", "kd-sl-stand", "gls-warm")]
NOISY_METHODS = ["vanilla", "ls", "gls-", "sl", "kd-sl"]
AFTER = {"gls-warm": "vanilla"}  # runs that start from another method's run of the same seed


def student_flags(label: str, stores: dict[str, Path], first: str, runs: Path, seed: int,
                  teachers: list[Path]) -> list[str]:
    """The method's flags with its placeholders filled: STORE (every teacher) and STORE1 (the
    first) name the store of the run's --aug op (the first store without one); WARM is the
    best checkpoint of this seed's run of the method it starts from."""
    spec = CLEAN_METHODS[label]
    op = spec[spec.index("--aug") + 1] if "--aug" in spec else next(iter(stores))
    if op not in stores:
        raise SystemExit(f"reproduce: {label} trains on {op} views but this budget exports "
                         f"{', '.join(stores)} stores only")
    flags: list[str] = []
    for f in spec:
        if f == "STORE":
            flags += ["--store", str(stores[op])]
        elif f == "STORE1":  # single-teacher methods read the first teacher only
            flags += ["--store", str(stores[op]), "--teachers", first]
        elif f == "WARM":
            flags += ["--init", str(runs / f"{AFTER[label]}-s{seed}" / "best.pt")]
        else:
            flags.append(f)
    if label == "kd":
        flags += ["--teacher", str(teachers[0])]
    return flags


def experiment(out: Path, b: dict, noise: str | None, methods: list[str], device: str, dry: bool,
               jobs: int = 1, val_split: float | None = None) -> Path:
    val_split = val_split if val_split is not None else b.get("val_split")
    data = ["--dataset", "cifar10-mini", "--device", device]
    if val_split:  # held out of training: early stopping's and temperature scaling's split
        data += ["--val-split", str(val_split)]
    if noise:
        data += ["--noise", noise, "--noise-seed", "0"]
    runs = out / "runs"
    sched = [*b.get("schedule", COSINE), "--lr", "0.1", "--nesterov", "--batch-size", str(b["batch"]),
             "--weight-decay", "5e-4"]
    # the training views of teachers and students (default crop/flip); an Aug- row's own --aug,
    # later on its command line, wins
    sched += ["--aug", b["aug"]] if b.get("aug") else []
    ops = b.get("stores", ("ricap",))
    # the first store keeps the name earlier versions of this script gave their only one
    stores = {op: out / ("store.h5" if i == 0 else f"store-{op}.h5") for i, op in enumerate(ops)}
    teachers, todo = [], []
    for s in range(b["seeds"]):
        name = f"teacher-s{s}"
        if not finished(runs / name):
            todo.append(["teach", "--model", b["teacher"], "--epochs", str(b["t_epochs"]), "--seed", str(s),
                 "--name", name, "--runs-dir", str(runs), *sched, *data, *resume_flag(runs / name)])
        teachers.append(runs / name)
    exports = [op for op, path in stores.items() if not store_complete(path)]
    phases: list[list[list[str]]] = [[], []]  # runs that start from another run go second
    # seed by seed: an interrupted run leaves every method with its first seeds, not some methods
    # with all seeds and others with none
    for s in range(b["seeds"]):
        for label in methods:
            name = f"{label}-s{s}"
            if finished(runs / name):
                continue
            epochs = b.get("gls_finetune_epochs", b["s_epochs"]) if label in AFTER else b["s_epochs"]
            flags = student_flags(label, stores, teachers[0].name, runs, s, teachers)
            # the method's flags come last: a method's own schedule (gls-warm) overrides the shared one
            phases[label in AFTER].append(["student", "--model", b["student"], "--epochs", str(epochs),
                                           "--seed", str(s), "--name", name, "--runs-dir", str(runs), *sched,
                                           *data, *flags, *resume_flag(runs / name)])
    print_estimate(out.name, b, len(todo), len(exports), phases, jobs, device, len(teachers))
    run_all(todo, dry, jobs)
    for op in exports:  # an interrupted export resumes when rerun with the same arguments
        tflags = [x for t in teachers for x in ("--teacher", str(t))]
        run(["export-soft-labels", *tflags, "--out", str(stores[op]), "--aug", op, "--views", str(b["views"]),
             "--view-seed", "0", "--format", "fp16", *data], dry)
    for phase in phases:
        run_all(phase, dry, jobs)
    run(["report", str(runs), "--out", str(out / "report")], dry)
    if not dry:
        regime_check(runs, methods, b["seeds"])
    return out


def print_estimate(part: str, b: dict, teachers: int, exports: int, phases: list[list[list[str]]], jobs: int,
                   device: str, num_teachers: int) -> None:
    """The expected wall time of what is left of this part on free cores, from the CPU time of a
    few steps of each model on this machine (rough: aug and online methods cost more)."""
    if on_gpu(device):
        print(f"[{part}] expected wall time: not estimated on a GPU", flush=True)
        return
    t_epoch, s_epoch = epoch_seconds(b["teacher"], b["batch"], jobs), epoch_seconds(b["student"], b["batch"], jobs)
    fwd = forward_seconds(b["teacher"]) * TRAIN_IMAGES
    students = [(c, int(c[c.index("--epochs") + 1])) for phase in phases for c in phase]
    parts = [("teachers", teachers * b["t_epochs"] * t_epoch / max(1, min(jobs, teachers or 1))),
             ("stores", exports * (b["views"] + 1) * num_teachers * fwd),
             ("students", sum(e for _, e in students) * s_epoch / max(1, min(jobs, len(students) or 1)))]
    text = ", ".join(f"{name} {sec / 60:.0f} min" for name, sec in parts)
    total = sum(sec for _, sec in parts) / 60
    print(f"[{part}] expected wall time: {text}; {total:.0f} min in all ({teachers} teacher runs, {exports} "
          f"stores, {len(students)} student runs left; {t_epoch:.0f} s per teacher epoch, {s_epoch:.0f} s per "
          f"student epoch on free cores, measured now)", flush=True)


TRAIN_IMAGES = 5085  # cifar10-mini's train split (the validation split is part of it)
_TIMED: dict[tuple[str, int, int], float] = {}


def epoch_seconds(model: str, batch: int, jobs: int) -> float:
    """Seconds of one epoch: timed SGD steps on 32x32 inputs (one thread per job when several
    run at once, as `run_all` does), plus evaluating about a third of that many images."""
    key = (model, batch, jobs)
    if key not in _TIMED:
        import torch

        from labelenh.models import build_model

        threads = torch.get_num_threads()
        if jobs > 1:
            torch.set_num_threads(1)
        try:
            net = build_model(model, 10)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

            def step() -> None:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

            step()
            # CPU time, not wall time: other jobs on the machine do not inflate the estimate
            # (it is the time on free cores); spread over the threads the steps ran on
            t0 = time.process_time()
            for _ in range(3):
                step()
            per_step = (time.process_time() - t0) / 3 / torch.get_num_threads()
        finally:
            torch.set_num_threads(threads)
        # a forward is about a third of a step; val + test are about a third of train's images
        _TIMED[key] = TRAIN_IMAGES / batch * per_step * (1 + 1 / 9)
    return _TIMED[key]


def forward_seconds(model: str) -> float:
    """Seconds of one image's inference forward (export)."""
    return epoch_seconds(model, 128, 2) / TRAIN_IMAGES / 3


def regime_check(runs: Path, methods: list[str], seeds: int) -> None:
    """Whether the runs reached the regime the claims are about: train accuracy of the last
    epoch per method (mean over seeds) and vanilla's fitted temperature."""
    import json

    for label in ["teacher", *methods]:
        accs, temps = [], []
        for s in range(seeds):
            lines = (runs / f"{label}-s{s}" / "metrics.jsonl")
            if not lines.exists():
                continue
            last = json.loads(lines.read_text().splitlines()[-1])
            accs.append(last.get("train_acc", float("nan")))
            temps.append((last.get("val") or {}).get("temperature", float("nan")))
        if accs:
            mean = sum(accs) / len(accs)
            print(f"regime: {label}: last-epoch train accuracy {100 * mean:.2f} % "
                  f"({'>=' if mean >= 0.99 else 'below'} 99 %), fitted T {sum(temps) / len(temps):.3f}", flush=True)


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
    every = list(CLEAN_METHODS)
    clean = chosen or (every if b.get("methods") == "all" else BASE_METHODS)
    noisy = chosen or (every if b.get("noisy_methods") == "all" else NOISY_METHODS)
    t0 = time.perf_counter()
    out = Path(a.out)
    if a.only in ("clean", "both"):
        experiment(out / "clean", b, None, clean, a.device, a.dry_run, a.jobs, a.val_split)
    if a.only in ("noisy", "both"):
        experiment(out / "noisy-sym0.4", b, "symmetric:0.4", noisy, a.device, a.dry_run, a.jobs, a.val_split)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min (budget {a.budget}); tables in {out}/*/report/report.md")


if __name__ == "__main__":
    main()
