"""The range of every numeric option, declared once and checked before anything is allocated.

A value outside its range would otherwise fail late and far from its cause: an lr of 1e308
overflows float32 inside the optimiser, 10^8 ECE bins grow a report to gigabytes, a seed of
10^22 fails inside h5py, 10^20 epochs train forever. The CLI help, the recipe checks, the
training config and the dataset loaders all read the ranges below, and README lists them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from labelenh.errors import LabelenhError


@dataclass(frozen=True)
class Bound:
    """A numeric range [lo, hi] (either end optionally open) that an option must lie in."""

    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # what the upper end protects, shown in the error

    def text(self) -> str:
        """The range as written in help texts and errors, e.g. "(0, 1e4]"."""
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"

    def contains(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def check(self, value: object, name: str) -> object:
        """`value` unchanged when it lies in the range; else LabelenhError naming `name`."""
        if not self.contains(value):
            kind = "an integer" if self.integer else "a number"
            why = f" ({self.why})" if self.why else ""
            raise LabelenhError(f"{name} must be {kind} in {self.text()}{why}, got {value!r}")
        return value


def _num(x: float) -> str:
    """1e4 rather than 10000.0, 2^63 rather than 9223372036854775808."""
    if float(x).is_integer() and x >= 2**20 and int(x) & (int(x) - 1) == 0:
        return f"2^{int(x).bit_length() - 1}"
    if x != 0 and abs(x) >= 1e4 and float(x) == 10 ** round(math.log10(abs(x))):
        return f"1e{round(math.log10(abs(x)))}"
    return str(int(x)) if float(x).is_integer() else str(x)


# Optimisation. 1e4 is far beyond any useful step or decay and keeps lr x gradient finite in
# float32 (whose largest value is about 3.4e38).
LR = Bound(0, 1e4, lo_open=True, why="any larger step overflows float32 training")
WEIGHT_DECAY = Bound(0, 1e4, why="any larger decay overflows float32 training")
EPOCHS = Bound(1, 10**6, integer=True, why="a run that long never ends")
BATCH_SIZE = Bound(1, 2**16, integer=True, why="per process; larger batches do not fit in memory")
PATIENCE = Bound(0, 10**6, integer=True)
WARMUP_EPOCHS = Bound(0, 10**6, integer=True)
GRAD_CLIP = Bound(0, 1e4, why="a gradient norm; 0 turns clipping off")
MOMENTUM = Bound(0, 1, hi_open=True, why="a momentum of 1 never forgets a gradient")
GAMMA = Bound(0, 1, lo_open=True, why="the factor the rate is multiplied by at each milestone")
# An EMA decay of 0 copies the weights every step and 1 never moves: both are no average.
EMA_DECAY = Bound(0, 1, lo_open=True, hi_open=True, why="the weight of the old average per step")
ECE_BINS = Bound(2, 10**4, integer=True, why="more bins cost memory and leave most bins empty")
LOG_EVERY = Bound(1, 10**9, integer=True, why="optimiser steps between logged losses")
# Seeds feed 63-bit derived seeds, torch generators and int64 HDF5 attributes.
SEED = Bound(0, 2**63, integer=True, hi_open=True)

# Views and data.
VIEWS = Bound(0, 10**5, integer=True, why="views per sample; the store also needs the disk space")
VIEW_INDEX = Bound(0, 10**5, integer=True, hi_open=True)
IMAGE_SIZE = Bound(1, 4096, integer=True, why="pixels per side")
VAL_SPLIT = Bound(0, 1, lo_open=True, hi_open=True, why="the fraction of train held out")
CROP_PCT = Bound(0.05, 1.0, lo_open=False, why="fraction of the resized short side an evaluation image keeps")
# Loader worker processes of lazy sources (image folders); 0 decodes in the training process.
WORKERS = Bound(0, 1024, integer=True, why="each worker is a process holding its prefetched batches")
NUM_CLASSES = Bound(2, 10**5, integer=True, why="a label sets the size of the model's last layer")
# Synthetic data is generated in memory in float64 (8 bytes a value): its train images may hold
# at most 2^28 uint8 values (256 MiB), i.e. about 2 GiB while they are made.
SYNTHETIC_TRAIN_VALUES = Bound(1, 2**28, integer=True, why="generated in memory as float64")
