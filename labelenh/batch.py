"""The inputs a batch carries for its targets: made by the stages that build batches (the
store's `StoreBatches`, the student's online teachers) and consumed by the target methods.
It lives below both, so neither the store nor the methods import the other."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class MethodInputs:
    """What a method sees of a batch besides the student's logits."""

    # int64 [B]: the sample's own (possibly noisy) label
    labels: Tensor
    # float [B, C]: dense hard target (mixed one-hot under a mixing view); rows sum to 1
    hard: Tensor
    # float [B, M, C]: stored or online logits of this exact view, M teachers
    teacher_logits: Tensor | None = None
