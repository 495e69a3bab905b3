"""Faults: `export-soft-labels`, `teach` and `student` killed (SIGKILL) or interrupted (SIGINT)
at seeded random points, then resumed, end bit-identical to an uninterrupted run; no kill ever
leaves a checkpoint or a store that loads as valid but is not; a full disk or a read-only
folder while writing checkpoints, run files and stores is one line, exit 2, the previous file
intact.

The kill tests run each command as a chain of processes: the first is killed at the first
point, the next resumes and is killed at the second, and so on; the last resume runs in this
process and must reproduce the uninterrupted run. Each process of a chain is started (and has
imported torch) while the previous one runs, so a chain costs about one process start-up.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli
from storetools import contents

from labelenh.checkpoint import read_checkpoint, save_checkpoint
from labelenh.errors import LabelenhError
from labelenh.models import build_model
from labelenh.store import SoftLabelStore, store_info

DS = ["--dataset", "synthetic:10:20", "--image-size", "16"]  # N = 200 train samples, 10 classes
EPOCHS = 8
TRAIN = ["--model", "resnet8", "--epochs", str(EPOCHS), "--batch-size", "32", "--milestones", "6",
         "--device", "cpu"]
CHUNKS = 25  # 200 samples in chunks of 8
KILLS = 5  # kill points per command
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_diagrams(monkeypatch):
    # the reliability PNG costs ~1 s of matplotlib per run and is not what these tests check
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A resnet8 teacher checkpoint with seeded random weights (what it predicts does not matter)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    g = torch.Generator().manual_seed(0)
    model = build_model("resnet8", 10)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_checkpoint(path, {"model_name": "resnet8", "num_classes": 10, "in_chans": 3,
                           "model": model.state_dict(), "metrics": {"acc1": 0.1}})
    return path


def export_args(teacher: Path, out: Path) -> list[str]:
    return ["export-soft-labels", "-t", str(teacher), *DS, "--aug", "ricap", "--views", "4",
            "--batch-size", "8", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """One forking process for every chain of this module (it starts up as the fixtures run)."""
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def store(teacher, zygote, tmp_path_factory) -> Path:
    """The uninterrupted export: the reference of the export chain, the store of the students."""
    out = tmp_path_factory.mktemp("store") / "ref.h5"
    r = run_cli(*export_args(teacher, out))
    assert r.code == 0, r.err
    return out


# ---- processes that can be killed ----------------------------------------------------------

# A zygote: imports torch and labelenh once, then forks one child per order read from stdin.
# A child runs the CLI with its stderr on a FIFO the test reads, and can stop at a given
# announced moment (and wait there to be killed). The zygote reports each child's pid and,
# once it has ended, its exit status. The children announce two moments where a kill is most
# telling: a checkpoint written to its temporary name but not yet renamed, and a store chunk
# whose data is on disk but whose progress flag is not; and the export is paced so that kills
# land mid-run. Forking from an imported interpreter makes each run of a chain cost
# milliseconds instead of a Python + torch start-up.
ZYGOTE = r"""
import json, os, signal, sys, time, traceback
from pathlib import Path
import torch
torch.set_num_threads(1)
import labelenh.checkpoint as ck
import labelenh.cli, labelenh.student, labelenh.teach
import labelenh.store.export
import labelenh.store.writer as wr
labelenh.cli._register_commands()
# warm what every run needs first (torchvision's import alone takes a second)
from labelenh.data import load_dataset
from labelenh.models import build_model
from labelenh.utils import environment
environment()
load_dataset("synthetic:10:20", image_size=16)
build_model("resnet8", 10)(torch.zeros(2, 3, 16, 16)).sum().backward()
pause, said = None, {}

def say(text):
    print(text, file=sys.stderr, flush=True)
    said[text] = said.get(text, 0) + 1
    if pause and text == pause[0] and said[text] == pause[1]:
        time.sleep(30)  # killed in here

atomic_write = ck.atomic_write
def traced_atomic_write(path, write, **kw):
    def w(p):
        write(p)
        say(f"tmp-written {Path(path).name}")
    return atomic_write(path, w, **kw)
ck.atomic_write = traced_atomic_write

