"""An exclusive lock file next to a store (`store.h5.lock`), held while an export writes it.

The lock is filelock's `FileLock`: `fcntl.flock` on POSIX and `msvcrt.locking` on Windows. Both
belong to the open file and vanish when the process dies (kill -9 included), so a crashed export
never leaves a stale lock behind; and nothing here imports `fcntl`, so stores can be read (and
written) on every OS.
"""

from __future__ import annotations

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
        self._lock = None

    def acquire(self) -> ExportLock:
        from filelock import FileLock, SoftFileLock, Timeout

        from labelenh.utils import write_error

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. a file where the folder should be
            raise write_error(e, self.store, where="--out") from None
        # thread_local=False: the export's writer threads share the one lock of this process;
        # the lock file is removed on release (below), while still held.
        if FileLock is SoftFileLock:
            # neither flock nor msvcrt (an unusual platform): a marker file, which writes its own pid
            # but outlives a killed process
            lock = SoftFileLock(self.path, timeout=0, thread_local=False)
        else:
            lock = FileLock(self.path, timeout=0, thread_local=False, on_acquired=_write_pid)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_pid(self.path)
            who = f" (process {holder})" if holder else ""
            raise LabelenhError(
                f"another export is writing {self.store}{who}: wait for it to finish, or "
                f"stop it and rerun (the lock {self.path.name} is released when it exits)"
            ) from None
        except OSError as e:  # a read-only folder: nothing written yet
            raise write_error(e, self.store, where="--out") from None
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            # while still held, so nobody can take this inode (a peer that opened it before the
            # unlink finds it gone and retries: filelock checks); Windows' filelock removes it itself
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        try:
            self._lock.release()
        finally:
            self._lock = None

    def __enter__(self) -> ExportLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _write_pid(fd: int) -> None:
    """Who holds the lock, for the message a second export prints."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())


def _read_pid(path: Path) -> str:
    try:
        lines = path.read_text().split()  # a soft lock writes "pid hostname"
    except OSError:
        return ""
    return lines[0] if lines else ""
