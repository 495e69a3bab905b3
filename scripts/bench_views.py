"""Time replaying view recipes against plain crop/flip loading, for a CIFAR-size batch.

Prints one JSON line per case:
  {"case", "op", "batch", "device", "threads", "ms_median", "ms_min", "cpu_ms_median",
   "us_per_image", "x_vs_crop_flip", "x_vs_per_sample"}   (ratios of ms_median)

Cases (all from a uint8 [N, 3, 32, 32] tensor in memory, output float32 [B, 3, 32, 32]):
  load              index the batch's images, convert to float (no augmentation)
  per-sample        plain crop/flip the way a DataLoader does it: per image F.pad + crop +
                    hflip (torchvision.transforms.functional), stacked
  sample:<op>       sample_views for the batch (what an on-the-fly student would add)
  from_struct:<op>  decode the batch's stored records (what a store reader adds)
  apply:<op>        load the B x S source images + apply_views (the replay itself)

Each case runs in a fresh process. Large CPU temporaries are returned to the OS by glibc after
each call and page-faulted back in on the next one, which can dominate on a small VM; the
page_faults column shows it and --warm-heap measures the same code without it.

Usage: python scripts/bench_views.py [--batch 512] [--reps 50] [--threads 1] [--device cpu]
                                     [--warm-heap]
       python scripts/bench_views.py --sizes   # bytes per stored recipe of every op (a table)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torchvision.transforms.functional as TF

from labelenh.views import OPS, Recipes, ViewSpec, apply_views, recipe_dtype, sample_views
from labelenh.views.ops import base_ops


def timeit(fn, reps: int, sync) -> dict[str, float]:
    """Median/min wall ms, median process-CPU ms and minor page faults per call, over `reps`
    calls after two warm-up calls. CPU time is the steadier figure on a shared machine."""
    fn()
    fn()
    ts, cs = [], []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
        cs.append((time.process_time() - c) * 1e3)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / reps
    return {"ms_median": round(statistics.median(ts), 3), "ms_min": round(min(ts), 3),
            "cpu_ms_median": round(statistics.median(cs), 3), "page_faults": round(faults, 1)}


CASES = ["load", "per-sample"] + [f"{kind}:{op}" for op in OPS
                                  for kind in ("sample", "from_struct", "apply")]


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Time one case in this process."""
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(args.seed)
    n, b, pad = args.num_samples, args.batch, 4
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, 10, (n,), generator=gen).to(dev)
    idx = torch.randperm(n, generator=gen)[:b]
    kind, _, op = case.partition(":")
    if kind == "load":
        didx = idx.to(dev)
        fn = lambda: images.index_select(0, didx).to(torch.float32)  # noqa: E731
    elif kind == "per-sample":
        # per-image crop/flip as a DataLoader's transforms do it (offsets drawn once, here)
        offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).tolist()
        flips = (torch.rand(b, generator=gen) < 0.5).tolist()

        def fn() -> torch.Tensor:
            out = []
            for i, j in enumerate(idx.tolist()):
                x = TF.crop(TF.pad(images[j], [pad]), offs[i][0], offs[i][1], 32, 32)
                out.append(TF.hflip(x) if flips[i] else x)
            return torch.stack(out).to(torch.float32)
    else:
        spec = ViewSpec.build(op, {"pad": pad})  # pad where the op (or its base) takes one
        rec = sample_views(n, 1, spec, args.seed, (32, 32), samples=idx)
        if kind == "sample":
            fn = lambda: sample_views(n, 1, spec, args.seed, (32, 32), samples=idx)  # noqa: E731
        elif kind == "from_struct":
            struct = rec.to_struct()
            fn = lambda: Recipes.from_struct(struct, spec, (32, 32), samples=idx)  # noqa: E731
        else:
            rec = rec.to(dev)
            src_idx = rec.sources().reshape(-1)  # [B*S]
            s = spec.num_sources

            def fn():
                src = images.index_select(0, src_idx).view(b, s, 3, 32, 32)
                return apply_views(src, rec, labels[src_idx].view(b, s), 10)
    return {"case": case, "op": op or "crop-flip" if kind == "per-sample" else op or "none",
            "batch": b, "device": str(dev), "threads": args.threads,
            **timeit(fn, args.reps, sync)}


def record_sizes() -> list[dict]:
    """Bytes per stored recipe (the packed record's itemsize, which is what an [N, V] table of
    them takes per view) for every registered op, each base of the ops that take one, and a
    two-op store."""
    rows = []
    for name, op in OPS.items():
        bases = base_ops() if op.takes_base else [None]
        for b in bases:
            spec = ViewSpec(name, **op.example(), **({"base": b} if b else {}))
            dt = recipe_dtype(spec)
            rows.append({"aug": op.example_aug(), "base": b or "", "bytes": dt.itemsize,
                         "fields": ", ".join(f"{n} {dt[n].base.str.lstrip('<|')}{list(dt[n].shape) if dt[n].shape else ''}"
                                             for n in dt.names)})
    two = ViewSpec.parse("mixup:8,cutmix:8")
    rows.append({"aug": "mixup:8,cutmix:8", "base": two.ops[0].base.op,
                 "bytes": recipe_dtype(two).itemsize, "fields": ", ".join(recipe_dtype(two).names)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", action="store_true", help="print bytes per stored recipe of every op and exit")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", choices=CASES, help="run one case here (default: each in a fresh process)")
    ap.add_argument("--warm-heap", action="store_true",
                    help="keep freed memory in glibc's heap (MALLOC_MMAP/TRIM_THRESHOLD_ = 256 MiB), "
                         "so large temporaries stop costing page faults on every call")
    args = ap.parse_args()
    if args.sizes:
        print("| --aug | base | bytes | record fields |\n|---|---|---:|---|")
        for r in record_sizes():
            print(f"| `{r['aug']}` | {r['base']} | {r['bytes']} | {r['fields']} |")
        return
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    # a fresh process per case, so one case's allocator state cannot slow another's
    rows = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("case", "warm_heap")]
    env = dict(os.environ)
    if args.warm_heap:
        env.update(MALLOC_MMAP_THRESHOLD_=str(256 << 20), MALLOC_TRIM_THRESHOLD_=str(256 << 20))
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, *passthrough],
                             check=True, capture_output=True, text=True, env=env).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["warm_heap"] = args.warm_heap
        rows.append(row)
    base = {r["case"]: r["ms_median"] for r in rows}
    for r in rows:
        r["x_vs_crop_flip"] = round(r["ms_median"] / base["apply:crop-flip"], 3)
        r["x_vs_per_sample"] = round(r["ms_median"] / base["per-sample"], 3)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
