"""An exclusive lock file next to a store (`store.h5.lock`), held while an export writes it.

`fcntl.flock` locks belong to the open file and vanish when the process dies (kill -9 included),
so a crashed export never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from labelenh.errors import LabelenhError


def lock_path(store: str | Path) -> Path:
    p = Path(store)
    return p.with_name(p.name + ".lock")


class ExportLock:
    """`with ExportLock(path): ...` — refuses (LabelenhError) when another process holds it."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(store)
        self._fd: int | None = None

    def acquire(self) -> ExportLock:
        from labelenh.utils import write_error

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. a file where the folder should be
            raise write_error(e, self.store, where="--out") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only folder: nothing written yet
                raise write_error(e, self.store, where="--out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_pid(self.path)
                who = f" (process {holder})" if holder else ""
                raise LabelenhError(
                    f"another export is writing {self.store}{who}: wait for it to finish, or "
                    f"stop it and rerun (the lock {self.path.name} is released when it exits)"
                ) from None
            # The previous holder may have unlinked the file between our open and flock:
            # then we hold a lock on a dead inode and must retry on the new path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can hold this inode
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ExportLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
