"""Attributes as the store holds them: which are JSON text, how they are read back (parsed,
never evaluated), and teacher names safe as HDF5 group names."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from labelenh.errors import LabelenhError

# Root attributes that are JSON text.
JSON_ATTRS = ("dataset_meta", "view_spec", "image_size", "teachers", "normalization", "compute",
              "identity", "provenance")
TEACHER_JSON_ATTRS = ("metrics",)


def sanitize_name(name: str) -> str:
    """A teacher name usable as an HDF5 group name (no '/', not '.' or empty)."""
    s = "".join(ch if (ch.isalnum() or ch in "-_.+=@") else "_" for ch in str(name)).strip("._")
    return s or "teacher"


def dedupe_names(names: list[str]) -> list[str]:
    """Sanitised, unique names: repeats get -2, -3, ... in order."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in names:
        base = sanitize_name(raw)
        name, i = base, 1
        while name in seen:
            i += 1
            name = f"{base}-{i}"
        seen.add(name)
        out.append(name)
    return out


def decode_attrs(attrs: Any, json_keys: tuple[str, ...] = JSON_ATTRS) -> dict[str, Any]:
    """HDF5 attributes as plain Python values; JSON attributes parsed (never evaluated)."""
    out: dict[str, Any] = {}
    for key in attrs.keys():
        val = attrs[key]
        if isinstance(val, bytes):
            val = val.decode("utf-8", "replace")
        elif isinstance(val, np.generic):
            val = val.item()
        elif isinstance(val, np.ndarray):
            val = val.tolist()
        if key in json_keys and isinstance(val, str):
            try:
                val = json.loads(val)
            except json.JSONDecodeError:
                raise LabelenhError(f"attribute {key!r} is not valid JSON (attributes are parsed, never "
                                    "evaluated): the file is damaged; re-export it") from None
        out[key] = val
    return out
