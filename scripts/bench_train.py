"""Channels-last against contiguous (NCHW) training steps, side by side in one process.

The engine turns channels-last on by default on CPU as well as on CUDA; this is the measurement
behind that default. For each model, two copies with the same weights train on the same batch
(forward, soft cross-entropy, backward, SGD step: what `Engine._train_epoch` does per batch on
CPU), one in each memory format. Rounds interleave the two (A B, then B A, ...), each round
times `--steps` steps of each after warm-up steps; a figure is the median over rounds, and the
speed-up is the median of the per-round ratios, so load from other processes that drifts
between rounds cancels out.

Usage:
  OMP_NUM_THREADS=2 python scripts/bench_train.py                        # resnet20, timm:resnet18
  OMP_NUM_THREADS=2 python scripts/bench_train.py --models resnet8,resnet56 --rounds 9 --jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labelenh.losses import soft_cross_entropy  # noqa: E402
from labelenh.models import build_model  # noqa: E402


def _step_timer(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, channels_last: bool):
    """A closure that runs `n` training steps and returns seconds per step."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = soft_cross_entropy(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n

    return run


def bench(name: str, batch: int, size: int, rounds: int, steps: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)  # [B, 3, H, W] normalised images
    target = torch.softmax(torch.randn(batch, 10, generator=g), 1)  # [B, 10] dense targets
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        model = build_model(name, 10, seed=0)
        runs[fmt] = _step_timer(model, x.clone(), target, fmt == "channels_last")
        runs[fmt](warmup)
    times: dict[str, list[float]] = {fmt: [] for fmt in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for fmt in order:
            times[fmt].append(runs[fmt](steps))
    ratios = [a / b for a, b in zip(times["contiguous"], times["channels_last"], strict=True)]
    return {"model": name, "batch": batch, "image": size, "rounds": rounds, "steps": steps,
            "contiguous_ms": 1e3 * statistics.median(times["contiguous"]),
            "channels_last_ms": 1e3 * statistics.median(times["channels_last"]),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,timm:resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--jsonl", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
          file=sys.stderr)
    rows = []
    for name in a.models.split(","):
        row = bench(name, a.batch, a.image_size, a.rounds, a.steps, a.warmup)
        row["threads"] = torch.get_num_threads()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with a.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| model | batch × image | contiguous ms/step | channels-last ms/step | speed-up (min–max) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} × {r['image']}² | {r['contiguous_ms']:.1f} | {r['channels_last_ms']:.1f} "
              f"| {r['speedup']:.2f}x ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) |")


if __name__ == "__main__":
    main()
