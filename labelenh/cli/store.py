"""`labelenh store info|verify`: inspect a soft-label store, or check it against a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from labelenh.cli import common as c

store_app = typer.Typer(help="Inspect or verify a soft-label store.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")


@store_app.command("info")
def info(
    path: Annotated[Path, typer.Argument(help="The store (.h5).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Schema, sizes, views, format, teachers with their metrics, top-k error, completeness."""
    from labelenh.store.inspect import format_info, store_info

    s = store_info(path)
    print(json.dumps(s, indent=2, default=str) if as_json else format_info(s))


@store_app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="The store (.h5).")],
    dataset: c.Dataset = None, data_root: c.DataRoot = None, val_split: c.ValSplit = None,
    split_seed: c.SplitSeed = None, noise: c.Noise = None, noisy_labels: c.NoisyLabels = None,
    noise_seed: c.NoiseSeed = None, image_size: c.ImageSize = None,
) -> None:
    """Structure, completeness, every chunk's checksums, a NaN/Inf and range scan and, with
    --dataset, the fingerprint against that dataset; exit 2 if bad."""
    from labelenh.data import load_dataset
    from labelenh.store.inspect import verify_store

    bundle = None
    if dataset is not None:
        c.check_val_split(val_split)
        bundle = load_dataset(dataset, data_root, val_split=val_split or 0.0, split_seed=split_seed or 0,
                              noise=noise, noisy_labels=noisy_labels, noise_seed=noise_seed or 0,
                              image_size=image_size)
    r = verify_store(path, bundle.train if bundle else None,
                     num_classes=bundle.num_classes if bundle else None, dataset=bundle.name if bundle else None)
    fits = (f"fits {bundle.name} (N={r['num_samples']}, C={r['num_classes']}, fingerprint {r['fingerprint'][:12]}…)"
            if bundle else "not checked against a dataset (pass --dataset for that)")
    print(f"{path}: OK — complete, {fits}, {r['values_scanned']:,} stored values finite; checksums: {r['checksums']}")
