"""Benchmarks of the soft-label store: export overhead, bytes per stored view, reader speed,
peak memory of an ImageNet-shaped export, and what the checksums cost (schema 2 against the
same store without them, schema 1).

    python scripts/bench_store.py            # full sizes (several minutes on 2 CPU cores)
    python scripts/bench_store.py --quick    # smaller sizes (about a minute)

Prints one JSON line per measurement, then a Markdown table. Goals (from the store's design):
export >= 0.95x bare teacher inference; top-5 fp16 <= 30 B per stored view including the
recipe; reader >= 1 M rows/s preloaded and >= 100 k rows/s lazy in batches of 256; peak RSS
of the export at N = 1.28 M within 1.1x of N = 128 k.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from labelenh.store import SoftLabelStore, export_soft_labels, teacher_from_model
from labelenh.store.export import TeacherRunner
from labelenh.store.schema import (
    DEFAULT_CHUNK_SIZE,
    SCHEMA,
    LogitFormat,
    StorePlan,
    TeacherRecord,
    bytes_per_view,
    chunk_rows,
    crc32,
)
from labelenh.store.writer import create_store

RESULTS: list[dict] = []


def emit(**row) -> None:
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def seeded_(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


# ---- 1. export throughput vs bare inference --------------------------------------------------

def bench_throughput(quick: bool, model_name: str, threads: int = 1, reps: int = 3) -> None:
    """Same teacher, same blocks: bare forwards (data + views + teacher) vs the full export
    (+ packing, top-k error, HDF5 writes, flushes). Alternating runs, best of `reps` each; one
    torch thread so that a busy shared machine disturbs both alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    from labelenh.data import load_dataset
    from labelenh.models import build_model
    from labelenh.views import ViewSpec, sample_views

    bundle = load_dataset("cifar10-mini")
    src = bundle.train if not quick else bundle.train.subset(torch.arange(1024))
    views, spec = 2, ViewSpec("crop-flip")
    teacher = teacher_from_model(seeded_(build_model(model_name, 10), 0), model_name)
    dev = torch.device("cpu")
    kw = dict(dataset=bundle.name, num_classes=10, mean=bundle.mean, std=bundle.std, num_views=views,
              spec=spec, view_seed=0, chunk_size=DEFAULT_CHUNK_SIZE, device=dev)
    for fmt in ("fp16", "topk:5"):
        plan = export_soft_labels("unused.h5", [teacher], src, fmt=fmt, dry_run=True, **kw).plan
        runner = TeacherRunner([teacher], src, num_classes=10, mean=bundle.mean, std=bundle.std, device=dev, amp="off")
        src.fingerprint()  # cached: neither timing pays for hashing the images

        def bare(plan=plan, runner=runner) -> None:  # the same blocks and teacher, nothing kept
            with torch.inference_mode():
                for c in range(plan.num_chunks):
                    s0, s1 = plan.chunk_bounds(c)
                    idx = torch.arange(s0, s1)
                    runner.forward(runner.clean_images(idx), "")
                    rec = sample_views(plan.num_samples, views, spec, 0, plan.image_size, samples=idx)
                    for i in range(0, len(rec), plan.chunk_size):
                        runner.forward(runner.view_images(rec[i:i + plan.chunk_size]), "")

        with tempfile.TemporaryDirectory() as d:
            wall = {"bare": [], "export": []}
            cpu = {"bare": [], "export": []}
            for rep in range(reps):
                for what, run in (("bare", bare), ("export", lambda rep=rep, fmt=fmt: export_soft_labels(
                        Path(d) / f"s{rep}.h5", [teacher], src, fmt=fmt, **kw))):
                    t0, c0 = time.perf_counter(), time.process_time()
                    run()
                    wall[what].append(time.perf_counter() - t0)
                    cpu[what].append(time.process_time() - c0)
        images = len(src) * (1 + views)
        bare_rate, exp_rate = images / min(wall["bare"]), images / min(wall["export"])
        # CPU seconds (all threads, the writer's included) are less disturbed by other
        # processes on a shared machine than wall time
        cpu_ratio = min(cpu["bare"]) / min(cpu["export"])
        emit(bench="export_throughput", model=model_name, format=fmt, n=len(src), views=views,
             device="cpu", threads=torch.get_num_threads(), bare_images_per_s=round(bare_rate, 1),
             export_images_per_s=round(exp_rate, 1), ratio=round(exp_rate / bare_rate, 3),
             cpu_time_ratio=round(cpu_ratio, 3))
    torch.set_num_threads(before)


