"""Where a student batch's images and teacher logits come from, decided once per run.

    images   "store"  the store's views, as stored (the Aug- methods: --aug names the store's op)
             "fresh"  views of `op` drawn on the fly from (seed, epoch, sample): crop/flip by
                      default, none for --aug none, any op for the methods without a teacher
    logits   "store"  read from the store rows of the batch (clean rows, or the view's rows)
             "online" teachers run on the student's own input every step (--teacher)
             "none"   the method needs none (the baselines)

`plan_sources` refuses every combination that cannot train, on one line, before any data is
read; `open_store` then checks the store against the plan and the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labelenh import distributed as dist
from labelenh.errors import LabelenhError
from labelenh.views import augments, names_views_of
from labelenh.views.ops import default_base


@dataclass(frozen=True)
class Sources:
    images: str  # "store" | "fresh"
    op: str | None  # the op of fresh views; None for the store's
    logits: str  # "store" | "online" | "none"

    def describe(self) -> str:
        """How the start-up summary says it."""
        if self.images == "store":
            return "the store's views"
        return "no augmentation" if self.op == "none" else f"{self.op} views drawn on the fly"


def plan_sources(method_name: str, teacher: str, *, aug: str | None, store: str | None,
                 online: list[str], teachers: list[str] | None) -> Sources:
    """The plan of a student run: `teacher` is what the method reads ("store", "online" or
    "none"), `aug` the --aug op (None: the default crop/flip), `store` the --store path,
    `online` the --teacher runs, `teachers` the --teachers selection."""
    if teacher == "online" and not online:
        raise LabelenhError(f"method {method_name!r} runs a teacher every step: pass --teacher RUN_OR_CKPT")
    if teacher == "none" and online:
        raise LabelenhError(f"--teacher runs a teacher online; {method_name!r} uses none")
    if teacher == "store" and online and store:
        raise LabelenhError(f"--teacher runs {method_name!r}'s teacher online and --store reads it from a store: "
                            "pass one of them")
    logits = "online" if online else "store" if teacher == "store" else "none"
    if store is None:
        if logits == "store" and augments(aug):
            raise LabelenhError(f"--aug {aug} with method {method_name!r} trains on a store's views: pass "
                                f"--store STORE.h5 exported with --aug {aug} --views N")
        if logits == "store":
            raise LabelenhError(f"method {method_name!r} reads soft labels: pass --store STORE.h5 "
                                "(made by `labelenh export-soft-labels`)")
        if teachers:
            raise LabelenhError("--teachers selects teachers inside a store: pass --store too")
    if store is not None and augments(aug):
        return Sources("store", None, logits)
    return Sources("fresh", default_base().name if aug is None else aug, logits)


def open_store(path: str | None, plan: Sources, bundle: Any, *, aug: str | None, teachers: list[str] | None,
               preload: bool | None, epochs: int, warn: Callable[[str], None] = print
               ) -> tuple[Any, list[str] | None]:
    """(the store, the selected teacher names or None for all), checked against the dataset,
    --teachers and the plan's views; (None, None) without a store."""
    if path is None:
        return None, None
    from labelenh.store import SoftLabelStore

    # Lazily (preload=False) every process maps the file itself and reads only the rows of its
    # batches: under DDP, this rank's slice of each epoch.
    store = SoftLabelStore.open(path, preload=preload)
    store.check_dataset(bundle.name, bundle.train.fingerprint(), len(bundle.train), bundle.num_classes)
    if teachers:
        missing = [t for t in teachers if t not in store.teachers]
        if missing:
            raise LabelenhError(f"--teachers: {', '.join(missing)} not in {path}; it holds "
                                f"{', '.join(store.teachers)}")
    if plan.images == "store":
        have = store.view_spec if (store.view_spec is not None and store.num_views) else None
        if have is None or not names_views_of(aug, have):
            held = f"views of {have.describe()}" if have is not None else "no views"
            raise LabelenhError(f"--aug {aug}: {path} holds {held}; export with --aug {aug} or drop --aug")
        if store.num_views < epochs and dist.is_main():
            warn(f"labelenh: warning: the store has {store.num_views} views for {epochs} epochs: views "
                 "will repeat (pre-computed teachers overfit in that regime; export more --views)")
    return store, list(teachers) if teachers else None
