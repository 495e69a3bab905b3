"""`none`: the clean image, label weight 1 (the identity view)."""

from __future__ import annotations

from labelenh.views.ops.base import Op, register_op


@register_op
class NoneOp(Op):
    name = "none"
    summary = "the clean image"
    aliases = ("clean",)
    augments = False
    order = 0
