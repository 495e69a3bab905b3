"""The view ops: one module per op, found and registered on import (`base.register_op`).

Adding an op is adding a module here; nothing else lists the ops.
"""

from __future__ import annotations

import importlib
import pkgutil

from labelenh.views.ops.base import (
    OPS,
    Draw,
    Field,
    Op,
    Param,
    base_ops,
    default_base,
    get_op,
    register_op,
)

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

# a stable order for help texts and parametrised tests: each op's `order`, then its name
_sorted = sorted(OPS.items(), key=lambda kv: (kv[1].order, kv[0]))
OPS.clear()
OPS.update(_sorted)

__all__ = ["OPS", "Draw", "Field", "Op", "Param", "base_ops", "default_base", "get_op", "register_op"]
