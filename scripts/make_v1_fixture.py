"""Write tests/fixtures/v1/: one tiny schema-1 store per view op, and what they replay to.

Run once, at commit 6704e2a (the last commit before views became one module per op), as
`python scripts/make_v1_fixture.py`. The fixture is never regenerated: it pins the bytes the
schema-1 code wrote, so tests/test_v1_fixture.py can show that later code opens, verifies and
replays those stores exactly.

Data: `synthetic:2:4` at `--image-size 8` (8 train images of 8x8, 2 classes), one TinyNet
teacher, fp16 logits, 2 views per sample, chunks of 4 samples.

expected.npz holds, per op, what the schema-1 code rendered from the stored recipes:
`<op>/images` float32 [N*V, 3, 8, 8] (0..255; mixup is not integral), `<op>/weights` float32
[N*V, 2] (hard-label weights) and `<op>/<field>` for every tensor of the rebuilt recipes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tinynet

from tinynet import TinyNet  # noqa: E402

from labelenh.data import load_dataset  # noqa: E402
from labelenh.store import SoftLabelStore, export_soft_labels, teacher_from_model  # noqa: E402
from labelenh.views import ViewSpec, gather_and_apply  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "v1"
DATASET, IMAGE_SIZE, VIEWS, SEED, CHUNK = "synthetic:2:4", 8, 2, 5, 4
# One store per op; a few non-default parameters so the records exercise them.
SPECS = {
    "none": ViewSpec("none", pad=2),
    "crop-flip": ViewSpec("crop-flip", pad=2),
    "mixup": ViewSpec("mixup", pad=1, mix_prob=0.75),
    "cutmix": ViewSpec("cutmix", pad=2, cutmix_beta=0.7),
    "ricap": ViewSpec("ricap", pad=2, ricap_beta=0.3, flip=False),
}
FIELDS = ("sample", "view", "mixed", "crop", "flip", "partners", "lam", "box", "ricap_wh", "ricap_off")


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    bundle = load_dataset(DATASET, image_size=IMAGE_SIZE)
    expected: dict[str, np.ndarray] = {}
    for op, spec in SPECS.items():
        path = OUT / f"{op}.h5"
        path.unlink(missing_ok=True)
        teacher = teacher_from_model(TinyNet(1, num_classes=bundle.num_classes), "t")
        export_soft_labels(path, [teacher], bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
                           mean=bundle.mean, std=bundle.std, num_views=VIEWS, spec=spec, view_seed=SEED,
                           fmt="fp16", chunk_size=CHUNK, device="cpu", dataset_meta=bundle.meta)
        store = SoftLabelStore.open(path)
        n = store.num_samples
        samples = torch.arange(n).repeat_interleave(VIEWS)
        views = torch.arange(VIEWS).repeat(n)
        rec = store.recipes(samples, views)
        images, weights = gather_and_apply(bundle.train, rec, bundle.num_classes)
        expected[f"{op}/images"] = images.numpy()
        expected[f"{op}/weights"] = weights.numpy()
        for f in FIELDS:
            expected[f"{op}/{f}"] = getattr(rec, f).numpy()
        expected[f"{op}/spec"] = np.array(json.dumps(spec.to_dict(), sort_keys=True))
    np.savez_compressed(OUT / "expected.npz", **expected)
    print(f"wrote {len(SPECS)} stores and expected.npz under {OUT}")


if __name__ == "__main__":
    main()
