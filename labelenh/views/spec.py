"""`ViewSpec`: which augmentation a view applies, with the original code's defaults."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

import numpy as np

from labelenh.errors import LabelenhError

OPS = ("none", "crop-flip", "mixup", "cutmix", "ricap")
MIX_OPS = ("mixup", "cutmix", "ricap")
_NUM_SOURCES = {"none": 1, "crop-flip": 1, "mixup": 2, "cutmix": 2, "ricap": 4}
_ALIASES = {"crop_flip": "crop-flip", "cropflip": "crop-flip", "clean": "none"}
MAX_PAD = 127  # crop offsets are stored as int8


@dataclass(frozen=True)
class ViewSpec:
    """One augmentation recipe family.

    op         "none" (the clean image) | "crop-flip" (base only) | "mixup" | "cutmix" | "ricap".
               Every mixed view also applies the base crop/flip to each of its source images.
    pad        random-crop padding: offsets in [-pad, pad] into the zero-padded image, as
               torchvision RandomCrop(size, padding=pad); 4 for 32x32 (the CIFAR recipe).
    flip       horizontal flip with probability 0.5 (per source image).
    mixup_alpha  lambda ~ Beta(alpha, alpha); 1.0 as in the label-enhancement code.
    cutmix_beta  lambda ~ Beta(beta, beta) before the box correction; 1.0.
    mix_prob   probability that a mix op mixes at all; otherwise the view is the base crop/flip
               of the sample with weight 1 on its own label. 1.0 = every view mixed (the original code).
    ricap_beta   boundary (w, h) ~ (W, H) * Beta(beta, beta); 0.3 as in Takahashi's RICAP.
    """

    op: str = "crop-flip"
    pad: int = 4
    flip: bool = True
    mixup_alpha: float = 1.0
    cutmix_beta: float = 1.0
    mix_prob: float = 1.0
    ricap_beta: float = 0.3

    def __post_init__(self) -> None:
        op = _ALIASES.get(str(self.op).strip().lower(), str(self.op).strip().lower())
        if op not in OPS:
            raise LabelenhError(f"unknown augmentation {self.op!r}; choose one of {', '.join(OPS)}")
        object.__setattr__(self, "op", op)
        pad = self.pad
        if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, numbers.Integral):
            raise LabelenhError(f"crop pad must be an integer in [0, {MAX_PAD}], got {pad!r}")
        if not 0 <= pad <= MAX_PAD:
            raise LabelenhError(f"crop pad must be in [0, {MAX_PAD}], got {pad}")
        object.__setattr__(self, "pad", int(pad))
        if not isinstance(self.flip, (bool, np.bool_)):
            raise LabelenhError(f"flip must be true or false, got {self.flip!r}")
        object.__setattr__(self, "flip", bool(self.flip))
        for name in ("mixup_alpha", "cutmix_beta", "ricap_beta"):
            v = getattr(self, name)
            if not _is_number(v) or not v > 0 or not math.isfinite(v):
                raise LabelenhError(f"{name} must be a positive finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        p = self.mix_prob
        if not _is_number(p) or not 0.0 <= p <= 1.0:
            raise LabelenhError(f"mix_prob must be a probability in [0, 1], got {p!r}")
        object.__setattr__(self, "mix_prob", float(p))

    @property
    def num_sources(self) -> int:
        """Images a view is made from: 1 (none, crop-flip), 2 (mixup, cutmix) or 4 (ricap)."""
        return _NUM_SOURCES[self.op]

    @property
    def is_mix(self) -> bool:
        return self.op in MIX_OPS

    @classmethod
    def parse(cls, op: str, **overrides) -> ViewSpec:
        """Build from a CLI-style op name plus overrides; unknown or None overrides are checked."""
        names = {f.name for f in fields(cls)} - {"op"}
        unknown = sorted(k for k in overrides if k not in names)
        if unknown:
            raise LabelenhError(
                f"unknown view option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(op=op, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViewSpec:
        d = dict(d)
        op = d.pop("op", "crop-flip")
        return cls.parse(op, **d)

    def describe(self) -> str:
        """Short human form, e.g. 'ricap(beta=0.3, pad=4, flip)'."""
        base = f"pad={self.pad}{', flip' if self.flip else ''}"
        if self.op == "mixup":
            return f"mixup(alpha={self.mixup_alpha:g}, p={self.mix_prob:g}, {base})"
        if self.op == "cutmix":
            return f"cutmix(beta={self.cutmix_beta:g}, p={self.mix_prob:g}, {base})"
        if self.op == "ricap":
            return f"ricap(beta={self.ricap_beta:g}, p={self.mix_prob:g}, {base})"
        return "none" if self.op == "none" else f"crop-flip({base})"


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
