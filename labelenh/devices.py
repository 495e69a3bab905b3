"""The device a command runs on, from its --device flag."""

from __future__ import annotations

import torch

from labelenh.errors import LabelenhError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LabelenhError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        return torch.device(name)
    raise LabelenhError(f"--device {name!r} is not one of auto, cpu, cuda")
