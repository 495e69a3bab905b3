"""`make quickstart` runs scripts/quickstart.py; here the same script runs at a tiny size (synthetic
data, resnet8, one epoch each), so a change that breaks the README's first command fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "quickstart.py"
STUDENTS = ("vanilla", "sl", "kd-sl", "aug-sl")


def test_the_quickstart_script_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dataset", "synthetic:10:6",
                        "--image-size", "16", "--teacher-model", "resnet8", "--teacher-epochs", "1",
                        "--student-epochs", "1", "--views", "2", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for label in ("teacher", *STUDENTS):
        summary = json.loads((out / label / "summary.json").read_text())
        assert 0.0 <= summary["last"]["test"]["acc1"] <= 1.0
        assert label in r.stdout  # a row of the final table
    assert (out / "store.h5").is_file() and "quickstart finished" in r.stdout
    assert "$ labelenh student --method sl --store" in r.stdout  # commands are printed to copy