# ---- 2. bytes per stored view -----------------------------------------------------------------

def _plan(n: int, c: int, v: int, fmt: str, op: str) -> StorePlan:
    from labelenh.views import ViewSpec, recipe_dtype

    spec = ViewSpec(op)
    return StorePlan(dataset="bench", fingerprint="0" * 64, num_samples=n, num_classes=c, num_views=v,
                     view_spec=spec.to_dict() if v else None, view_seed=0, image_size=(32, 32),
                     fmt=LogitFormat.parse(fmt, c), chunk_size=DEFAULT_CHUNK_SIZE,
                     teachers=[TeacherRecord("t")], normalization={"mean": [0.5], "std": [0.25]},
                     compute={"device": "cpu", "amp": "off"}, recipe_dtype=recipe_dtype(spec) if v else None)


def bench_bytes() -> None:
    """Measured on real files: (size with V views - size with none) / (N * V), one teacher."""
    n, v = 4096, 8
    with tempfile.TemporaryDirectory() as d:
        for c in (10, 100, 1000):
            for fmt in ("fp32", "fp16", "topk:5", "topk:10"):
                for op in ("crop-flip", "ricap"):
                    sizes = []
                    for views in (0, v):
                        p = Path(d) / f"{c}-{fmt.replace(':', '')}-{op}-{views}.h5"
                        create_store(p, _plan(n, c, views, fmt, op))  # allocated: final size
                        sizes.append(p.stat().st_size)
                        p.unlink()
                    measured = (sizes[1] - sizes[0]) / (n * v)
                    from labelenh.views import ViewSpec, recipe_dtype

                    per = bytes_per_view(LogitFormat.parse(fmt, c), c, recipe_dtype(ViewSpec(op)).itemsize)
                    emit(bench="bytes_per_view", num_classes=c, format=fmt, view_op=op,
                         measured_bytes=round(measured, 2), logits_bytes=per["per_teacher"],
                         recipe_bytes=per["recipe"])


# ---- 3. reader speed --------------------------------------------------------------------------

def make_random_store(path: Path, n: int, c: int, v: int, fmt: str, schema: int = SCHEMA) -> None:
    """A complete store of random logits (a teacher is not what is measured here)."""
    from labelenh.store.topk import topk_compress

    plan = _plan(n, c, v, fmt, "crop-flip")
    plan.schema = schema
    create_store(path, plan)
    g = torch.Generator().manual_seed(0)
    with h5py.File(path, "r+") as f:
        base = "teachers/t/views"
        for s0 in range(0, n, 4096):
            s1 = min(n, s0 + 4096)
            z = torch.randn((s1 - s0) * v, c, generator=g) * 3
            if plan.fmt.is_topk:
                idx, lp, lse = topk_compress(z, plan.fmt.k)
                f[f"{base}/indices"][s0:s1] = idx.numpy().astype(f[f"{base}/indices"].dtype).reshape(s1 - s0, v, -1)
                f[f"{base}/values"][s0:s1] = lp.numpy().reshape(s1 - s0, v, -1)
                f[f"{base}/lse"][s0:s1] = lse.numpy().reshape(s1 - s0, v)
            else:
                f[base][s0:s1] = z.numpy().astype(plan.fmt.dense_dtype()).reshape(s1 - s0, v, c)
        f["progress"][...] = 1
        if plan.checksums:
            sign_chunks(f, plan)
        f.attrs["complete"] = np.bool_(True)


def sign_chunks(f: h5py.File, plan: StorePlan) -> None:
    """/checksums of a store whose data was written here, not through StoreWriter."""
    sums = np.zeros((plan.num_chunks, len(plan.checksummed())), dtype="<u4")
    for d, (name, _, _) in enumerate(plan.checksummed()):
        arr = f[name][()]
        for c in range(plan.num_chunks):
            a, b = chunk_rows(name, c, plan.chunk_size, plan.num_samples)
            sums[c, d] = crc32(arr[a:b])
    f["checksums"][...] = sums


