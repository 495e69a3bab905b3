"""The image-folder data path, measured side by side on a generated folder of ImageNet-sized
JPEGs (default 2,000 files of 500x375, quality 90; `--quick`: 400).

Prints one JSON line per case, then a markdown table of the four ratios:

  decoders     images/s of PIL full decode, PIL with draft() (DCT-domain downscaling to the
               smallest scale >= 224 px), torchvision.io.decode_jpeg (CPU), over the same files
  1. input     student input images/s (rrc + flip, 224, batch 64) with --workers 2 ÷ torchvision
               ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + DataLoader(num_workers=2)
  2. scaling   the same input with 2 workers ÷ with 1 worker
  3. export    (decode each image once + 8 bare teacher forwards of the same batches) time ÷
               the time of an export of V = 8 rrc views (+ the clean image); and the decodes the
               export makes now against the path that decoded per view
  4. overlap   student steps on lazy folder data (1 worker, 1 torch thread; 3 consecutive epochs
               from a new loader, as training runs them) ÷ the same steps on batches made
               beforehand, with a model whose step is slower than decoding
  contention   (`--only contention`) the model step of figure 4 alone on CPU 0, beside a
               pure-Python loop on CPU 1, and beside JPEG decoding on CPU 1
  rss          peak RSS of an export (V = 2 rrc views, C = 1000, decode threads on) of all files
               ÷ of a quarter of them, each in a fresh process

Each second pass is timed (the first one starts the persistent workers). Usage:
  python scripts/bench_data.py [--quick] [--images N] [--folder DIR] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

SIZE = 224
BATCH = 64
V = 8
ROUNDS = 3  # interleaved rounds of the input and overlap cases (medians)


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """n JPEGs of 500x375 (and 375x500, one in four), quality 90, smooth like photographs (a
    low-resolution noise field upsampled), in `classes` class folders."""
    from PIL import Image

    g = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            d = root / split / f"c{i % classes:02d}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = (375, 500) if i % 4 == 3 else (500, 375)
            small = g.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            im.save(d / f"{i:06d}.jpg", "JPEG", quality=90)


def emit(rec: dict) -> dict:
    print(json.dumps(rec), flush=True)
    return rec


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_decoders(files: list[Path]) -> dict:
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    def pil_full():
        for p in files:
            with Image.open(p) as im:
                im.convert("RGB")

    def pil_draft():
        for p in files:
            with Image.open(p) as im:
                im.draft("RGB", (SIZE, SIZE))  # largest 1/2^k reduction still >= 224 px a side
                im.convert("RGB")

    def tv_jpeg():
        for p in files:
            decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)

    out = {}
    for name, fn in (("pil_full", pil_full), ("pil_draft", pil_draft), ("torchvision_decode_jpeg", tv_jpeg)):
        fn() if len(files) <= 50 else None
        out[name] = round(len(files) / timed(fn), 1)
    return emit({"case": "decoders", "images": len(files), "images_per_s": out})


def ours_images_per_s(bundle, workers: int) -> float:
    from labelenh.pipeline import ImagePipeline
    from labelenh.store.dataset import StoreBatches
    from labelenh.views import ViewSpec

    pipe = ImagePipeline(bundle, torch.device("cpu"), batch_size=BATCH, seed=0, workers=workers)
    batches = StoreBatches(None, bundle.train, aug=False, spec=ViewSpec("rrc"), num_classes=bundle.num_classes)
    make = functools.partial(batches.images, uint8_ok=True)
    n = 0

    def epoch(e):
        nonlocal n
        n = 0
        for idx, _ in pipe.made_batches(e, make):
            n += len(idx)

    epoch(0)
    return n / timed(lambda: epoch(1))


def torchvision_images_per_s(root: Path, workers: int) -> float:
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.PILToTensor()])
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    n = 0

    def epoch():
        nonlocal n
        n = 0
        for x, _ in loader:
            x = x.float()  # ours hands out float 0..255 images
            n += len(x)

    epoch()
    return n / timed(epoch)


def teacher_model(num_classes: int, width: int = 64) -> torch.nn.Module:
    """A small CNN at 224 px (~50 M multiply-adds an image at width 64, ~4x that at 128): its
    step is slower than decoding and rendering an image on one core, as a real model's is on a
    GPU host."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 24, 7, stride=4, padding=3), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(24, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def bench_export(bundle, work: Path) -> dict:
    import labelenh.data.decoded as decoded_mod
    import labelenh.data.folder as folder_mod
    from labelenh.data.decoded import ChunkImages
    from labelenh.store.export import TeacherRunner, export_soft_labels, teacher_from_model
    from labelenh.views import ViewSpec

    k = bundle.num_classes
    model = teacher_model(k).eval()
    calls = [0]
    real = folder_mod.open_rgb

    def counting(path):
        calls[0] += 1
        return real(path)

    folder_mod.open_rgb = decoded_mod.open_rgb = counting

    def export(path, chunk_source=None, source=bundle.train):
        saved = TeacherRunner.chunk_source
        if chunk_source is not None:
            TeacherRunner.chunk_source = chunk_source
        try:
            calls[0] = 0
            t = timed(lambda: export_soft_labels(
                path, [teacher_from_model(model, "t")], source, dataset=bundle.name, num_classes=k,
                mean=bundle.mean, std=bundle.std, num_views=V, spec=ViewSpec("rrc"), view_seed=0,
                chunk_size=BATCH))
            return t, calls[0]
        finally:
            TeacherRunner.chunk_source = saved

    t_export, decodes_now = export(work / "once.h5")
    # decodes of the path before, per image: on the first 256 images (the count is per image)
    part = bundle.train.subset(torch.arange(min(256, len(bundle.train))))
    _, decodes_part = export(work / "part-once.h5", source=part)
    t_before, decodes_before = export(work / "per-view.h5", lambda self, plan, c: self.source, source=part)
    folder_mod.open_rgb = decoded_mod.open_rgb = real

    # the floor: decode every image once, and 8 bare forwards of the same batches
    n = len(bundle.train)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        t_decode = timed(lambda: [ChunkImages(bundle.train, range(s, min(s + BATCH, n)), pool)
                                  .load(torch.arange(s, min(s + BATCH, n))) for s in range(0, n, BATCH)])
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    with torch.inference_mode():
        model(x)
        t_fwd = timed(lambda: [model(x) for _ in range(-(-n // BATCH) * V)])
    floor = t_decode + t_fwd
    # the export also runs the teacher on the clean image: 9 forwards an image, not 8
    floor9 = t_decode + t_fwd * (V + 1) / V
    return emit({"case": "export", "images": n, "views": V, "export_s": round(t_export, 2),
                 "decode_once_s": round(t_decode, 2), "bare_forwards_s": round(t_fwd, 2),
                 "ratio": round(floor / t_export, 3), "ratio_with_clean_forward": round(floor9 / t_export, 3),
                 "decodes_now": decodes_now, "decodes_part_now": decodes_part,
                 "decodes_part_before": decodes_before, "part_images": len(part),
                 "per_view_export_part_s": round(t_before, 2),
                 "fewer_decodes": round(decodes_before / max(decodes_part, 1), 2)})


def bench_overlap(bundle, epochs: int = 3) -> dict:
    """Student steps: lazy folder batches (1 worker decodes on the other core) vs the same
    batches made beforehand, one torch thread for the model. A lazy block is `epochs`
    consecutive epochs from a new loader, as training runs them (its start and its first
    batch's wait included; later epochs' first batches are made while the one before ends)."""
    from labelenh.pipeline import ImagePipeline
    from labelenh.store.dataset import StoreBatches
    from labelenh.views import ViewSpec

    torch.set_num_threads(1)
    model = teacher_model(bundle.num_classes, width=128)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x, w):
        loss = torch.nn.functional.cross_entropy(model(x / 255.0), w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    batches = StoreBatches(None, bundle.train, aug=False, spec=ViewSpec("rrc"), num_classes=bundle.num_classes)
    make = functools.partial(batches.images, uint8_ok=True)
    pipe = ImagePipeline(bundle, torch.device("cpu"), batch_size=BATCH, seed=0, workers=1)
    premade = [out for _, out in pipe.made_batches(0, make)]
    del pipe  # its workers stop

    def lazy():
        fresh = ImagePipeline(bundle, torch.device("cpu"), batch_size=BATCH, seed=0, workers=1)
        for e in range(1, epochs + 1):
            for _, (x, w) in fresh.made_batches(e, make):
                step(x, w)

    def ready():
        for _ in range(epochs):
            for x, w in premade:
                step(x, w)

    ready()  # warm the allocator and the model
    t_ready, t_lazy = [], []
    for _ in range(ROUNDS):  # interleaved, medians
        t_ready.append(timed(ready))
        t_lazy.append(timed(lazy))
    t_decode = timed(lambda: [make(idx, 1) for idx in ImagePipeline(
        bundle, torch.device("cpu"), batch_size=BATCH, seed=0, workers=0).epoch_batches(1)])
    r, z = float(np.median(t_ready)), float(np.median(t_lazy))
    return emit({"case": "overlap", "images": len(bundle.train), "epochs_per_block": epochs,
                 "step_premade_s": [round(t, 2) for t in t_ready], "step_lazy_s": [round(t, 2) for t in t_lazy],
                 "decode_render_one_epoch_s": round(t_decode, 2), "ratio": round(z / r, 3)})


def _burn(kind: str, files: list[Path], stop) -> None:
    """On CPU 1 until `stop`: a pure-Python loop (no memory traffic) or decoding + resizing
    JPEGs (what a loader worker does)."""
    from PIL import Image

    os.sched_setaffinity(0, {1})
    while not stop.is_set():
        if kind == "alu":
            sum(range(10_000))
            continue
        for f in files:
            if stop.is_set():
                break
            with Image.open(f) as im:
                im.convert("RGB").resize((SIZE, SIZE))


def bench_contention(bundle) -> dict:
    """What slows the model's step beside a decoding worker (figure 4): the step on CPU 0 (one
    torch thread) alone, beside a pure-Python loop on CPU 1, and beside JPEG decoding on CPU
    1. Interleaved rounds, medians."""
    import multiprocessing as mp

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return emit({"case": "contention", "skipped": "needs two CPUs and sched_setaffinity"})
    torch.set_num_threads(1)
    model = teacher_model(bundle.num_classes, width=128)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(BATCH, 3, SIZE, SIZE, generator=g) * 255, torch.randint(0, bundle.num_classes, (BATCH,))

    def steps(n: int = 8) -> float:
        def one():
            loss = torch.nn.functional.cross_entropy(model(x / 255.0), w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        one()
        return timed(lambda: [one() for _ in range(n)]) / n

    files = [bundle.train.root / p for p in bundle.train.paths[:200]]
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    out: dict[str, list[float]] = {"alone": [], "beside_alu": [], "beside_decode": []}
    try:
        for _ in range(ROUNDS):
            for key in out:
                stop, proc = mp.Event(), None
                if key != "alone":
                    proc = mp.Process(target=_burn, args=(key.split("_")[1], files, stop))
                    proc.start()
                    time.sleep(0.5)
                out[key].append(steps())
                if proc is not None:
                    stop.set()
                    proc.join()
    finally:
        os.sched_setaffinity(0, mine)
    med = {k: float(np.median(v)) for k, v in out.items()}
    return emit({"case": "contention", **{f"{k}_s_per_step": [round(t, 3) for t in v] for k, v in out.items()},
                 "alu_ratio": round(med["beside_alu"] / med["alone"], 3),
                 "decode_ratio": round(med["beside_decode"] / med["alone"], 3)})


def peak_rss_mib() -> float:
    """Peak RSS of this process since its exec (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(root: Path, n: int, out: Path) -> None:
    """In a fresh process: export the first n files (C = 1000, V = 2 rrc views, fp16, chunks of
    256, decode threads on); print the peak RSS."""
    from torch import nn

    from labelenh.data import load_dataset
    from labelenh.store.export import export_soft_labels, teacher_from_model
    from labelenh.views import ViewSpec

    bundle = load_dataset(f"folder:{root}", image_size=SIZE)
    part = bundle.train.subset(torch.arange(n))
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 28 * 28, 1000))
    before = peak_rss_mib()
    export_soft_labels(out, [teacher_from_model(model, "t")], part, dataset=bundle.name, num_classes=1000,
                       mean=bundle.mean, std=bundle.std, num_views=2, spec=ViewSpec("rrc"), chunk_size=256)
    print(json.dumps({"n": n, "peak_mib": round(peak_rss_mib(), 1), "after_imports_mib": round(before, 1)}))


def bench_rss(root: Path, sizes: list[int], work: Path) -> dict:
    import subprocess

    peaks = {}
    for n in sizes:
        p = subprocess.run([sys.executable, __file__, "--rss-child", str(root), str(n), str(work / f"rss-{n}.h5")],
                           capture_output=True, text=True, check=True)
        peaks[n] = json.loads(p.stdout.strip().splitlines()[-1])["peak_mib"]
    lo, hi = min(sizes), max(sizes)
    return emit({"case": "rss", "peak_mib": peaks, "ratio": round(peaks[hi] / peaks[lo], 3)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="training JPEGs to generate (default 2000)")
    ap.add_argument("--quick", action="store_true", help="400 images")
    ap.add_argument("--folder", type=Path, default=None, help="use (or create) this folder")
    ap.add_argument("--keep", action="store_true", help="keep the generated folder")
    ap.add_argument("--only", default="decoders,input,export,overlap,rss", help="comma-separated cases")
    ap.add_argument("--rss-child", nargs=3, metavar=("FOLDER", "N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), int(args.rss_child[1]), Path(args.rss_child[2]))
        return 0
    n = args.images or (400 if args.quick else 2000)
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    root = args.folder or tmp / "folder"
    try:
        if not (root / "train").is_dir():
            t = timed(lambda: make_folder(root, n))
            emit({"case": "folder", "images": n, "size": "500x375", "quality": 90, "seconds": round(t, 1)})
        from labelenh.data import load_dataset

        bundle = load_dataset(f"folder:{root}", image_size=SIZE)
        emit({"case": "machine", "cpus": os.cpu_count(), "torch": torch.__version__,
              "python": sys.version.split()[0]})
        rows = []
        if "decoders" in only:
            bench_decoders([bundle.train.root / p for p in bundle.train.paths[: min(n, 300)]])
        if "input" in only:
            # interleaved rounds, medians: the machine is shared and its speed drifts
            runs: dict[str, list[float]] = {"tv2": [], "tv1": [], "ours2": [], "ours1": []}
            for _ in range(ROUNDS):
                runs["tv2"].append(torchvision_images_per_s(root, 2))
                runs["ours2"].append(ours_images_per_s(bundle, 2))
                runs["ours1"].append(ours_images_per_s(bundle, 1))
                runs["tv1"].append(torchvision_images_per_s(root, 1))
            med = {k: float(np.median(v)) for k, v in runs.items()}
            emit({"case": "input", "rounds": ROUNDS, **{f"{k}_images_per_s": [round(x, 1) for x in v]
                                                       for k, v in runs.items()}})
            rows += [("1. input, --workers 2 ÷ torchvision ImageFolder + DataLoader(2)", med["ours2"] / med["tv2"],
                      "≥ 1.0"),
                     ("2. scaling 1 → 2 workers", med["ours2"] / med["ours1"], "≥ 1.7"),
                     ("2'. torchvision's own scaling 1 → 2 workers", med["tv2"] / med["tv1"], "—")]
        if "export" in only:
            e = bench_export(bundle, tmp)
            rows += [("3. (decode once + 8 bare forwards) ÷ export of V = 8", e["ratio"], "≥ 0.9"),
                     ("3'. (decode once + 9 bare forwards: clean + 8) ÷ export", e["ratio_with_clean_forward"], "—"),
                     ("3. decodes before ÷ now (V = 8, rrc)", e["fewer_decodes"], "≥ 4")]
        if "overlap" in only:
            o = bench_overlap(bundle)
            rows.append(("4. student step, lazy folder ÷ pre-made tensors", o["ratio"], "≤ 1.05"))
        if "contention" in only:
            c = bench_contention(bundle)
            if "decode_ratio" in c:
                rows += [("4'. model step beside a decoding process ÷ alone", c["decode_ratio"], "—"),
                         ("4''. model step beside a pure-Python loop ÷ alone", c["alu_ratio"], "—")]
        if "rss" in only:
            r = bench_rss(root, [n // 4, n], tmp)
            rows.append((f"peak RSS of an export, N = {n:,} ÷ N = {n // 4:,} (V = 2, C = 1000)", r["ratio"], "≤ 1.1"))
        if rows:
            print("\n| ratio | measured | goal |\n|---|---:|---|")
            for name, value, goal in rows:
                print(f"| {name} | {value:.2f} | {goal} |")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
