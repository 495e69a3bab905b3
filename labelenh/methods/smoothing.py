"""Teacher-free targets: vanilla, label smoothing (LS) and generalized/negative LS (GLS/NLS).

All three act on the dense hard target `inp.hard`, so they compose with mixed labels from
mixup/cutmix/ricap views (Composer's convention: a mixed target is smoothed as it is).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from labelenh.errors import LabelenhError
from labelenh.losses import soft_cross_entropy, upcast
from labelenh.methods.base import Method, MethodContext, MethodInputs, Param, register


def smooth(hard: Tensor, alpha: float) -> Tensor:
    """(1 − α)·hard + α/C: α is the mass moved to the uniform distribution (Composer/torch)."""
    C = hard.shape[-1]
    return (1.0 - alpha) * upcast(hard) + alpha / C  # [B, C]


@register("vanilla")
class Vanilla(Method):
    """Cross-entropy against the hard target (one-hot, or the view's mixed label weights)."""

    summary = "soft CE against the (possibly mixed) one-hot label"
    formula = "CE(hard)"

    def target(self, inp: MethodInputs) -> Tensor:
        return upcast(inp.hard)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        return {"ce": soft_cross_entropy(logits, inp.hard)}


@register("ls")
class LabelSmoothing(Method):
    """Target (1 − α)·hard + α/C; the true class gets 1 − α + α/C.

    For one-hot labels the loss equals `F.cross_entropy(logits, y, label_smoothing=α)`.
    """

    summary = "label smoothing: (1-alpha)*hard + alpha/C"
    formula = "softCE((1 - alpha)*hard + alpha/C)"
    params = {
        "alpha": Param(float, 0.1, "smoothing mass moved to the uniform distribution", 0.0, 1.0)
    }

    def setup(self) -> None:
        self.alpha = float(self.hparams["alpha"])

    def target(self, inp: MethodInputs) -> Tensor:
        return smooth(inp.hard, self.alpha)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        return {"ce": soft_cross_entropy(logits, self.target(inp))}


@register("gls")
class GeneralizedLabelSmoothing(Method):
    """Generalized label smoothing (Wei et al. 2022); r < 0 is negative label smoothing (NLS).

    loss = wa·CE + wb·GLS(r), GLS(r) = mean_i [(1 − r)·nll_i + r·mean_c(−log p_ic)], with the
    (possibly mixed) `hard` as the label distribution in nll. Defaults follow the NLS repo
    (wa = 0, wb = 1, r = 0.1); the paper sweeps r over 0.8 … −8.
    Because both parts are linear in the target, loss = (wa + wb)·softCE(target) with
    target = (1 − r')·hard + r'/C and r' = wb·r/(wa + wb); `target()` returns that target.
    For r' < 0 the true class gets more than 1 and the others negative mass; rows sum to 1.
    """

    summary = "generalized/negative LS: wa*CE + wb*[(1-r)*NLL + r*mean(-log p)]"
    formula = "wa*CE(hard) + wb*[(1 - r)*CE(hard) + r*mean_c(-log p_c)]"
    allows_negative = True
    params = {
        "r": Param(float, 0.1, "smooth rate; negative values give negative label smoothing",
                   -math.inf, 1.0, lo_open=True, flag="smooth-rate"),
        "wa": Param(float, 0.0, "weight of the plain CE term", 0.0, math.inf),
        "wb": Param(float, 1.0, "weight of the GLS term (wa + wb > 0)", 0.0, math.inf),
    }

    def setup(self) -> None:
        self.r = float(self.hparams["r"])
        self.wa = float(self.hparams["wa"])
        self.wb = float(self.hparams["wb"])
        if self.wa + self.wb <= 0:
            raise LabelenhError(
                f"method 'gls': wa + wb must be > 0, got wa={self.wa}, wb={self.wb}"
            )

    @property
    def effective_rate(self) -> float:
        return self.wb * self.r / (self.wa + self.wb)

    def target(self, inp: MethodInputs) -> Tensor:
        return smooth(inp.hard, self.effective_rate)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        nll = soft_cross_entropy(logits, inp.hard)
        smooth_term = -F.log_softmax(upcast(logits), dim=-1).mean(dim=-1).mean()  # mean_i mean_c
        return {
            "ce": self.wa * nll,
            "gls": self.wb * ((1.0 - self.r) * nll + self.r * smooth_term),
        }
