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


def test_no_long_function_class_or_module():
    """Units a newcomer can read: no function over 60 lines, class over 200, module over 400."""
    _, found, _ = code_stats.measure(ROOT / "labelenh")
    assert found["f60"] == [] and found["c200"] == [] and found["m400"] == [], (
        found["f60"], found["c200"], found["m400"])


def test_step_files_traces_the_student_step_through_the_package():
    """scripts/step_files.py: the files one student step enters, from a real trace."""
    import step_files

    from labelenh.data.settings import DataSettings
    from labelenh.engine import Engine, TrainConfig
    from labelenh.student import StudentSettings

    s = StudentSettings(model="resnet8", method="ls", data=DataSettings(dataset="synthetic:10:40", image_size=16),
                        train=TrainConfig(epochs=2, batch_size=16, milestones=[5]), device="cpu")
    files = step_files.traced_files(s, Engine)
    for must in ("labelenh/student.py", "labelenh/pipeline.py", "labelenh/engine/core.py",
                 "labelenh/methods/smoothing.py", "labelenh/models/cifar_resnet.py"):
        assert must in files, files
    assert all(f.startswith("labelenh/") and f.endswith(".py") for f in files)
    assert "labelenh/teach.py" not in files and "labelenh/store/reader.py" not in files  # not on this path