def bench_reader(quick: bool, threads: int = 1) -> None:
    """Random (sample, view) batches. One torch thread, as in a DataLoader worker (and because
    intra-op threads on small gathers only add waiting on a busy machine)."""
    n, v = (20_000, 8) if quick else (100_000, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        for c, fmt in ((10, "fp16"), (100, "fp16"), (1000, "topk:5")):
            p = Path(d) / f"r{c}.h5"
            make_random_store(p, n, c, v, fmt)
            g = torch.Generator().manual_seed(1)
            for mode in ("preloaded", "lazy"):
                store = SoftLabelStore.open(p, preload=mode == "preloaded")
                for batch in (256, 4096):
                    total = 400_000 if mode == "preloaded" else 100_000
                    batches = [(torch.randint(n, (batch,), generator=g), torch.randint(v, (batch,), generator=g))
                               for _ in range(max(1, total // batch))]
                    store.view_logits(*batches[0])  # maps opened, caches warm
                    t0 = time.perf_counter()
                    for s, vv in batches:
                        store.view_logits(s, vv)
                    dt = time.perf_counter() - t0
                    emit(bench="reader", mode=mode, num_classes=c, format=fmt, n=n, views=v, batch=batch,
                         threads=threads, rows_per_s=round(len(batches) * batch / dt))
                store.close()
    torch.set_num_threads(before)


# ---- 4. peak RSS of an ImageNet-shaped export -------------------------------------------------

class SyntheticImages:
    """N tiny images generated from their index (nothing held per sample except the labels)."""

    def __init__(self, n: int, num_classes: int, size: int = 8) -> None:
        self.labels = torch.arange(n, dtype=torch.int64) % num_classes  # [N]
        self.image_shape = (3, size, size)
        self._pix = torch.arange(3 * size * size, dtype=torch.int64).view(1, 3, size, size)
        self._fp: str | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.int64).view(-1, 1, 1, 1)
        return ((idx * 7919 + self._pix * 31) % 251).to(torch.uint8)  # [B, 3, S, S]

    def fingerprint(self) -> str:
        if self._fp is None:
            h = hashlib.sha256(self.labels.numpy().tobytes())
            for s0 in range(0, len(self), 4096):  # small blocks: hashing must not set the peak
                h.update(self.load(torch.arange(s0, min(len(self), s0 + 4096))).numpy().tobytes())
            self._fp = h.hexdigest()
        return self._fp


class Standin(nn.Module):
    """A fast 1000-way teacher: 4x4 average pool, then one linear layer."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 2 * 2, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.avg_pool2d(x, 4).flatten(1))


def rss_child(n: int, views: int, fmt: str) -> None:
    from labelenh.views import ViewSpec

    torch.set_num_threads(1)  # as the other benchmarks: a busy shared machine punishes thread pools

    src = SyntheticImages(n, 1000)
    teacher = teacher_from_model(seeded_(Standin(1000), 0, 1.0), "standin")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = export_soft_labels(Path(d) / "imagenet.h5", [teacher], src, dataset="synthetic-imagenet",
                               num_classes=1000, mean=(0.5,) * 3, std=(0.25,) * 3, num_views=views,
                               spec=ViewSpec("crop-flip", pad=1) if views else None, fmt=fmt, device="cpu")
        dt = time.perf_counter() - t0
        size = r.size_bytes
    print(json.dumps({"n": n, "seconds": dt, "peak_rss_kib": peak_rss_kib(), "size_bytes": size}))


def peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM belongs to the memory map made by exec, whereas ru_maxrss
    also counts the parent's pages that a forked child held before its exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench_rss(quick: bool) -> None:
    sizes = (16_000, 160_000) if quick else (128_000, 1_280_000)
    views, fmt = 1, "topk:5"
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--views", str(views), "--format", fmt],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        emit(bench="export_peak_rss", n=n, num_classes=1000, views=views, format=fmt,
             peak_rss_mib=round(r["peak_rss_kib"] / 1024, 1), seconds=round(r["seconds"], 1),
             samples_per_s=round(n / r["seconds"]), store_mib=round(r["size_bytes"] / 2**20, 1))
    emit(bench="export_peak_rss_ratio", n_small=sizes[0], n_large=sizes[1],
         ratio=round(rows[1]["peak_rss_kib"] / rows[0]["peak_rss_kib"], 3))


# ---- report -----------------------------------------------------------------------------------

# ---- 5. checksums: their bytes, and export and reader speed with against without -------------

def bench_checksums(quick: bool, reps: int = 5) -> None:
    """Schema 2 (CRC-32 per chunk and dataset, checked as chunks are first read) against the same
    store in schema 1 (no checksums), written and read by the same code: interleaved rounds,
    medians, one torch thread."""
    import statistics

    from labelenh.store.export import plan_export
    from labelenh.views import ViewSpec

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    for c, fmt, v in ((10, "fp16", 8), (100, "fp16", 8), (1000, "topk:5", 8)):
        plan = _plan(256 * 64, c, v, fmt, "crop-flip")
        d = len(plan.checksummed())
        chunk_bytes = plan.data_bytes() / plan.num_chunks
        emit(bench="checksum_bytes", num_classes=c, format=fmt, views=v, chunk_size=plan.chunk_size,
             datasets=d, bytes_per_chunk=4 * d, chunk_data_bytes=round(chunk_bytes),
             overhead_pct=round(100 * 4 * d / chunk_bytes, 4))
    # export: a fast 1000-way stand-in teacher, so that writing is as large a share as it gets
    n = 4096 if quick else 16384
    src, spec = SyntheticImages(n, 1000), ViewSpec("crop-flip")
    teacher = teacher_from_model(seeded_(Standin(1000), 0), "standin")
    kw = dict(dataset="bench", num_classes=1000, mean=(0.5,) * 3, std=(0.25,) * 3, num_views=4, spec=spec,
              view_seed=0, fmt="topk:5", chunk_size=DEFAULT_CHUNK_SIZE, device="cpu")
    src.fingerprint()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for schema in (1, 2):
                p = Path(tmp) / f"e{schema}-{rep}.h5"
                plan = plan_export([teacher], src, fmt=LogitFormat.parse("topk:5", 1000), amp="off",
                                   fingerprint=src.fingerprint(), dataset_meta=None,
                                   **{k: v for k, v in kw.items() if k not in ("fmt", "device")},
                                   device=torch.device("cpu"))
                plan.schema = schema
                create_store(p, plan)  # the same skeleton either way; the export resumes it
                t0 = time.perf_counter()
                export_soft_labels(p, [teacher], src, **kw)
                times[schema].append(time.perf_counter() - t0)
                p.unlink()
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    emit(bench="checksum_export", n=n, views=4, format="topk:5", num_classes=1000, reps=reps,
         samples_per_s_without=round(n / m1), samples_per_s_with=round(n / m2), ratio=round(m1 / m2, 3))
    # reader: a fresh open per round (checks happen once per chunk and process), random rows
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        for c, fmt in ((100, "fp16"), (1000, "topk:5")):
            paths = {s: Path(tmp) / f"r{c}-{s}.h5" for s in (1, 2)}
            for s, p in paths.items():
                make_random_store(p, n, c, 8, fmt, schema=s)
            g = torch.Generator().manual_seed(1)
            batches = [(torch.randint(n, (256,), generator=g), torch.randint(8, (256,), generator=g))
                       for _ in range(max(1, 2 * n // 256))]  # every chunk read, most of them often
            # "lazy, later epochs": the same rows once more after every chunk was checked
            for mode in ("lazy", "lazy, later epochs", "preloaded"):
                t: dict[int, list[float]] = {1: [], 2: []}
                for _ in range(reps):
                    for s, p in paths.items():
                        t0 = time.perf_counter()
                        store = SoftLabelStore.open(p, preload=mode == "preloaded")
                        for smp, vv in batches:
                            store.view_logits(smp, vv)
                        if mode == "lazy, later epochs":
                            t0 = time.perf_counter()
                            for smp, vv in batches:
                                store.view_logits(smp, vv)
                        store.close()
                        t[s].append(time.perf_counter() - t0)
                rows = len(batches) * 256
                m1, m2 = statistics.median(t[1]), statistics.median(t[2])
                emit(bench="checksum_reader", mode=mode, num_classes=c, format=fmt, n=n, views=8, batch=256,
                     rows=rows, rows_per_s_without=round(rows / m1), rows_per_s_with=round(rows / m2),
                     ratio=round(m1 / m2, 3))
    torch.set_num_threads(before)


def markdown() -> str:
    lines = ["| benchmark | setting | result |", "|---|---|---|"]
    for r in RESULTS:
        b = r["bench"]
        if b == "export_throughput":
            lines.append(f"| export vs bare inference | {r['model']}, {r['format']}, N={r['n']}, V={r['views']}, cpu x{r['threads']} | "
                         f"{r['export_images_per_s']:.0f} vs {r['bare_images_per_s']:.0f} images/s = **{r['ratio']:.3f}x** "
                         f"(CPU time: {r['cpu_time_ratio']:.3f}x) |")
        elif b == "bytes_per_view":
            lines.append(f"| bytes per stored view | C={r['num_classes']}, {r['format']}, {r['view_op']} recipe | "
                         f"**{r['measured_bytes']:g} B** ({r['logits_bytes']} logits + {r['recipe_bytes']} recipe) |")
        elif b == "reader":
            lines.append(f"| reader, {r['mode']} | C={r['num_classes']}, {r['format']}, N={r['n']}x{r['views']}, batch {r['batch']}, {r['threads']} thread | "
                         f"**{r['rows_per_s'] / 1e6:.2f} M rows/s** |")
        elif b == "export_peak_rss":
            lines.append(f"| export peak RSS | N={r['n']:,}, C=1000, V={r['views']}, {r['format']} | "
                         f"**{r['peak_rss_mib']} MiB** ({r['seconds']} s, {r['samples_per_s']:,} samples/s, store {r['store_mib']} MiB) |")
        elif b == "export_peak_rss_ratio":
            lines.append(f"| peak RSS ratio | N={r['n_large']:,} / N={r['n_small']:,} | **{r['ratio']}x** |")
        elif b == "checksum_bytes":
            lines.append(f"| checksum bytes | C={r['num_classes']}, {r['format']}, V={r['views']}, chunk {r['chunk_size']} | "
                         f"**{r['bytes_per_chunk']} B per chunk** ({r['datasets']} datasets; "
                         f"{r['overhead_pct']:.4f} % of the chunk's {r['chunk_data_bytes']:,} B) |")
        elif b == "checksum_export":
            lines.append(f"| export with / without checksums | N={r['n']:,}, C={r['num_classes']}, {r['format']}, V={r['views']}, stand-in teacher | "
                         f"{r['samples_per_s_with']:,} vs {r['samples_per_s_without']:,} samples/s = **{r['ratio']:.3f}x** |")
        elif b == "checksum_reader":
            lines.append(f"| reader with / without checksums, {r['mode']} (open + {r['rows']:,} rows) | C={r['num_classes']}, {r['format']}, N={r['n']:,}x{r['views']}, batch {r['batch']} | "
                         f"{r['rows_per_s_with'] / 1e6:.2f} vs {r['rows_per_s_without'] / 1e6:.2f} M rows/s = **{r['ratio']:.3f}x** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--only", default="throughput,bytes,reader,rss,checksums", help="comma-separated subset")
    ap.add_argument("--model", default="resnet8", help="teacher of the throughput benchmark")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--views", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--format", default="topk:5", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        rss_child(a.rss_child, a.views, a.format)
        return
    only = set(a.only.split(","))
    if "throughput" in only:
        bench_throughput(a.quick, a.model)
    if "bytes" in only:
        bench_bytes()
    if "reader" in only:
        bench_reader(a.quick)
    if "rss" in only:
        bench_rss(a.quick)
    if "checksums" in only:
        bench_checksums(a.quick)
    print()
    print(markdown())


if __name__ == "__main__":
    main()
