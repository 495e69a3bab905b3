"""`labelenh store info|verify|add-teacher|merge|convert`: inspect a soft-label store, check it,
and make stores from stores."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from labelenh.cli import common as c
from labelenh.data.settings import DataSettings
from labelenh.options import with_options

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
@with_options(DataSettings)
def verify(
    path: Annotated[Path, typer.Argument(help="The store (.h5).")],
    options: dict[str, Any] | None = None,
) -> None:
    """Structure, completeness, every chunk's checksums, a NaN/Inf and range scan and, with
    --dataset, the fingerprint against that dataset; exit 2 if bad."""
    from labelenh.store.derive import export_options
    from labelenh.store.inspect import verify_store

    bundle = None
    if "dataset" in (options or {}):
        bundle = DataSettings.from_values(options).for_run(lambda: export_options(path)).load()
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
@with_options(DataSettings)
def add_teacher_cmd(
    path: Annotated[Path, typer.Argument(help="The store (.h5) to add to; replaced when the add is complete.")],
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Run folder or checkpoint; repeat to add several.")],
    options: dict[str, Any] | None = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name for teachers given as a plain state_dict.")] = None,
    device: c.Device = "auto",
    amp: Annotated[str, typer.Option("--amp", help="auto | off | fp16 | bf16: as the store was computed.", rich_help_panel=c.H_RUN)] = "auto",
) -> None:
    """Run new teachers over exactly the store's clean samples and stored view recipes, and add
    them. The data defaults to the store's own (--dataset and its options as exported); an
    interrupted add resumes when rerun, and the store keeps its old teachers until it is done."""
    from labelenh.distributed import init_from_env
    from labelenh.store.derive import add_teacher, read_plan
    from labelenh.store.export import load_teachers
    from labelenh.utils import resolve_device

    options = options or {}
    plan, _ = read_plan(path)
    stored = dict((plan.dataset_meta or {}).get("options") or {})
    # the user names the data: their options, not the export's; the store's crop unless one is given
    values = options if "dataset" in options else {**stored, "dataset": plan.dataset}
    data = DataSettings.from_record({**values, "data_root": options.get("data_root"),
                                     "crop_pct": options.get("crop_pct")}).for_run(lambda: stored)
    dev = init_from_env(resolve_device(device))
    bundle = data.load()
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
