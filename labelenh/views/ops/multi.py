"""`multi`: one store holding views of several ops.

Asked for by listing ops in `--aug`:

- `--aug mixup:8,cutmix:8 --views 16`: views 0-7 of every sample are mixup views, 8-15 cutmix
  views (blocks in the listed order; the counts must add up to --views).
- `--aug mixup,cutmix --switch-prob 0.5`: each view is one op drawn from (seed, sample, view)
  on stream 2: the second op with probability `switch_prob` (timm's Mixup switch, per view
  instead of per batch); with more ops and no switch_prob, uniformly.

Other view flags go to every listed op that takes them (`--mix-prob` to both mixup and cutmix,
`--mixup-alpha` to mixup only); a flag none of them takes is refused. A view of op k is drawn
exactly as a single-op store of op k draws it (same streams), so a multi store's mixup views
equal those of a mixup store with the same seed.

Record: `op` u1 (the index of the view's op in the list) + the union of the listed ops' fields,
per-source fields sized for the op with the most sources, partners u4[S_max - 1] (unused
partners and fields hold the sample itself / zeros). Each group of views is rendered by its own
op; its label weights are padded with zeros, which adds exact zeros to the mixed label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError
from labelenh.views.ops.base import Draw, Field, Op, Param, get_op, probability, register_op

_S_SWITCH = 2
_OP = Field("op", record="u1")


def _split(text: str) -> list[tuple[str, int | None]]:
    out = []
    for part in text.split(","):
        name, _, count = part.strip().partition(":")
        if not name:
            raise LabelenhError(f"--aug {text!r}: an empty op in the list; write e.g. mixup:8,cutmix:8")
        if count:
            try:
                n = int(count)
            except ValueError:
                n = 0
            if n < 1:
                raise LabelenhError(f"--aug {text!r}: the count after {name}: must be a positive integer")
            out.append((name, n))
        else:
            out.append((name, None))
    return out


@register_op
class Multi(Op):
    name = "multi"
    summary = "several ops in one store: OP:N,OP:N (views in blocks) or OP,OP (one op drawn per view)"
    params = (
        Param("ops", (), "the ops, as view specs", kind="specs", cli=False),
        Param("counts", None, "views per op, in blocks (sum = views per sample)", kind="ints", cli=False),
        Param("switch_prob", None, "two ops: probability of the second per view (timm's switch_prob)",
              check=probability, flag="--switch-prob"),
    )
    mixes = True
    streams = range(_S_SWITCH, _S_SWITCH + 1)
    order = 90

    def example(self):
        from labelenh.views.ops.base import OPS

        # every other op that changes the image, one drawn per view
        return {"ops": [{"op": n} for n, o in OPS.items() if o.augments and o is not self]}

    def example_aug(self):
        return ",".join(d["op"] for d in self.example()["ops"])

    @classmethod
    def claims(cls, text: str) -> bool:
        return "," in text or ":" in text

    def from_text(self, text, own, part, given):
        from labelenh.views.spec import ViewSpec

        parts = _split(text)
        counts = [c for _, c in parts]
        if any(c is None for c in counts) and any(c is not None for c in counts):
            raise LabelenhError(f"--aug {text!r}: give a count to every op (mixup:8,cutmix:8) or to none")
        specs, used = [], set()
        for name, _ in parts:
            if get_op(name).name == self.name or get_op(name).claims(name):
                raise LabelenhError(f"--aug {text!r}: {name} cannot be listed")
            spec, u = part(name)
            specs.append(spec)
            used |= u
        unused = sorted(set(given) - used)
        if unused:
            raise LabelenhError(f"option(s) {', '.join(unused)} apply to none of {', '.join(n for n, _ in parts)}")
        return ViewSpec(self.name, ops=specs, counts=None if counts[0] is None else counts, **own)

    def check_spec(self, spec):
        ops, counts, p = spec.ops, spec.counts, spec.switch_prob
        if len(ops) < 2:
            return "list at least two ops, e.g. mixup:8,cutmix:8"
        if len(set(ops)) != len(ops):
            return "an op is listed twice with the same options"
        if counts is not None and len(counts) != len(ops):
            return f"{len(counts)} counts for {len(ops)} ops"
        if counts is not None and p is not None:
            return "views come in blocks (OP:N) or by --switch-prob, not both"
        if p is not None and len(ops) != 2:
            return "--switch-prob picks between two ops"
        names: dict[str, Field] = {}
        for f in self._union(spec, self.sources(spec)):
            if names.setdefault(f.name, f) != f:
                return f"ops {', '.join(o.op for o in ops)} store {f.name!r} differently and cannot share a store"
        return ""

    def check_views(self, spec, num_views):
        if spec.counts is not None and sum(spec.counts) != num_views:
            return f"the counts make {sum(spec.counts)} views per sample, not {num_views}"
        return ""

    def matches(self, spec, text):
        if get_op(text).name != self.name or spec.op != self.name:
            return False
        return [get_op(n).name for n, _ in _split(text)] == [o.op for o in spec.ops]

    def sources(self, spec):
        return max(o.num_sources for o in spec.ops)

    def _union(self, spec, s: int) -> list[Field]:
        from labelenh.views.recipes import layout

        out: list[Field] = [_OP]
        for o in spec.ops:
            for f in layout(o, num_sources=s):
                if f not in out:
                    out.append(f)
        return out

    def fields(self, spec, num_sources):
        return tuple(self._union(spec, num_sources))

    def op_index(self, spec, d: Draw) -> np.ndarray:
        """int64 [B]: which listed op each view is."""
        n = len(spec.ops)
        if spec.counts is not None:
            edges = np.cumsum(spec.counts)
            return np.searchsorted(edges, d.view % edges[-1], side="right").astype(np.int64)
        probs = [1.0 - spec.switch_prob, spec.switch_prob] if spec.switch_prob is not None else [1.0 / n] * n
        u = d.rng.uniform(_S_SWITCH)
        return np.minimum(np.searchsorted(np.cumsum(probs), u, side="right"), n - 1).astype(np.int64)

    def sample(self, spec, d: Draw):
        from labelenh.views.sample import draw_fields

        s = self.sources(spec)
        idx = self.op_index(spec, d)
        data: dict[str, Any] = {f.name: np.zeros((d.size, *f.tensor_shape(s)), dtype=_np(f)) for f in self.fields(spec, s)}
        data["op"] = idx
        data["partners"] = np.repeat(d.sample[:, None], s - 1, axis=1)
        for k, o in enumerate(spec.ops):
            m = idx == k
            if not m.any():
                continue
            part = draw_fields(o, d.subset(m, o.num_sources))  # as a single-op store draws it
            for name, v in part.items():
                v = np.asarray(v)
                if v.ndim == 1:
                    data[name][m] = v
                else:  # per-source fields and partners fill their first columns; the rest stay
                    data[name][np.flatnonzero(m)[:, None], np.arange(v.shape[1])] = v
        return data

    def groups(self, spec, r) -> list[tuple[torch.Tensor, Any]]:
        """[(row mask, single-op recipes of those rows)] for the listed ops present in `r`."""
        from labelenh.views.recipes import Recipes, layout

        out = []
        for k, o in enumerate(spec.ops):
            m = r.op == k
            if not bool(m.any()):
                continue
            s = o.num_sources
            data = {f.name: (r.data[f.name][m][:, :s] if f.per_source else r.data[f.name][m])
                    for f in layout(o)}
            out.append((m, Recipes(spec=o, image_size=r.image_size, sample=r.sample[m], view=r.view[m],
                                   partners=r.partners[m][:, : s - 1], data=data)))
        return out

    def split(self, spec, r):
        return self.groups(spec, r)

    def check_records(self, spec, data, image_size):
        from labelenh.views.recipes import Recipes

        op = data["op"]
        if op.numel() and int(op.max()) >= len(spec.ops):
            return f"op index {int(op.max())} but {len(spec.ops)} ops"
        b = op.shape[0]
        fake = Recipes(spec=spec, image_size=image_size, sample=torch.zeros(b, dtype=torch.int64),
                       view=torch.zeros(b, dtype=torch.int64),
                       partners=torch.zeros(b, self.sources(spec) - 1, dtype=torch.int64), data=data)
        for _, g in self.groups(spec, fake):
            pairs = [(g.spec.op, g.spec)] + ([(g.spec.base.op, g.spec.base)] if g.spec.base is not None else [])
            for name, sp in pairs:
                bad = get_op(name).check_records(sp, g.data, image_size)
                if bad:
                    return bad
        return ""

    def render(self, spec, views, r):
        from labelenh.views.apply import render_views

        B, _, C, H, W = views.shape
        out = torch.empty((B, C, H, W), dtype=torch.float32, device=views.device)
        for m, g in self.groups(spec, r):
            m = m.to(views.device)
            out[m] = render_views(views[m][:, : g.spec.num_sources], g.to(views.device))
        return out

    def weights(self, spec, r):
        w = torch.zeros(len(r), self.sources(spec), dtype=torch.float32, device=r.device)
        for m, g in self.groups(spec, r):
            w[m.to(r.device), : g.spec.num_sources] = g.source_weights().to(r.device)
        return w


def _np(f: Field) -> Any:
    return {"int64": np.int64, "float32": np.float32, "bool": bool}[f.dtype]

