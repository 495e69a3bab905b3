"""The package's dependency rules, measured by scripts/code_stats.py: the store never imports
the target methods, and no module imports another's private names."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import code_stats  # noqa: E402


def test_no_backward_or_private_imports():
    rows, found, options = code_stats.measure(ROOT / "labelenh")
    assert found["store_methods"] == []
    assert found["private"] == []
    assert dict(rows)["labelenh.store imports of labelenh.methods"] == "0"
    assert options  # the training options were found (TrainConfig, DataSettings)
