"""The store schema is written once, in labelenh/store/schema.py: README's schema tables are
generated from it and must not drift, and the tables name exactly what a store holds."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import torch
from tinynet import TinyNet

from labelenh.data import TensorImages
from labelenh.store import export_soft_labels, teacher_from_model
from labelenh.store.schema import DATASETS, ROOT_ATTRS, TEACHER_ATTRS
from labelenh.views import ViewSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import schema_tables  # noqa: E402


def test_readme_tables_are_generated_from_the_schema():
    text = (ROOT / "README.md").read_text()
    a, b = schema_tables.readme_tables(text)
    assert text[a:b] == schema_tables.rendered(), (
        "README.md's schema tables differ from labelenh/store/schema.py: run python scripts/schema_tables.py"
    )


def _names(group: h5py.Group) -> set[str]:
    out: set[str] = set()
    group.visititems(lambda name, obj: out.add("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_tables_name_what_a_store_holds(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = TensorImages(torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8),
                       torch.randint(0, 4, (20,), generator=g))
    teacher = teacher_from_model(TinyNet(0, num_classes=4), "t")
    common = dict(dataset="toy", num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3, num_views=2,
                  spec=ViewSpec("crop-flip", pad=1), chunk_size=8)
    held: set[str] = set()
    for fmt in ("fp16", "topk:2"):
        path = tmp_path / f"{fmt.replace(':', '')}.h5"
        export_soft_labels(path, [teacher], src, fmt=fmt, **common)
        with h5py.File(path, "r") as f:
            assert set(f.attrs) <= {name for name, _, _ in ROOT_ATTRS}
            assert set(f.attrs) >= {name for name, _, _ in ROOT_ATTRS} - {"provenance"}  # derived stores
            documented = {n for row in TEACHER_ATTRS for n in row[0].split(", ")}
            assert set(f["teachers/t"].attrs) <= documented
            held |= {name.replace("/teachers/t/", "/teachers/<name>/") for name in _names(f)}
    assert held == {path for path, _, _, _ in DATASETS}
