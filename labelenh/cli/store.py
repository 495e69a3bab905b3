"""`labelenh store info|verify|add-teacher|merge|convert`: inspect a soft-label store, check it,
and make stores from stores."""

from __future__ import annotations

import json
import sys
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
    noise_seed: c.NoiseSeed = None, image_size: c.ImageSize = None, crop_pct: c.CropPct = None,
) -> None:
    """Structure, completeness, every chunk's checksums, a NaN/Inf and range scan and, with
    --dataset, the fingerprint against that dataset; exit 2 if bad."""
    from labelenh.data import load_dataset, resolve_crop_pct
    from labelenh.store.derive import export_options
    from labelenh.store.inspect import verify_store

    bundle = None
    if dataset is not None:
        c.check_val_split(val_split)
        crop_pct = resolve_crop_pct(dataset, crop_pct, lambda: export_options(path))
        bundle = load_dataset(dataset, data_root, val_split=val_split or 0.0, split_seed=split_seed or 0,
                              noise=noise, noisy_labels=noisy_labels, noise_seed=noise_seed or 0,
                              image_size=image_size, crop_pct=crop_pct)
    r = verify_store(path, bundle.train if bundle else None,
                     num_classes=bundle.num_classes if bundle else None, dataset=bundle.name if bundle else None)
    fits = (f"fits {bundle.name} (N={r['num_samples']}, C={r['num_classes']}, fingerprint {r['fingerprint'][:12]}…)"
            if bundle else "not checked against a dataset (pass --dataset for that)")
    print(f"{path}: OK — complete, {fits}, {r['values_scanned']:,} stored values finite; checksums: {r['checksums']}")


def _report(res, out: Path, what: str) -> None:
    from labelenh.store.export import human_bytes

    if res.already_complete:
        print(f"{out} is already complete ({human_bytes(res.size_bytes)}); nothing to do")
        return
    resumed = f", resumed after {res.chunks_resumed} of {res.chunks_total} chunks" if res.chunks_resumed else ""
    print(f"wrote {out}: {human_bytes(res.size_bytes)} ({res.size_bytes:,} bytes), {what}, "
          f"in {res.seconds:.1f} s ({res.chunks_written} chunks{resumed})")


def _topk_errors(out: Path) -> None:
    from labelenh.store.inspect import store_info

    info = store_info(out)
    if info["format"].startswith("topk"):
        for t in info["teachers"]:
            print(f"  {t['name']}: top-k KL to the dense logits: clean {t['topk_kl_clean']}, "
                  f"views {t['topk_kl_views']} nats")


@store_app.command("add-teacher")
def add_teacher_cmd(
    path: Annotated[Path, typer.Argument(help="The store (.h5) to add to; replaced when the add is complete.")],
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Run folder or checkpoint; repeat to add several.")],
    dataset: c.Dataset = None, data_root: c.DataRoot = None, val_split: c.ValSplit = None,
    split_seed: c.SplitSeed = None, noise: c.Noise = None, noisy_labels: c.NoisyLabels = None,
    noise_seed: c.NoiseSeed = None, image_size: c.ImageSize = None, crop_pct: c.CropPct = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name for teachers given as a plain state_dict.")] = None,
    device: c.Device = "auto",
    amp: Annotated[str, typer.Option("--amp", help="auto | off | fp16 | bf16: as the store was computed.", rich_help_panel=c.H_RUN)] = "auto",
) -> None:
    """Run new teachers over exactly the store's clean samples and stored view recipes, and add
    them. The data defaults to the store's own (--dataset and its options as exported); an
    interrupted add resumes when rerun, and the store keeps its old teachers until it is done."""
    from labelenh.data import load_dataset, resolve_crop_pct
    from labelenh.distributed import init_from_env
    from labelenh.store.derive import add_teacher, read_plan
    from labelenh.store.export import load_teachers
    from labelenh.utils import resolve_device

    plan, _ = read_plan(path)
    opts = stored = dict((plan.dataset_meta or {}).get("options") or {})
    if dataset is not None:  # the user names the data: their options, not the export's
        c.check_val_split(val_split)
        opts = {"val_split": val_split, "split_seed": split_seed, "noise": noise, "noisy_labels": noisy_labels,
                "noise_seed": noise_seed, "image_size": image_size}
    dev = init_from_env(resolve_device(device))
    bundle = load_dataset(dataset or plan.dataset, data_root, val_split=opts.get("val_split") or 0.0,
                          split_seed=opts.get("split_seed") or 0, noise=opts.get("noise"),
                          noisy_labels=opts.get("noisy_labels"), noise_seed=opts.get("noise_seed") or 0,
                          image_size=opts.get("image_size"),
                          # the store's images: its crop unless one is given
                          crop_pct=resolve_crop_pct(dataset or plan.dataset, crop_pct, lambda: stored))
    teachers = load_teachers(teacher, dev, bundle.num_classes, model_name=model)
    res = add_teacher(path, teachers, bundle.train, device=dev, amp=amp, progress=sys.stderr.isatty())
    _report(res, path, f"added {', '.join(t.name for t in teachers)}")


@store_app.command("merge")
def merge_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Two or more stores of the same data and recipes.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it holds a store.")] = False,
) -> None:
    """Join stores of the same dataset fingerprint, recipes and format (different teachers)."""
    from labelenh.store.derive import merge_stores

    res = merge_stores(paths, out, overwrite=overwrite, progress=sys.stderr.isatty())
    _report(res, out, f"{len(res.plan.teachers)} teachers from {len(paths)} stores")


@store_app.command("convert")
def convert_cmd(
    path: Annotated[Path, typer.Argument(help="The store to re-encode.")],
    fmt: Annotated[str, typer.Option("--format", help="fp16 | fp32 | topk:K (K < classes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new store.")],
    teachers: Annotated[str | None, typer.Option("--teachers", help="Comma-separated teachers to keep (default: all).")] = None,
    views: Annotated[int | None, typer.Option("--views", help="Keep the first N views of each sample (default: all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it holds a store.")] = False,
) -> None:
    """Re-encode a store (e.g. dense -> top-k before copying it to a cluster), optionally keeping
    some teachers or the first N views; reports the top-k error per teacher."""
    from labelenh.store.derive import convert_store

    keep = [t.strip() for t in teachers.split(",") if t.strip()] if teachers else None
    res = convert_store(path, out, fmt=fmt, teachers=keep, views=views, overwrite=overwrite,
                        progress=sys.stderr.isatty())
    _report(res, out, f"{res.plan.fmt}, {len(res.plan.teachers)} teacher(s), {res.plan.num_views} views")
    _topk_errors(out)
