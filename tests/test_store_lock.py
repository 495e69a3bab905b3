"""The export lock is portable: `labelenh.store` imports without `fcntl` (as on Windows), and the
lock still keeps a second export out, in this process and in another one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_FCNTL = textwrap.dedent("""
    import sys
    if sys.argv[1] == "no-fcntl":
        sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError, as on Windows
    import labelenh.store
    from labelenh.errors import LabelenhError
    from labelenh.store.lock import ExportLock
    store = sys.argv[2]
    with ExportLock(store):
        try:
            ExportLock(store).acquire()
        except LabelenhError as e:
            print("REFUSED", e)
        else:
            print("ACQUIRED TWICE")
        sys.stdout.flush()
        if len(sys.argv) > 3:  # hold the lock until told to go
            sys.stdin.readline()
    print("RELEASED")
""")


def _python(*args: str, fcntl: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WITHOUT_FCNTL, "fcntl" if fcntl else "no-fcntl", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_store_imports_and_locks_without_fcntl(tmp_path):
    p = _python(str(tmp_path / "s.h5"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "REFUSED another export is writing" in out and "RELEASED" in out
    assert not (tmp_path / "s.h5.lock").exists()


@pytest.mark.parametrize("fcntl", [False, True])
def test_a_lock_held_by_another_process_refuses_this_one(tmp_path, fcntl):
    """Another process of the same kind (with or without fcntl) is refused while one holds it."""
    store = tmp_path / "s.h5"
    p = _python(str(store), "hold", fcntl=fcntl)
    try:
        assert p.stdout.readline().startswith("REFUSED")  # it holds the lock now
        q = _python(str(store), fcntl=fcntl)
        _, err = q.communicate(timeout=120)
        assert q.returncode != 0 and "another export is writing" in err
        if fcntl:
            assert f"(process {p.pid})" in err
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "RELEASED"
    finally:
        p.communicate(timeout=120)
    q = _python(str(store), fcntl=fcntl)  # free again
    out, err = q.communicate(timeout=120)
    assert q.returncode == 0 and "RELEASED" in out, err


def test_the_lock_dies_with_a_killed_process(tmp_path):
    """With the OS's own lock (flock here, msvcrt on Windows), as filelock chooses."""
    from labelenh.store.lock import ExportLock

    store = tmp_path / "s.h5"
    p = _python(str(store), "hold", fcntl=True)
    assert p.stdout.readline().startswith("REFUSED")
    p.kill()  # SIGKILL: no release runs
    p.communicate(timeout=120)
    with ExportLock(store):
        pass
