"""The file an export writes: created new, checked to be this export and resumed, or found
complete; under `--overwrite` a hidden staging sibling that replaces the store once complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labelenh.errors import LabelenhError
from labelenh.store import shards
from labelenh.store.checks import open_h5, read_root_attrs
from labelenh.store.schema import DEFAULT_CHUNK_SIZE, StorePlan
from labelenh.store.writer import StoreWriter, create_store


def existing_chunk_size(out: Path) -> int:
    """The chunk size of the store at `out`, so that a resume needs no --batch-size."""
    if not out.exists():
        return DEFAULT_CHUNK_SIZE
    try:
        with open_h5(out) as f:
            return int(read_root_attrs(f, out)["chunk_size"])
    except (LabelenhError, KeyError, TypeError, ValueError):
        return DEFAULT_CHUNK_SIZE  # not a store: `prepare` says so


def staging_path(out: Path) -> Path:
    """Where `--overwrite` builds the new store while `out` still holds the old one."""
    return out.with_name(f".{out.name}.overwrite.h5")


def prepare_staging(staging: Path, out: Path, plan: StorePlan) -> str:
    """Like `prepare` for the staging file of an `--overwrite` export: an interrupted one with
    the same arguments is resumed, anything else there is started over."""
    if staging.exists():
        try:
            return prepare(staging, plan, overwrite=False)
        except LabelenhError:
            pass  # other arguments, or not a store: start over
    create_store(staging, plan, report_as=out)
    return "new"


def discard_staging(out: Path) -> None:
    """Remove what an abandoned `--overwrite` of `out` left (its staging store and shards)."""
    staging = staging_path(out)
    for path in shards.find_shards(staging):
        shards.discard(path)
    staging.unlink(missing_ok=True)


def prepare(out: Path, plan: StorePlan, overwrite: bool) -> str:
    """Create the skeleton, or check that the existing file is this export: "new" | "resume" |
    "complete"."""
    if overwrite or not out.exists():
        create_store(out, plan)
        return "new"
    try:
        with open_h5(out) as f:
            attrs = read_root_attrs(f, out)
    except LabelenhError as e:
        raise LabelenhError(f"{out} exists and is not a resumable store ({e}); pass --overwrite to replace it") from None
    old, new = attrs.get("identity") or {}, json.loads(json.dumps(plan.identity()))
    from labelenh.views.spec import same_spec

    if same_spec(old.get("view_spec"), new.get("view_spec")):  # a schema-1 dict names every op's options
        old["view_spec"] = new["view_spec"]
    if attrs.get("schema") == 1 and {**new, "schema": 1} == old:
        plan.schema = 1  # an earlier version's store: finish it in its own layout (no checksums)
        new = old
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise LabelenhError(
            f"{out} was started with different arguments (they differ in: {', '.join(diff)}): "
            "rerun with the same arguments to resume it, or pass --overwrite to start over"
        )
    return "complete" if bool(attrs.get("complete")) else "resume"


def open_for_writing(out: Path, plan: StorePlan, state: str) -> tuple[StoreWriter | None, np.ndarray]:
    """(writer or None when complete, bool [chunks] done) for a prepared store; the finished
    chunks of shards that an interrupted multi-process run left are copied in first."""
    found = shards.find_shards(out)
    if state != "resume":  # a new (or overwritten) store, or a complete one: shards are stale
        for path in found:
            shards.discard(path)
        return None if state == "complete" else StoreWriter(out, plan), np.full(
            plan.num_chunks, state == "complete", dtype=bool)
    writer = StoreWriter(out, plan)
    try:
        for path in found:
            shards.absorb(writer, plan, path)
        return writer, writer.done()
    except BaseException:
        writer.close()
        raise
