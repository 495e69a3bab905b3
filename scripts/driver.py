"""Running `labelenh` commands from the experiment drivers: printed first, several at a time,
finished runs skipped and interrupted ones resumed, a failure reported in one line."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).with_name("labelenh")


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def store_complete(path: Path) -> bool:
    """A finished store; an absent, interrupted or unreadable one is (re)exported, which resumes."""
    from labelenh.errors import LabelenhError
    from labelenh.store import SoftLabelStore

    if not path.exists():
        return False
    try:
        SoftLabelStore.open(path).close()
    except (LabelenhError, OSError):
        return False
    return True


def resume_flag(run_dir: Path) -> list[str]:
    """An interrupted run (a checkpoint but no summary) is continued, not restarted or refused."""
    return ["--resume"] if (run_dir / "checkpoint.pt").exists() else []


def run(args: list[str], dry: bool) -> None:
    run_all([args], dry, jobs=1)


def run_all(commands: list[list[str]], dry: bool, jobs: int) -> None:
    """Run independent commands, `jobs` at a time; with several jobs each uses one thread
    (small CPU models train faster as two single-thread processes than one two-thread one)."""
    for args in commands:
        print("$ " + " ".join(shlex.quote(a) for a in ["labelenh", *args]), flush=True)
    if dry or not commands:
        return
    env = dict(os.environ, OMP_NUM_THREADS="1") if jobs > 1 else None
    exe = str(BIN) if BIN.exists() else "labelenh"

    def one(args: list[str]) -> int:
        return subprocess.run([exe, *args], env=env).returncode

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # the others finish even if one fails
        codes = list(pool.map(one, commands))
    failed = [" ".join(args[:1] + args[args.index("--name"):][:2] if "--name" in args else args[:1])
              for args, code in zip(commands, codes, strict=True) if code]
    if failed:
        raise SystemExit(f"reproduce: {len(failed)} command(s) failed ({'; '.join(failed)}): see their "
                         "messages above; rerunning this script skips finished runs and resumes the others")


def on_gpu(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch  # only to see what "auto" picks

    return torch.cuda.is_available()


def default_jobs(jobs: int | None, device: str, ap: argparse.ArgumentParser) -> int:
    """--jobs: as given, else 2 on a CPU with 2+ cores (two single-thread runs beat one
    two-thread run for these small models) and 1 on a GPU."""
    if jobs is None:
        return 1 if on_gpu(device) else min(2, os.cpu_count() or 1)
    if jobs < 1:
        ap.error("--jobs must be at least 1")
    return jobs
