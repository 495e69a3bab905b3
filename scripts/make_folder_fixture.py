"""Write tests/fixtures/folder-v2/: an image folder, a teacher run and a store made by the
version before image folders had an evaluation crop fraction (`--crop-pct`).

Run once, at commit f4560a5, as `python scripts/make_folder_fixture.py`. The fixture is never
regenerated: it pins what that code wrote for an image folder (the short side resized to the
image size, then a centre crop, and the fingerprint of that geometry), so
tests/test_folder_fixture.py can show that later code opens, verifies, resumes and replays them.

Everything is made through the command line with paths relative to the fixture folder, so the
records name `folder:jpegs` and the fixture works wherever it is copied:
  jpegs/{train,val}/c{0,1}/*.jpg  JPEGs of several sizes (quality 90)
  runs/teacher/                   resnet8, 1 epoch on crop/flip views at --image-size 16
  store.h5                        its logits, clean + 2 crop/flip views, chunks of 4
  expected.npz                    the clean train/test images that code decoded
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "folder-v2"
SIZES = {"train": [(30, 22), (22, 30), (17, 25), (40, 40), (25, 19), (33, 28), (20, 20), (45, 31)],
         "val": [(28, 21), (21, 36), (26, 26), (19, 27)]}


def write_jpegs(root: Path) -> None:
    g = np.random.default_rng(7)
    for split, sizes in SIZES.items():
        for k, (h, w) in enumerate(sizes):
            base = g.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8)
            im = Image.fromarray(base).resize((w, h), Image.BICUBIC)
            path = root / split / f"c{k % 2}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path, "JPEG", quality=90)


def labelenh(*args: str) -> None:
    cmd = [sys.executable, "-m", "labelenh", *args]
    print("+", " ".join(cmd))
    subprocess.run(cmd, cwd=OUT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_jpegs(OUT / "jpegs")
    data = ["--dataset", "folder:jpegs", "--image-size", "16", "--device", "cpu"]
    labelenh("teach", "--model", "resnet8", "--epochs", "1", "--batch-size", "4", "--seed", "0",
             "--name", "teacher", "--runs-dir", "runs", *data)
    labelenh("export-soft-labels", "--teacher", "runs/teacher", "--out", "store.h5", "--aug", "crop-flip",
             "--views", "2", "--view-seed", "3", "--batch-size", "4", *data)
    for name in ("best.pt", "reliability.png"):  # not needed to resume; keeps the fixture small
        (OUT / "runs" / "teacher" / name).unlink(missing_ok=True)
    from labelenh.data import load_dataset

    cwd = Path.cwd()
    os.chdir(OUT)
    try:
        b = load_dataset("folder:jpegs", image_size=16)
        np.savez_compressed(OUT / "expected.npz", train=b.train.load(torch.arange(len(b.train))).numpy(),
                            test=b.test.load(torch.arange(len(b.test))).numpy(),
                            fingerprint=np.array(b.train.fingerprint()))
    finally:
        os.chdir(cwd)


if __name__ == "__main__":
    main()
