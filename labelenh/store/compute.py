"""One chunk of an export: its teachers' logits (clean samples, then the (sample, view) pairs in
fixed blocks of `chunk_size`, see labelenh.store.export) packed in the store's format."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.store.schema import LogitFormat, StorePlan, index_dtype
from labelenh.store.teachers import TeacherRunner
from labelenh.store.topk import kl_rows, topk_compress, topk_dense
from labelenh.store.writer import TeacherChunk

KL_BLOCK_ROWS = 2048  # bounds the float64 temporaries of the top-k error


@torch.inference_mode()
def compute_chunk(plan: StorePlan, runner: TeacherRunner, spec: Any, c: int, source: Any = None
                  ) -> tuple[np.ndarray, np.ndarray | None, dict[str, TeacherChunk]]:
    """(labels [B], recipe records [B, V] or None, per-teacher outputs) of chunk c; `source`:
    `runner.chunk_source(plan, c)` when it was started ahead."""
    if runner.stored is not None:
        return runner.stored.compute_chunk(plan, runner, c)
    src = runner.chunk_source(plan, c) if source is None else source
    s0, s1 = plan.chunk_bounds(c)
    b, v, cs = s1 - s0, plan.num_views, plan.chunk_size
    idx = torch.arange(s0, s1)
    labels = runner.source.labels[idx.to(runner.source.labels.device)].cpu().numpy().astype("<i8")
    clean = runner.forward(runner.clean_images(idx, src), f"samples {s0}..{s1 - 1}")  # T x [B, C]
    views: list[list[torch.Tensor]] = [[] for _ in runner.teachers]
    records = None
    if v:
        from labelenh.views import sample_views

        rec = sample_views(plan.num_samples, v, spec, plan.view_seed, plan.image_size, samples=idx,
                           source=src)
        records = rec.to_struct(spec).reshape(b, v)
        for i in range(0, b * v, cs):  # fixed blocks of cs (sample, view) pairs
            zs = runner.forward(runner.view_images(rec[i:i + cs], src), f"views of samples {s0}..{s1 - 1}")
            for t, z in enumerate(zs):
                views[t].append(z)
    outputs = {}
    for t, teacher in enumerate(runner.teachers):
        zv = torch.cat(views[t]) if v else None  # [B*V, C]
        outputs[teacher.name] = pack_chunk(clean[t], zv, b, v, plan.fmt, plan.num_classes)
    return labels, records, outputs


def pack_chunk(zc: torch.Tensor, zv: torch.Tensor | None, b: int, v: int, fmt: LogitFormat, c: int) -> TeacherChunk:
    """One teacher's chunk as the store holds it: logits zc [B, C] and zv [B*V, C] in fp16/fp32,
    or their top-k with the KL error of the approximation."""
    if not fmt.is_topk:
        dt = torch.float16 if fmt.kind == "fp16" else torch.float32
        clean = zc.to(dt).cpu().numpy()
        views = zv.to(dt).cpu().numpy().reshape(b, v, c) if zv is not None else None
        if not all(np.isfinite(a).all() for a in (clean, views) if a is not None):  # fp16 overflow
            raise LabelenhError("teacher logits exceed the float16 range (|z| > 65504), which a fp16 store "
                                "cannot hold: export with --format fp32 or topk:K")
        return TeacherChunk(clean, views)
    idt = index_dtype(c)

    def compress(z: torch.Tensor, lead: tuple[int, ...]) -> tuple[tuple[np.ndarray, ...], float]:
        idx, lp, lse = topk_compress(z, fmt.k)
        kl = 0.0
        for i in range(0, z.shape[0], KL_BLOCK_ROWS):
            sl = slice(i, i + KL_BLOCK_ROWS)
            kl += float(kl_rows(z[sl], topk_dense(idx[sl], lp[sl], lse[sl], c)).sum())
        arrs = (idx.cpu().numpy().astype(idt).reshape(*lead, fmt.k),
                lp.cpu().numpy().reshape(*lead, fmt.k), lse.cpu().numpy().reshape(lead))
        return arrs, kl

    clean, kl_c = compress(zc, (b,))
    views, kl_v = compress(zv, (b, v)) if zv is not None else (None, 0.0)
    return TeacherChunk(clean, views, (kl_c, kl_v))

