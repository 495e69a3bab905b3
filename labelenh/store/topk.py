"""Top-k compression of logits and its dense reconstruction.

Reconstruction (the reader's dense logits): the K stored logits are values + lse; the
remaining probability mass r = 1 - sum(exp(values)) is spread evenly over the other C - K
classes, whose logit is log(r / (C - K)) + lse, capped at the smallest stored logit (a class
outside the top K cannot be more likely than one inside) and floored at lse - 46 (p = 1e-20)
when fp16 rounding leaves no mass.

Values are stored as fp16 log-probabilities (logit - lse) rather than raw logits: a confident
teacher's top class has log-probability near 0, where fp16 is far finer than at a raw logit of
10-20, and the row's exact lse (fp32) restores the absolute logits.
"""

from __future__ import annotations

import math

import torch

from labelenh.store.schema import MIN_REST

LOG_MIN_REST = math.log(MIN_REST)


def topk_compress(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits float [R, C] -> (indices int64 [R, k] largest first, log-probs float16 [R, k],
    lse float32 [R])."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)  # [R]
    vals, idx = torch.topk(z, k, dim=-1, largest=True, sorted=True)  # [R, k]
    logp = (vals - lse[:, None]).to(torch.float16)
    return idx, logp, lse


def topk_dense(
    indices: torch.Tensor, logp: torch.Tensor, lse: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Dense float32 logits [R, C] from indices [R, k], fp16 log-probs [R, k], lse [R]."""
    lp = logp.float()  # [R, k]
    lse = lse.float()
    r, k = lp.shape
    idx = indices.long()
    if k >= num_classes:
        out = torch.empty(r, num_classes, dtype=torch.float32, device=lp.device)
        out.scatter_(1, idx, lp)
        return out + lse[:, None]
    rest = (1.0 - lp.exp().sum(dim=-1)).clamp_min(0.0)  # [R] probability outside the top k
    fill = torch.log(rest / (num_classes - k)).clamp(min=LOG_MIN_REST)  # [R]
    fill = torch.minimum(fill, lp.min(dim=-1).values)  # never above a stored class
    out = (fill + lse)[:, None].expand(r, num_classes).clone()  # one pass over [R, C]
    out.scatter_(1, idx, lp + lse[:, None])
    return out


def kl_rows(dense: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """float64 [R]: KL(softmax(dense) || softmax(approx)) per row."""
    lp = torch.log_softmax(dense.double(), dim=-1)
    lq = torch.log_softmax(approx.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1)