in_chunk = []
sync_data = wr.sync_data
def traced_sync_data(fd):
    sync_data(fd)
    if in_chunk:  # write_chunk's sync between the chunk's data and its flag
        say("data-synced")
wr.sync_data = traced_sync_data

write_chunk = wr.StoreWriter.write_chunk
def traced_write_chunk(self, c, *a):
    in_chunk.append(c)
    try:
        write_chunk(self, c, *a)
    finally:
        in_chunk.clear()
    say("chunk")
    time.sleep(0.02)
wr.StoreWriter.write_chunk = traced_write_chunk

print("ready", flush=True)
for line in sys.stdin:
    orders = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works in the child
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(orders["stderr"], os.O_WRONLY), 2)
        pause = orders["pause_at"]
        code = 1
        try:
            labelenh.cli.main(orders["argv"])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


class Zygote:
    """A Python process that has imported torch and labelenh and forks the runs of a chain."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.cwd = cwd
        self.log = open(cwd / "zygote.log", "w")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=cwd, env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.out: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self.p.stdout, self.out), daemon=True).start()
        self.runs = 0
        self.current: Run | None = None

    def reply(self, word: str, timeout: float = 120.0) -> str:
        try:
            line = self.out.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(word):
            raise AssertionError(f"zygote: expected {word!r}, got {line!r}; log:\n"
                                 + (self.cwd / "zygote.log").read_text())
        return line.split(" ", 1)[-1]

    def start(self, argv: list[str], pause_at: tuple[str, int] | None = None) -> Run:
        if self.runs == 0:
            self.reply("ready")
        self.runs += 1
        fifo = self.cwd / f"stderr-{self.runs}"
        os.mkfifo(fifo)
        run = Run(self, fifo)
        self.p.stdin.write(json.dumps({"argv": [str(a) for a in argv], "pause_at": pause_at,
                                       "stderr": str(fifo)}) + "\n")
        self.p.stdin.flush()
        run.pid = int(self.reply("pid"))
        self.current = run
        return run

    def stop_all(self) -> None:
        """Kill the current run if a failed test left it running (the zygote then waits again)."""
        run, self.current = self.current, None
        if run is not None and not run.ended:
            run.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


def _pump(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line.rstrip("\n"))
    q.put(None)


class Run:
    """One forked run: its stderr lines as they come, and a way to stop it with a signal."""

    def __init__(self, zygote: Zygote, fifo: Path) -> None:
        self.zygote = zygote
        self.pid = 0
        self.ended = False
        self.times: list[float] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: _pump(open(fifo), self.lines), daemon=True).start()

    def wait_for(self, line_start: str, count: int, timeout: float = 120.0) -> None:
        """Until this run printed `count` stderr lines starting with `line_start`."""
        n = sum(line.startswith(line_start) for line in self.seen)
        deadline = time.monotonic() + timeout
        while n < count:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {count} {line_start!r} lines in {timeout} s:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"the run ended before {count} {line_start!r} lines:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(line_start):
                n += 1
                self.times.append(time.monotonic())

    def interval(self) -> float | None:
        """Seconds between the last two lines waited for, if there were two."""
        return self.times[-1] - self.times[-2] if len(self.times) > 1 else None

    def stop(self, sig: int) -> int:
        """Send `sig`; the run's exit code (negative: killed by that signal)."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # it ended by itself (a failed test): its exit status is waiting
            pass
        code = int(self.zygote.reply("exit", timeout=60))
        self.ended = True
        while (line := self.lines.get(timeout=10)) is not None:  # drained to EOF
            self.seen.append(line)
        return code


