"""`labelenh views show`: draw a few views of a dataset as a PNG grid with their label weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelenh import bounds as B
from labelenh.cli.viewopts import aug_help, spec_from_flags, with_view_options
from labelenh.errors import LabelenhError

views_app = typer.Typer(help="Look at augmentation views (replayable recipes).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(views_app, name="views")


def _load_bundle(dataset: str, data_root: str | None):
    from labelenh.data import load_dataset

    return load_dataset(dataset, data_root)


@views_app.command("show")
@with_view_options()
def show(
    aug: Annotated[str, typer.Option("--aug", help=aug_help())] = "ricap",
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset spec, as for `teach`.")] = "cifar10-mini",
    n: Annotated[int, typer.Option("--n", help="How many views to draw.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help=f"View seed (the recipes depend on it only), in {B.SEED.text()}.")] = 0,
    view: Annotated[int, typer.Option("--view", help=f"View index drawn for every sample, in {B.VIEW_INDEX.text()}.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("views.png"),
    data_root: Annotated[str | None, typer.Option("--data-root", help="Folder holding the dataset.")] = None,
    view_flags: dict | None = None,
) -> None:
    """Sample `--n` views of evenly spaced training samples and write them as a PNG grid."""
    import torch

    from labelenh.views import gather_and_apply, sample_views
    from labelenh.viz import render_views_grid

    spec_from_flags(aug, view_flags or {})  # fail on a bad option before loading any data
    if not 1 <= n <= 1024:
        raise LabelenhError(f"--n must be in [1, 1024], got {n}")
    B.SEED.check(seed, "--seed")
    B.VIEW_INDEX.check(view, "--view")
    if out.suffix.lower() != ".png":
        raise LabelenhError(f"--out must name a .png file, got {out}")
    bundle = _load_bundle(dataset, data_root)
    spec = spec_from_flags(aug, view_flags or {}, defaults={"pad": bundle.crop_pad})
    train = bundle.train
    num = len(train)
    _, h, w = train.image_shape
    samples = torch.linspace(0, num - 1, min(n, num)).round().to(torch.int64).unique()
    rec = sample_views(num, view + 1, spec, seed, (h, w), samples=samples, views=torch.tensor([view]),
                       source=train)
    images, weights = gather_and_apply(train, rec, bundle.num_classes)
    titles = [f"#{int(s)}" + "".join(f"+{int(p)}" for p in row[1:])
              for s, row in zip(rec.sample, rec.sources(), strict=True)]
    path = render_views_grid(images, weights, bundle.classes, out, titles=titles)
    print(path)
