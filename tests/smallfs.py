"""A real small filesystem for full-disk tests: a tmpfs of a few hundred KiB mounted for one test.

A patched writer or /dev/full fails every write at once; a real filesystem fills up part-way
through a write, after HDF5 and the kernel have accepted earlier ones — the case that matters.
Mounting needs root (and a kernel that lets this process mount); elsewhere the tests skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/proc/mounts").exists()


@contextmanager
def small_fs(base: Path, size_kib: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_kib` KiB at a fresh folder under `base`; unmount afterwards.
    Skips the calling test when mounting is not possible here."""
    if not _can_mount():
        pytest.skip("mounting a small tmpfs needs root")
    mnt = base / f"smallfs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave_kib: int) -> Path:
    """Occupy the filesystem at `mnt` until about `leave_kib` KiB stay free; returns the filler."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler.bin"
    n = max(0, free - leave_kib * 1024)
    with open(filler, "wb") as f:
        f.write(b"\xa5" * n)
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
