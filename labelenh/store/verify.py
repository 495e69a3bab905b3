"""`--verify K`: re-run the teachers on K random stored rows and compare with the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.rng import generator
from labelenh.store.reader import SoftLabelStore
from labelenh.store.schema import LogitFormat
from labelenh.store.teachers import TeacherRunner


def tolerance(fmt: LogitFormat, compute: dict[str, str]) -> tuple[float, float]:
    """(atol, rtol) between stored logits and a re-run in other batch shapes."""
    atol, rtol = 1e-4, 1e-4  # CPU fp32 kernels differ by batch shape in the last bits
    if compute.get("device") == "cuda":
        atol, rtol = {"off": (5e-3, 5e-3), "fp16": (5e-2, 2e-2), "bf16": (0.25, 0.05)}[compute.get("amp", "off")]
    if fmt.kind != "fp32":
        atol, rtol = atol + 1e-3, rtol + 2e-3  # fp16 storage rounds to 2^-11 relative
    return atol, rtol


@torch.inference_mode()
def verify_rows(path: str | Path, runner: TeacherRunner, k: int, *, seed: int = 0) -> dict[str, Any]:
    """Re-run the teachers on k random stored samples (clean, and one random view each, replayed
    from the stored recipe) and compare with the stored logits. Raises LabelenhError on mismatch."""
    store = SoftLabelStore.open(path, preload=False)
    n, v, cs = store.num_samples, store.num_views, int(store.attrs["chunk_size"])
    g = generator(seed, "verify-rows")
    samples = torch.randperm(n, generator=g)[: min(k, n)].sort().values
    atol, rtol = tolerance(store.format, store.attrs.get("compute") or {})
    checks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def fresh(make) -> torch.Tensor:  # [K, M, C]
        parts = [torch.stack(runner.forward(make(sl), "verification rows"), dim=1).cpu()
                 for sl in torch.arange(len(samples)).split(cs)]
        return torch.cat(parts)

    checks.append((store.clean_logits(samples), fresh(lambda sl: runner.clean_images(samples[sl])),
                   _topk_mask(store, samples, None)))
    if v:
        views = torch.randint(v, (len(samples),), generator=g)
        rec = store.recipes(samples, views)
        checks.append((store.view_logits(samples, views), fresh(lambda sl: runner.view_images(rec[sl])),
                       _topk_mask(store, samples, views)))
    max_diff, worst = _compare(checks, atol, rtol)
    store.close()
    report = {"rows": len(samples), "views": bool(v), "max_abs_diff": max_diff,
              "atol": atol, "rtol": rtol, "ok": worst <= 1.0}
    if not report["ok"]:
        raise LabelenhError(
            f"--verify: stored logits of {path} differ from a re-run of the teachers on {len(samples)} rows "
            f"(max abs diff {max_diff:.3g}, beyond atol {atol:g} + rtol {rtol:g}): re-export it with --overwrite"
        )
    return report


def _topk_mask(store: SoftLabelStore, samples: torch.Tensor, views: torch.Tensor | None
               ) -> torch.Tensor | None:
    """bool [K, M, C]: the classes a top-k store holds of these rows (None when dense); only
    they are exact, so the logits are compared there."""
    if not store.format.is_topk:
        return None
    part = "clean" if views is None else "views"
    rows = samples.numpy() if views is None else samples.numpy() * store.num_views + views.numpy()
    m = torch.zeros(len(samples), len(store.teachers), store.num_classes, dtype=torch.bool)
    for t, name in enumerate(store.teachers):
        idx = store.data.take(f"teachers/{name}/{part}/indices", rows).astype(np.int64)
        m[:, t].scatter_(1, torch.from_numpy(idx), True)
    return m


def _compare(checks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], atol: float,
             rtol: float) -> tuple[float, float]:
    """(largest |stored - new|, largest ratio of it to the tolerance) over (stored, new, mask)."""
    max_diff, worst = 0.0, 0.0
    for stored, new, m in checks:
        diff = (stored - new).abs()
        ratio = diff / (atol + rtol * new.abs())
        if m is not None:
            diff, ratio = diff[m], ratio[m]
        max_diff = max(max_diff, float(diff.max()) if diff.numel() else 0.0)
        worst = max(worst, float(ratio.max()) if ratio.numel() else 0.0)
    return max_diff, worst
