"""Online label smoothing (Zhang et al., arXiv 2011.12562), the official CIFAR/ImageNet rule.

State: a class-by-class soft-label matrix S [C, C] used as the target during an epoch, and an
accumulator A [C, C] with counts n [C] filled during it. Every training step the engine calls
`observe` with the same forward pass it trains on (train mode, the augmented batch, before the
optimizer step): for each sample the model classifies correctly (argmax p = label), its
softmax p is added to A[label] and n[label] += 1. `epoch_end` swaps S[c] = A[c]/n[c] where
n[c] > 0, else the uniform row 1/C, and resets A and n.

S starts at zeros (official), so in epoch 0 the soft term is exactly 0 and the model trains
on w_hard·CE alone. `init="uniform"` gives the fine-grained variant's uniform start.
Accumulation uses `index_add_`, which sums repeated classes within a batch; the fancy-index
`A[y] += p` of a popular re-implementation keeps only one sample per class per batch.

Under a mixing view the soft target is the label-weighted mix of rows, S_target = hard @ S
(for a one-hot `hard` that is S[labels], the official rule), while statistics are gathered
against the sample's own label `inp.labels`, as in the official code.

Under DistributedDataParallel `epoch_end` sums A and n over ranks before the swap, so every
rank trains with the same S. A mid-epoch `state_dict` holds this rank's partial A and n only.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from labelenh.errors import LabelenhError
from labelenh.losses import soft_cross_entropy, upcast
from labelenh.methods.base import Method, MethodContext, MethodInputs, Param, register


@register("ols")
class OnlineLabelSmoothing(Method):
    """loss = w_hard·CE(hard) + w_soft·softCE(hard @ S).

    `target()` returns the combined target w_hard·hard + w_soft·(hard @ S) normalised to sum
    to 1 per row (the loss is that target's row sum times its soft CE; the row sum is w_hard in
    epoch 0 and w_hard + w_soft afterwards).
    """

    summary = "online label smoothing: w_hard*CE + w_soft*CE(S[y]), S from correct predictions"
    formula = "w_hard*CE(hard) + w_soft*softCE(hard @ S), S = last epoch's mean softmax of correct samples per class"
    params = {
        "w_hard": Param(float, 0.5, "weight of CE against the hard label", 0.0, math.inf),
        "w_soft": Param(float, 0.5, "weight of CE against the OLS soft label", 0.0, math.inf),
        # --init already names the student's initial weights
        "init": Param(str, "zeros", "initial S: zeros (official CIFAR/ImageNet) or uniform",
                      choices=("zeros", "uniform"), flag="ols-init"),
    }

    def setup(self) -> None:
        self.w_hard = float(self.hparams["w_hard"])
        self.w_soft = float(self.hparams["w_soft"])
        if self.w_hard + self.w_soft <= 0:
            raise LabelenhError(
                f"method 'ols': w_hard + w_soft must be > 0, got {self.w_hard} and {self.w_soft}"
            )
        init = self.hparams["init"]
        C = self.num_classes
        self.S = torch.zeros(C, C) if init == "zeros" else torch.full((C, C), 1.0 / C)  # [C, C]
        self.A = torch.zeros(C, C)  # [C, C] sum of correct samples' softmax, per true class
        self.n = torch.zeros(C, dtype=torch.long)  # [C] number of correct samples per class

    def _to(self, device: torch.device) -> None:
        if self.S.device != device:
            self.S, self.A, self.n = self.S.to(device), self.A.to(device), self.n.to(device)

    def soft_target(self, inp: MethodInputs) -> Tensor:
        hard = upcast(inp.hard)
        self._to(hard.device)
        return hard @ self.S.to(hard.dtype)  # [B, C]

    def target(self, inp: MethodInputs) -> Tensor:
        hard = upcast(inp.hard)
        mix = self.w_hard * hard + self.w_soft * self.soft_target(inp)  # [B, C]
        total = mix.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, mix / total.clamp_min(1e-30), hard)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        return {
            "ce": self.w_hard * soft_cross_entropy(logits, inp.hard),
            "ols": self.w_soft * soft_cross_entropy(logits, self.soft_target(inp)),
        }

    @torch.no_grad()
    def observe(self, logits: Tensor, inp: MethodInputs) -> None:
        p = F.softmax(upcast(logits.detach()), dim=-1).float()  # [B, C], T = 1 as in the paper
        self._to(p.device)
        y = inp.labels.to(p.device)
        correct = p.argmax(dim=-1) == y  # [B]
        yc = y[correct]
        self.A.index_add_(0, yc, p[correct])  # sums repeated classes (fancy-index += would not)
        self.n += torch.bincount(yc, minlength=self.num_classes)

    def epoch_end(self) -> None:
        if dist.is_available() and dist.is_initialized():
            # under DDP each rank saw its own shard: sum the statistics so every rank gets the same S
            dist.all_reduce(self.A)
            dist.all_reduce(self.n)
        n = self.n.unsqueeze(1)  # [C, 1]
        uniform = torch.full_like(self.A, 1.0 / self.num_classes)
        self.S = torch.where(n > 0, self.A / n.clamp_min(1).to(self.A.dtype), uniform)
        self.A = torch.zeros_like(self.A)
        self.n = torch.zeros_like(self.n)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "S": self.S.detach().cpu().clone(),
            "A": self.A.detach().cpu().clone(),
            "n": self.n.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        C = self.num_classes
        want = {"S": (C, C), "A": (C, C), "n": (C,)}
        if set(state) != set(want):
            raise LabelenhError(
                f"method 'ols': state must hold {sorted(want)}, got {sorted(state)}"
            )
        for k, shape in want.items():
            if tuple(state[k].shape) != shape:
                raise LabelenhError(
                    f"method 'ols': state {k} has shape {tuple(state[k].shape)}, expected {shape} "
                    f"for {C} classes"
                )
        device = self.S.device
        self.S = state["S"].to(device=device, dtype=torch.float32).clone()
        self.A = state["A"].to(device=device, dtype=torch.float32).clone()
        self.n = state["n"].to(device=device, dtype=torch.long).clone()