def kill_plan(seed: int, *, events: int, mid_write: str) -> list[tuple[str, int, float, int]]:
    """KILLS points (kind, event, fraction, signal) from a seeded generator: increasing events
    (epochs, or chunks of each process), a random fraction of an event's duration to wait after
    it, SIGKILL and SIGINT both used, and one kill in the middle of a write (`mid_write`)."""
    rng = np.random.default_rng(seed)
    at = sorted(rng.integers(1, events + 1, size=KILLS).tolist())
    sigs = rng.permutation([signal.SIGKILL, signal.SIGINT] * ((KILLS + 1) // 2))[:KILLS].tolist()
    kinds = ["after"] * KILLS
    kinds[int(rng.integers(KILLS))] = mid_write
    return [(k, e, float(rng.uniform(0, 0.9)), s) for k, e, s in zip(kinds, at, sigs, strict=True)]


def check_stopped(proc: Run, code: int, sig: int) -> None:
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, (code, proc.seen)
    else:  # Ctrl-C: one line, exit 130, no traceback
        assert code == 130, (code, proc.seen)
        assert proc.seen[-1] == "labelenh: interrupted", proc.seen
        assert not any("Traceback" in line for line in proc.seen), proc.seen


# ---- export --------------------------------------------------------------------------------

def check_flags_are_true(path: Path, ref: Path) -> int:
    """Every chunk flagged as written holds exactly the reference's bytes; returns how many."""
    with h5py.File(path, "r", locking=False) as f, h5py.File(ref, "r") as g:
        done = f["progress"][()].astype(bool)
        rows = np.repeat(done, 8)[:200]
        for name in ("labels", "views/recipes", "teachers/teacher/clean", "teachers/teacher/views"):
            assert np.array_equal(f[name][()][rows], g[name][()][rows]), name
        return int(done.sum())


def test_export_killed_at_random_points_resumes_bit_identical(teacher, store, zygote, tmp_path):
    out = tmp_path / "s.h5"
    # events: chunks of each process (1..3 of the 25, so that five kills leave work to resume)
    plan = [(kind, 1 + e % 3, frac, sig) for kind, e, frac, sig in kill_plan(1, events=9, mid_write="data-synced")]
    chain = zygote
    done = 0
    try:
        for kind, event, frac, sig in plan:
            if kind == "after":
                proc = chain.start(export_args(teacher, out))
                proc.wait_for("chunk", event)
                time.sleep(0.02 * frac)  # somewhere in the next chunk's compute or write
            else:  # data of a chunk on disk, its flag not yet: a hard kill there
                sig = signal.SIGKILL
                proc = chain.start(export_args(teacher, out), pause_at=("data-synced", event))
                proc.wait_for("data-synced", event)
            check_stopped(proc, proc.stop(sig), sig)
            # never a store that opens; every flag it holds is true; progress never goes back
            with pytest.raises(LabelenhError, match="incomplete"):
                SoftLabelStore.open(out)
            flagged = check_flags_are_true(out, store)
            assert flagged >= done and not store_info(out)["complete"]
            if kind != "after":
                assert flagged == done + event - 1  # the paused chunk's flag was never written
            done = flagged
    finally:
        chain.stop_all()
    assert 0 < done < CHUNKS
    r = run_cli(*export_args(teacher, out))  # the same command again: resumes
    assert r.code == 0, r.err
    assert f"resumed after {done} of {CHUNKS} chunks" in r.out
    assert contents(out) == contents(store)
    SoftLabelStore.open(out).close()


# ---- teach and student -----------------------------------------------------------------------

def history(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


def check_run_after_kill(run: Path, ref: Path, last_epoch: int, kind: str, sig: int) -> int:
    """A killed run folder: checkpoint.pt loads (never truncated) and is an epoch of the
    reference run; metrics.jsonl lines are whole and those of the reference; no summary yet."""
    if not (run / "checkpoint.pt").exists():  # killed before its first checkpoint
        assert last_epoch == 0 and not (run / "metrics.jsonl").exists()
        return 0
    ck = read_checkpoint(run / "checkpoint.pt")
    epoch = int(ck["epoch"])
    assert last_epoch <= epoch < EPOCHS
    lines = history(run)
    assert len(lines) in (epoch - 1, epoch)  # written right after the checkpoint
    assert lines == history(ref)[: len(lines)]
    assert not (run / "summary.json").exists()
    leftovers = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    if sig == signal.SIGINT:
        assert leftovers == [], leftovers  # Ctrl-C removes the temporary file it was writing
    else:
        assert all(p.startswith((".checkpoint.pt.", ".metrics.jsonl.", ".config.json.", ".env.json."))
                   for p in leftovers), leftovers
    return epoch


def run_chain(chain: Zygote, argv: list[str], run: Path, ref: Path, seed: int, epoch_s: float) -> None:
    """Kill `argv` at KILLS seeded points (resuming after each), then finish it here; compare
    with the uninterrupted run in `ref`. epoch_s: how long an epoch took in the reference."""
    # kill points up to epoch 4 of 8 (a process resumed at epoch e is killed after e + 1 at the
    # earliest): the waits after them can overrun by whole epochs and still not reach the end
    plan = kill_plan(seed, events=EPOCHS // 2, mid_write="tmp-written checkpoint.pt")
    epoch = 0
    try:
        for kind, event, frac, sig in plan:
            target = max(event, epoch + 1)  # an epoch this process reaches (it resumes at `epoch`)
            resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
            if kind == "after":
                proc = chain.start(argv + resume)
                proc.wait_for("epoch ", target - epoch)
                epoch_s = proc.interval() or epoch_s  # as fast as epochs go right now
                time.sleep(frac * epoch_s)  # anywhere in the next epoch: training, evaluation, writing
            else:  # checkpoint `target` written to its temporary name, not yet renamed
                proc = chain.start(argv + resume, pause_at=("tmp-written checkpoint.pt", target - epoch))
                proc.wait_for("tmp-written checkpoint.pt", target - epoch)
            check_stopped(proc, proc.stop(sig), sig)
            got = check_run_after_kill(run, ref, epoch, kind, sig)
            if kind != "after":
                assert got == target - 1  # the interrupted write left the previous checkpoint
            epoch = got
    finally:
        chain.stop_all()
    r = run_cli(*argv, "--resume")
    assert r.code == 0, r.err
    a = read_checkpoint(run / "checkpoint.pt")
    b = read_checkpoint(ref / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    assert a["task"].keys() == b["task"].keys()
    for k, v in (b["task"].get("method") or {}).items():  # e.g. the OLS soft-label matrix
        assert torch.equal(a["task"]["method"][k], v), k
    assert history(run) == history(ref)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # the resume cleared them
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    assert sa["last"] == sb["last"] and sa["best"] == sb["best"]


def reference(argv: list[str], runs: Path) -> float:
    """Run `argv` uninterrupted into `runs`; the shortest training time of an epoch, seconds."""
    r = run_cli(*argv, "--runs-dir", runs)
    assert r.code == 0, r.err
    name = argv[argv.index("--name") + 1]
    return min(json.loads(x)["train_time_s"] for x in (runs / name / "metrics.jsonl").read_text().splitlines())


def test_teach_killed_at_random_points_resumes_to_the_same_weights(zygote, tmp_path):
    chain = zygote
    argv = ["teach", *DS, *TRAIN, "--name", "t"]
    epoch_s = reference(argv, tmp_path / "ref")
    run_chain(chain, [*argv, "--runs-dir", str(tmp_path / "runs")], tmp_path / "runs" / "t",
              tmp_path / "ref" / "t", seed=2, epoch_s=epoch_s)


def test_student_killed_at_random_points_resumes_to_the_same_weights(store, zygote, tmp_path):
    # OLS: its soft-label matrix is state that a resume must restore; views replayed from the store
    argv = ["student", *DS, *TRAIN, "--method", "ols", "--store", str(store), "--aug", "ricap", "--name", "s"]
    chain = zygote
    epoch_s = reference(argv, tmp_path / "ref")
    run_chain(chain, [*argv, "--runs-dir", str(tmp_path / "runs")], tmp_path / "runs" / "s",
              tmp_path / "ref" / "s", seed=3, epoch_s=epoch_s)


def test_kill_between_best_and_last_checkpoint_keeps_best_pt_right(tmp_path, monkeypatch):
    """With a validation split an improving epoch writes best.pt and checkpoint.pt; a kill after
    the first of the two must not leave a best.pt other than the epoch the run calls its best."""
    import labelenh.engine.core as engine

    argv = ["teach", *DS, *TRAIN[:2], "--epochs", "3", *TRAIN[4:], "--val-split", "0.2", "--name", "t"]
    assert run_cli(*argv, "--runs-dir", tmp_path / "ref").code == 0
    ref, run = tmp_path / "ref" / "t", tmp_path / "runs" / "t"
    best = json.loads((ref / "summary.json").read_text())["best"]["epoch"]
    save = engine.save_checkpoint

    def killed_after_the_first_file(path, payload):
        save(path, payload)
        if payload["epoch"] == best:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(engine, "save_checkpoint", killed_after_the_first_file)
        assert run_cli(*argv, "--runs-dir", tmp_path / "runs").code == 130
    resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
    r = run_cli(*argv, "--runs-dir", tmp_path / "runs", *resume)
    assert r.code == 0, r.err
    assert json.loads((run / "summary.json").read_text())["best"]["epoch"] == best
    a, b = read_checkpoint(run / "best.pt"), read_checkpoint(ref / "best.pt")
    assert a["epoch"] == b["epoch"] == best
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k


# ---- a full disk -----------------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.access("/dev/full", os.W_OK), reason="no writable /dev/full here")


def assert_error_line(r, *needles: str) -> None:
    """As assert_one_line_error, besides the epoch lines a training run prints as it goes."""
    r.err = "\n".join(line for line in r.err.splitlines() if not line.startswith("epoch "))
    assert_one_line_error(r, *needles)


def full_disk_for(monkeypatch, name: str) -> None:
    """atomic_write's temporary file for `name` becomes a link to /dev/full: the kernel answers
    every write to it with ENOSPC, as on a full disk (torch.save and json go their usual way)."""
    real = tempfile.mkstemp

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if prefix == f".{name}.":
            link = Path(dir) / f"{prefix}full{suffix}"
            link.symlink_to("/dev/full")
            return os.open(link, os.O_RDWR), str(link)
        return real(suffix=suffix, prefix=prefix, dir=dir, text=text)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@needs_dev_full
@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.jsonl", "summary.json"])
def test_full_disk_while_training_keeps_the_previous_files(tmp_path, monkeypatch, name):
    argv = ["teach", *DS, *TRAIN[:2], "--epochs", "1", *TRAIN[4:], "--name", "t", "--runs-dir", tmp_path]
    assert run_cli(*argv).code == 0
    run = tmp_path / "t"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    longer = [*argv[: argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:], "--resume"]
    with monkeypatch.context() as mp:
        full_disk_for(mp, name)
        r = run_cli(*longer)
    assert_error_line(r, f"no space left on device while writing {run / name}",
                          "free space or choose another --out/--runs-dir", f"the previous {name} is intact")
    assert (run / name).read_bytes() == before[name]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # the link is gone
    assert read_checkpoint(run / "checkpoint.pt")["epoch"] in (1, 2)
    # space again: the same command finishes the run, as if nothing had happened
    r = run_cli(*longer)
    assert r.code == 0, r.err
    ref = tmp_path / "ref"
    assert run_cli(*[ref if a == tmp_path else a for a in longer[:-1]]).code == 0
    a, b = read_checkpoint(run / "checkpoint.pt"), read_checkpoint(ref / "t" / "checkpoint.pt")
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    assert history(run) == history(ref / "t")


@needs_dev_full
def test_full_disk_while_creating_a_store_keeps_the_previous_one(teacher, store, tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(store.read_bytes())
    # --overwrite builds the new store beside the old one; h5py writes its skeleton to this
    # temporary name, then renames it: make it the full disk
    (tmp_path / f"..{out.name}.overwrite.h5.{os.getpid()}.tmp").symlink_to("/dev/full")
    r = run_cli(*export_args(teacher, out), "--overwrite")
    assert_one_line_error(r, f"no space left on device while writing {out}", "free space or choose another --out",
                          "the previous s.h5 is intact")
    assert out.read_bytes() == store.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no link, no lock left
    SoftLabelStore.open(out).close()


def disk_full_from_chunk(mp: pytest.MonkeyPatch, first: int) -> None:
    """Every store chunk from `first` on fails to write with ENOSPC."""
    from labelenh.store.writer import StoreWriter

    write_chunk = StoreWriter.write_chunk

    def fills_up(self, c, *a):
        if c >= first:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write_chunk(self, c, *a)

    mp.setattr(StoreWriter, "write_chunk", fills_up)


def test_full_disk_while_writing_chunks_keeps_them_resumable(teacher, store, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    with monkeypatch.context() as mp:
        disk_full_from_chunk(mp, 3)
        r = run_cli(*export_args(teacher, out))
    assert_one_line_error(r, f"no space left on device while writing {out}", "free space or choose another --out",
                          "chunks already written are kept", "rerun the same command")
    with pytest.raises(LabelenhError, match=r"incomplete \(3 of 25"):
        SoftLabelStore.open(out)
    assert check_flags_are_true(out, store) == 3
    r = run_cli(*export_args(teacher, out))
    assert r.code == 0 and "resumed after 3 of 25 chunks" in r.out, r.err
    assert contents(out) == contents(store)


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(teacher, store, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    out.write_bytes(store.read_bytes())
    other = [*export_args(teacher, out), "--view-seed", "1"]
    with monkeypatch.context() as mp:
        disk_full_from_chunk(mp, 3)
        r = run_cli(*other, "--overwrite")
    assert_one_line_error(r, f"no space left on device while writing {out}", "the previous s.h5 is intact",
                          "chunks already written are kept", "rerun the same command")
    # the old store is still the store, whole and readable
    assert out.read_bytes() == store.read_bytes()
    SoftLabelStore.open(out).close()
    # the same command resumes the new store, then puts it in place of the old one
    r = run_cli(*other, "--overwrite")
    assert r.code == 0 and "resumed after 3 of 25 chunks" in r.out, r.err
    ref = tmp_path / "ref.h5"
    assert run_cli(*[str(ref) if a == str(out) else a for a in other]).code == 0
    assert contents(out) == contents(ref) != contents(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.h5", "s.h5"]
    # an --overwrite abandoned half-way and the old arguments run again: the old store stands,
    # and what the abandoned run left is removed
    out.write_bytes(store.read_bytes())
    with monkeypatch.context() as mp:
        disk_full_from_chunk(mp, 3)
        assert run_cli(*other, "--overwrite").code == 2
    assert (tmp_path / f".{out.name}.overwrite.h5").exists()
    r = run_cli(*export_args(teacher, out))
    assert r.code == 0 and "already complete" in r.out, r.err
    assert out.read_bytes() == store.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.h5", "s.h5"]


# ---- a read-only folder ----------------------------------------------------------------------

def read_only(monkeypatch, folder: Path) -> None:
    """Opening a file for writing inside `folder` fails with EROFS, as on a read-only mount
    (the tests run as root, for whom permission bits block nothing)."""
    real = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def ro_open(path, flags, *a, **kw):
        if flags & writing and Path(path).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)


def test_read_only_folder_is_one_line_and_changes_nothing(teacher, store, tmp_path, monkeypatch):
    argv = ["teach", *DS, *TRAIN[:2], "--epochs", "1", *TRAIN[4:], "--name", "t", "--runs-dir", tmp_path / "runs"]
    assert run_cli(*argv).code == 0
    run = tmp_path / "runs" / "t"
    (tmp_path / "ro").mkdir()
    kept = tmp_path / "ro" / "s.h5"
    kept.write_bytes(store.read_bytes())
    before = {p: p.read_bytes() for p in [*run.iterdir(), kept]}
    with monkeypatch.context() as mp:
        read_only(mp, run)
        r = run_cli(*[a if a != "1" else "2" for a in argv], "--resume")
        assert_one_line_error(r, "read-only file system while writing", str(run), "choose a writable --out/--runs-dir",
                              "is intact")
        read_only(mp, tmp_path / "ro")
        r = run_cli(*export_args(teacher, tmp_path / "ro" / "new.h5"))
        assert_one_line_error(r, f"read-only file system while writing {tmp_path / 'ro' / 'new.h5'}",
                              "choose a writable --out", "nothing was written")
        r = run_cli(*export_args(teacher, kept), "--overwrite")
        assert_one_line_error(r, "read-only file system", "choose a writable --out", "the previous s.h5 is intact")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["s.h5"]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in before if p.parent == run)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway; "
                    "test_read_only_folder_is_one_line_and_changes_nothing simulates EROFS instead")
def test_folder_without_write_permission(teacher, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_cli(*export_args(teacher, ro / "s.h5"))
        assert_one_line_error(r, "permission denied while writing", "--out", "nothing was written")
        r = run_cli("teach", *DS, *TRAIN[:2], "--epochs", "1", *TRAIN[4:], "--runs-dir", ro)
        assert_one_line_error(r, "permission denied", "--runs-dir")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
