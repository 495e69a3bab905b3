"""Why a write failed, and what to do about it: the errno catalogue that turns an OSError
while writing an output (a full disk, a read-only folder, ...) into one line."""

from __future__ import annotations

import errno
from pathlib import Path

from labelenh.errors import OutputError

# by errno
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
