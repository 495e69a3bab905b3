"""`labelenh export-soft-labels`: teachers -> HDF5 soft-label store (stage one, part two)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from labelenh import bounds as B
from labelenh.cli import common as c
from labelenh.cli.viewopts import aug_help, spec_from_flags, with_view_options
from labelenh.data.settings import DataSettings
from labelenh.errors import LabelenhError
from labelenh.options import with_options

H_VIEWS = "Views"
H_STORE = "Store"


def register(app: typer.Typer) -> None:
    app.command("export-soft-labels")(export_soft_labels_cmd)


def _resumed_options(out: Path, overwrite: bool) -> dict | None:
    """The data options of the store an export would resume (None: a new store)."""
    if overwrite or not out.exists():
        return None
    from labelenh.store.derive import export_options

    try:
        return export_options(out)
    except LabelenhError:
        return None  # not a readable store: the export itself says so


@with_view_options(H_VIEWS)
@with_options(DataSettings)
def export_soft_labels_cmd(
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Run folder or checkpoint; repeat for an ensemble (each teacher is stored separately).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The store to write, e.g. store.h5.", rich_help_panel=H_STORE)],
    options: dict[str, Any] | None = None,
    aug: Annotated[str | None, typer.Option("--aug", help=f"View augmentation. {aug_help()}.", rich_help_panel=H_VIEWS)] = None,
    views: Annotated[int, typer.Option("--views", help=f"Views per sample (needs --aug); 0 = clean logits only; in {B.VIEWS.text()}.", rich_help_panel=H_VIEWS)] = 0,
    view_seed: Annotated[int, typer.Option("--view-seed", help=f"Seed of the view recipes, in {B.SEED.text()}.", rich_help_panel=H_VIEWS)] = 0,
    fmt: Annotated[str, typer.Option("--format", help="fp16 | fp32 | topk:K (K fp16 log-probs + indices + the row's logsumexp).", rich_help_panel=H_STORE)] = "fp16",
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per teacher forward = samples per store chunk (default 256; a resume reuses the store's). Recorded in the store: forward batches are cut at fixed places, so chunk order and resumes never change the bytes.", rich_help_panel=H_STORE)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name for teachers given as a plain state_dict.")] = None,
    device: c.Device = "auto", workers: c.Workers = None,
    amp: Annotated[str, typer.Option("--amp", help="auto (fp16 on CUDA) | off | fp16 | bf16; ignored on CPU.", rich_help_panel=c.H_RUN)] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over even if --out holds a store (finished or not); the old store stays in place until the new one is complete.", rich_help_panel=H_STORE)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the store's final size and write nothing.", rich_help_panel=H_STORE)] = False,
    verify: Annotated[int, typer.Option("--verify", help="After the export, re-run the teachers on this many random stored rows and compare.", rich_help_panel=H_STORE)] = 0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: when stderr is a terminal).", rich_help_panel=c.H_RUN)] = None,
    view_flags: dict | None = None,
) -> None:
    """Run teachers over the train split (clean + replayable views) into an HDF5 soft-label store.

    An interrupted export resumes when rerun with the same arguments."""
    from labelenh.distributed import init_from_env
    from labelenh.store.export import export_soft_labels, load_teachers
    from labelenh.utils import resolve_device

    _check_args(options or {}, aug, views, view_seed, view_flags or {}, batch_size, verify)
    c.check_workers(workers)
    dev = init_from_env(resolve_device(device))  # under torchrun: this rank's device, process group
    data = DataSettings.from_values(options).for_run(lambda: _resumed_options(out, overwrite))
    bundle = data.load()
    spec = None
    if views:
        spec = spec_from_flags(aug, view_flags or {}, defaults={"pad": bundle.crop_pad})
    teachers = load_teachers(teacher, dev, bundle.num_classes, model_name=model)
    meta = {"options": data.options(), **bundle.meta}
    res = export_soft_labels(
        out, teachers, bundle.train, dataset=bundle.name, num_classes=bundle.num_classes,
        mean=bundle.mean, std=bundle.std, num_views=views, spec=spec, view_seed=view_seed, fmt=fmt,
        chunk_size=batch_size, device=dev, amp=amp, overwrite=overwrite, dry_run=dry_run, verify=verify,
        progress=sys.stderr.isatty() if progress is None else progress, dataset_meta=meta, workers=workers,
    )
    _print_result(res, out)


def _check_args(options: dict, aug: str | None, views: int, view_seed: int, view_flags: dict,
                batch_size: int | None, verify: int) -> None:
    """The export's own flags, each on one line, before any data is read."""
    if "dataset" not in options:
        raise LabelenhError("--dataset is required: the train split the teachers label (e.g. cifar10, npz:PATH)")
    B.VIEWS.check(views, "--views")
    B.SEED.check(view_seed, "--view-seed")
    if aug is not None and views == 0:
        raise LabelenhError(f"--aug {aug} needs --views N (views per sample), e.g. --views 32")
    if views and aug is None:
        from labelenh.views import OPS

        raise LabelenhError(f"--views {views} needs --aug {'|'.join(OPS)}")
    if view_flags and aug is None:
        raise LabelenhError(f"{', '.join(view_flags)} set(s) view options: pass --aug and --views too")
    if aug is not None:
        probe = spec_from_flags(aug, view_flags)  # a bad view option fails before any data is read
        bad = probe.impl.check_views(probe, views)
        if bad:
            raise LabelenhError(f"--aug {aug} --views {views}: {bad}")
    if batch_size is not None:
        B.BATCH_SIZE.check(batch_size, "--batch-size")
    if verify < 0:
        raise LabelenhError(f"--verify must be >= 0 rows, got {verify}")


def _print_result(res, out: Path) -> None:
    from labelenh.store.export import human_bytes

    p = res.plan
    what = (f"N={p.num_samples} x (clean + {p.num_views} views) x {len(p.teachers)} teacher(s), "
            f"C={p.num_classes}, {p.fmt}")
    if res.dry_run:
        print(f"dry run: {out} would take {human_bytes(res.size_bytes)} ({res.size_bytes:,} bytes) for {what}; nothing written")
        return
    if res.already_complete:
        print(f"{out} is already complete ({human_bytes(res.size_bytes)}); nothing to do (--overwrite starts over)")
    else:
        resumed = f", resumed after {res.chunks_resumed} of {res.chunks_total} chunks" if res.chunks_resumed else ""
        done = res.chunks_written
        print(f"wrote {out}: {human_bytes(res.size_bytes)} ({res.size_bytes:,} bytes) for {what} "
              f"in {res.seconds:.1f} s ({done} chunks{resumed})")
    if res.verify is not None:
        v = res.verify
        print(f"verify: {v['rows']} rows re-run (clean{' + views' if v['views'] else ''}), "
              f"max abs diff {v['max_abs_diff']:.3g} within atol {v['atol']:g} + rtol {v['rtol']:g}: OK")
