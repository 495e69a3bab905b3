"""The whole pipeline on the bundled CIFAR-10 subset, on a CPU in a few minutes:

    teach a resnet20  ->  export its soft labels (clean + RICAP views)  ->
    resnet8 students vanilla, sl, kd-sl, aug-sl  ->  one table of Acc@1 / NLL / ECE / Brier.

Every step is a plain `labelenh` command, printed before it runs, so it can be copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("labelenh")


def run(args: list[str]) -> None:
    cmd = [str(BIN) if BIN.exists() else "labelenh", *args]
    print("\n$ " + " ".join(shlex.quote(a) for a in ["labelenh", *args]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def warmup(epochs: int) -> int:
    """One warm-up epoch, as the recipe has, unless the run is a single epoch."""
    return 1 if epochs > 1 else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quickstart", help="folder for runs and the store (replaced)")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--student-model", default="resnet8", help="a smaller student than the resnet20 teacher")
    ap.add_argument("--views", type=int, default=8, help="RICAP views per sample in the store")
    ap.add_argument("--device", default="auto")
    # The test suite runs the same script at a tiny size: synthetic data, resnet8, one epoch.
    ap.add_argument("--dataset", default="cifar10-mini", help="the data of every step")
    ap.add_argument("--image-size", type=int, default=None, help="image size of synthetic/folder data")
    ap.add_argument("--teacher-model", default=None, help="overrides the recipe's resnet20")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    runs = str(out)
    data = ["--dataset", a.dataset, *(["--image-size", str(a.image_size)] if a.image_size else [])]
    common = [*data, "--runs-dir", runs, "--device", a.device]
    t0 = time.perf_counter()
    recipe = Path(__file__).resolve().parents[1] / "teachers" / "cifar10-mini_resnet20.toml"
    rel = os.path.relpath(recipe)  # the short form from the repository, the full path elsewhere
    run(["teach", "--recipe", rel if not rel.startswith("..") else str(recipe), "--epochs", str(a.teacher_epochs), "--name", "teacher", *common,
         "--warmup-epochs", str(warmup(a.teacher_epochs)),
         *(["--model", a.teacher_model] if a.teacher_model else [])])
    run(["evaluate", f"{runs}/teacher", "--device", a.device])
    store = f"{runs}/store.h5"
    run(["export-soft-labels", "--teacher", f"{runs}/teacher", *data, "--out", store,
         "--aug", "ricap", "--views", str(a.views), "--view-seed", "0", "--format", "fp16", "--device", a.device])
    run(["store", "info", store])
    student = ["--model", a.student_model, "--epochs", str(a.student_epochs), "--batch-size", "128", "--lr", "0.1",
               "--nesterov", "--schedule", "cosine", "--warmup-epochs", str(warmup(a.student_epochs)), *common]
    students = {
        "vanilla": ["--method", "vanilla"],
        "sl": ["--method", "sl", "--store", store],
        "kd-sl": ["--method", "kd-sl", "--store", store],
        "aug-sl": ["--method", "sl", "--store", store, "--aug", "ricap"],
    }
    for label, extra in students.items():
        run(["student", *extra, "--name", label, *student])
    rows = {}
    for label in ["teacher", *students]:
        rows[label] = json.loads((out / label / "summary.json").read_text())["last"]["test"]
    from labelenh.evaluate import print_metrics

    print_metrics(rows)
    print(f"\nquickstart finished in {time.perf_counter() - t0:.0f} s; runs, store and reliability "
          f"diagrams are in {out}/ (e.g. {out}/teacher/reliability.png)")


if __name__ == "__main__":
    main()
