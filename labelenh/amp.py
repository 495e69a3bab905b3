"""Mixed precision: which autocast mode a run or an export uses on a device. The one resolver
for the engine (training and evaluation) and the store's teachers."""

from __future__ import annotations

import torch

from labelenh.errors import LabelenhError

AMP_MODES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_amp(amp: str) -> str:
    """`amp` lower-cased, refused with one line unless it is one of AMP_MODES."""
    amp = str(amp).lower()
    if amp not in AMP_MODES:
        raise LabelenhError(f"--amp {amp!r} is not one of auto, off, fp16, bf16")
    return amp


def resolve_amp(amp: str, device: torch.device, *, auto: str) -> str:
    """The autocast mode used on `device`: "off" | "fp16" | "bf16"; always "off" off CUDA.

    auto: what "auto" means on CUDA: "fp16", or "best" (bf16 where the GPU has it, else fp16).
    The export asks for fp16, which keeps 3 more mantissa bits of the logits; training asks
    for the best, as bf16 needs no loss scaling."""
    if device.type != "cuda" or amp == "off":
        return "off"
    if amp in AMP_DTYPES:
        return amp
    if auto == "best":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return auto


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype of training's autocast (None: full precision)."""
    return AMP_DTYPES.get(resolve_amp(amp, device, auto="best"))
