"""Target methods: one registry (`METHODS`), one module per method family.

Every module of this package is imported here, so a new method only needs its own module
with a `@register("name")` class.
"""

from __future__ import annotations

import importlib
import pkgutil

from labelenh.methods.base import (
    METHODS,
    Method,
    MethodContext,
    MethodInputs,
    Param,
    build_method,
    register,
    resolve_params,
)


def _import_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "MethodInputs",
    "Param",
    "build_method",
    "register",
    "resolve_params",
]
