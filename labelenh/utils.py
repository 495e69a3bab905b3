"""Small shared helpers: derived seeds, provenance, atomic file writes, devices."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from labelenh import __version__
from labelenh.errors import LabelenhError, OutputError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, "epoch", 3)), stable across runs."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def git_commit() -> str:
    """The commit of the checkout the package runs from, or "unknown" (e.g. an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded next to every run and store."""
    import numpy

    env = {
        "labelenh": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torchvision

        env["torchvision"] = str(torchvision.__version__)
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return env


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LabelenhError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        return torch.device(name)
    raise LabelenhError(f"--device {name!r} is not one of auto, cpu, cuda")


# Why a write failed, and what to do about it, by errno (ENOSPC, read-only folders, ...).
WRITE_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space or choose another {where}"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another {where}"),
    errno.EFBIG: ("file too large for this file system", "choose another {where}"),
    errno.EROFS: ("read-only file system", "choose a writable {where}"),
    errno.EACCES: ("permission denied", "choose a writable {where} or fix the folder's permissions"),
    errno.EPERM: ("operation not permitted", "choose a writable {where} or fix the folder's permissions"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "choose another {where}"),
    errno.EEXIST: ("a file stands where a folder is needed", "choose another {where}"),
    errno.EISDIR: ("the path is a folder", "pass a file path in {where}"),
}
OUTPUT_FLAGS = "--out/--runs-dir"


def write_error(e: OSError, path: str | Path, *, where: str = OUTPUT_FLAGS,
                kept: str | None = None) -> BaseException:
    """A LabelenhError (one line: the problem, the fix, what is kept) for an OSError raised while
    writing `path`; the OSError itself when its errno is not a known write failure."""
    known = WRITE_ERRORS.get(e.errno or -1)
    if known is None:
        return e
    reason, fix = known
    if kept is None:
        intact = Path(path).is_file() and e.errno not in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST)
        kept = f"the previous {Path(path).name} is intact" if intact else "nothing was written"
    return OutputError(f"{reason} while writing {path}: {fix.format(where=where)}; {kept}")


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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
