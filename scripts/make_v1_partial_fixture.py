"""Write tests/fixtures/v1/crop-flip-partial.h5: the crop-flip store of make_v1_fixture.py,
interrupted after its first chunk (1 of 2 written), as the schema-1 code left it.

Run once, at commit 6704e2a (schema 1), as `python scripts/make_v1_partial_fixture.py`; the
fixture pins the bytes the schema-1 code wrote, so tests/test_store_integrity.py can show that
later code resumes it into the same store as the uninterrupted crop-flip.h5.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tinynet

from tinynet import TinyNet  # noqa: E402

from labelenh.data import load_dataset  # noqa: E402
from labelenh.store import export_soft_labels, teacher_from_model  # noqa: E402
from labelenh.views import ViewSpec  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "v1" / "crop-flip-partial.h5"
DATASET, IMAGE_SIZE, VIEWS, SEED, CHUNK = "synthetic:2:4", 8, 2, 5, 4


class Stop(Exception):
    pass


def main() -> None:
    OUT.unlink(missing_ok=True)
    bundle = load_dataset(DATASET, image_size=IMAGE_SIZE)
    teacher = teacher_from_model(TinyNet(1, num_classes=bundle.num_classes), "t")

    def stop(c: int) -> None:
        raise Stop

    try:
        export_soft_labels(OUT, [teacher], bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
                           mean=bundle.mean, std=bundle.std, num_views=VIEWS, spec=ViewSpec("crop-flip", pad=2),
                           view_seed=SEED, fmt="fp16", chunk_size=CHUNK, device="cpu", dataset_meta=bundle.meta,
                           on_chunk=stop)
    except Stop:
        pass
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
