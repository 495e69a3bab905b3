"""Output files that are never half-written: write to a temporary sibling, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labelenh.write_errors import OUTPUT_FLAGS, write_error


def atomic_write(path: str | Path, write: Callable[[Path], None], *, where: str = OUTPUT_FLAGS) -> Path:
    """Write through a temporary sibling, fsync, then rename: a crash never leaves a truncated file
    under the final name (the previous version stays intact until the rename). A full disk or a
    read-only folder raises LabelenhError naming the file; the previous version stays."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(e, path, where=where) from None
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise write_error(e, path, where=where) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path, names: list[str]) -> int:
    """Delete the temporary files that atomic_write leaves for `names` in `folder` when its
    process is killed mid-write (each can be as large as a checkpoint); call it only where no
    other process writes those files. Returns how many were removed."""
    removed = 0
    for name in names:
        for p in Path(folder).glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def write_json(path: str | Path, obj: Any) -> Path:
    def _w(p: Path) -> None:
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    return atomic_write(path, _w)
