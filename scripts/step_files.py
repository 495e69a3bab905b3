"""Which files of `labelenh/` one student training step passes through, traced.

    python scripts/step_files.py [--list]

Makes a tiny teacher and store (synthetic data, in a temporary folder), builds the student task
and engine for a few data paths, runs one epoch untraced (loaders and caches are built then),
and traces the next step: the batch (images + method inputs), the loss, the backward pass and
the optimiser update (`Engine._train_step`). Every Python function entered is recorded by its
file (`sys.setprofile`); files outside `labelenh/` are not counted. The second count leaves
out the leaves that are the computation itself (the model, the method's loss, the view ops).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("labelenh/models/", "labelenh/methods/", "labelenh/losses.py", "labelenh/views/ops/")
PATHS = {  # label -> StudentSettings keywords
    "kd-sl on the store's ricap views": dict(method="kd-sl", aug="ricap", store=True),
    "kd-sl on clean logits, fresh crop/flip": dict(method="kd-sl", aug=None, store=True),
    "vanilla, fresh crop/flip": dict(method="vanilla", aug=None, store=False),
    "kd with an online teacher": dict(method="kd", aug=None, store=False, online=True),
}


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "labelenh", *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def traced_files(settings, engine_cls) -> list[str]:
    """The labelenh files entered by one steady-state training step of `settings`."""
    import torch

    from labelenh.engine import TrainConfig
    from labelenh.models import build_model
    from labelenh.student import build_task

    task = build_task(settings, torch.device("cpu"), warn=lambda m: None)
    model = build_model(settings.model, task.pipe.bundle.num_classes)
    cfg: TrainConfig = settings.train
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_cls(model, task, cfg, Path(tmp) / "run", device=torch.device("cpu"), run_config={},
                            checkpoint_meta={"model_name": settings.model, "num_classes": 10}, progress=False)
        for batch in task.train_batches(0):  # warm: loaders, caches, first-call imports
            engine._train_step(engine.model, batch, 0, task.steps_per_epoch)
        seen: set[str] = set()
        pkg = str(ROOT / "labelenh")

        def profile(frame, event, arg):
            if event == "call" and frame.f_code.co_filename.startswith(pkg):
                seen.add(str(Path(frame.f_code.co_filename).relative_to(ROOT)))

        batches = iter(task.train_batches(1))
        sys.setprofile(profile)
        try:
            batch = next(batches)
            engine._train_step(engine.model, batch, 1, task.steps_per_epoch)
        finally:
            sys.setprofile(None)
    return sorted(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the files of each path")
    a = ap.parse_args()
    import torch

    from labelenh.data.settings import DataSettings
    from labelenh.engine import Engine, TrainConfig
    from labelenh.student import StudentSettings

    torch.set_num_threads(1)
    ds = ["--dataset", "synthetic:10:64", "--image-size", "16", "--device", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _cli("teach", *ds, "--model", "resnet8", "--epochs", "1", "--batch-size", "32", "--milestones", "5",
             "--name", "t", "--runs-dir", root)
        _cli("export-soft-labels", "-t", root / "t", "--out", root / "s.h5", *ds, "--aug", "ricap", "--views", "2")
        print("| student step | labelenh files | without model, loss and view ops |\n|---|---|---|")
        listing = []
        for label, kw in PATHS.items():
            s = StudentSettings(model="resnet8", method=kw["method"], aug=kw["aug"],
                                store=str(root / "s.h5") if kw["store"] else None,
                                online_teachers=[str(root / "t")] if kw.get("online") else [],
                                data=DataSettings(dataset="synthetic:10:64", image_size=16),
                                train=TrainConfig(epochs=2, batch_size=32, milestones=[5], seed=0), device="cpu")
            files = traced_files(s, Engine)
            print(f"| {label} | {len(files)} | {len([f for f in files if not f.startswith(LEAVES)])} |")
            listing.append((label, files))
        if a.list:
            for label, files in listing:
                print(f"\n{label}:")
                for f in files:
                    print(f"  {f}")


if __name__ == "__main__":
    main()
