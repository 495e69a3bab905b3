"""README's Python API snippet runs as written, and its Layout table matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_python_api_snippet_runs(monkeypatch):
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.S).group(1)
    # the same code on the small synthetic set, so the test stays fast; nothing else changes
    assert 'load_dataset("cifar10-mini")' in code
    code = code.replace('load_dataset("cifar10-mini")', 'load_dataset("synthetic:10:20", image_size=16)')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    method, model = scope["method"], scope["model"]
    assert method.name == "ols" and method.hparams == {"w_hard": 0.5, "w_soft": 0.5, "init": "zeros"}
    # ols learned its matrix from the observed predictions: rows of correct classes sum to 1
    s = method.state_dict()["S"]
    assert s.shape == (10, 10) and float(s.sum()) > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_build_method_takes_the_cli_names():
    import pytest

    from labelenh.errors import LabelenhError
    from labelenh.methods import build_method

    assert build_method("kd-sl", 10, temperature=4.0).hparams["T"] == 4.0
    assert build_method("ols", 10, ols_init="uniform").hparams["init"] == "uniform"
    with pytest.raises(LabelenhError, match="given twice"):
        build_method("kd-sl", 10, T=2.0, temperature=4.0)


def _layout_paths() -> list[Path]:
    """Every path of the table's first column; after the first, a cell's names are relative to
    the first one's folder (`labelenh/teach.py`, `student.py`)."""
    paths = []
    for line in _section("Layout").splitlines():
        if not line.startswith("| `"):
            continue
        tokens = re.findall(r"`([^`]+)`", line.split("|")[1])
        base = Path(tokens[0].rstrip("/")).parent
        paths += [Path(tokens[0])] + [base / t for t in tokens[1:]]
    return paths


def test_layout_table_matches_the_tree():
    listed = _layout_paths()
    for p in listed:
        assert (ROOT / p).exists(), f"README Layout lists {p}, which does not exist"
    top = {ROOT / p for p in listed}
    for entry in sorted((ROOT / "labelenh").iterdir()):
        if entry.name.startswith(("_", ".")) or entry.suffix not in (".py", ""):
            continue
        if entry.is_dir() and not (entry / "__init__.py").exists():
            continue
        assert entry in top, f"labelenh/{entry.name} is missing from README's Layout table"
