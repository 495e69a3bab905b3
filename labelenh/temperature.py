"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on held-out logits by
minimising NLL, then every calibration metric of logits / T next to the raw ones.

The optimiser is a golden-section search on log T over [T_MIN, T_MAX]. NLL(β) with β = 1/T is
convex (a mean of log-sum-exp of β·z minus a linear term), so NLL is unimodal in log T and a
bracketing search finds the global minimum inside the bounds: no learning rate, iteration
budget or line search to tune (L-BFGS with a fixed lr and max_iter, as in Guo et al.'s code,
can stop short). The search works in log T so that T and 1/T are equally easy to reach.
T = 1 is compared last and kept when it is no worse, so the fitted T never raises the NLL of
the logits it was fitted on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labelenh.metrics import DEFAULT_BINS, check_scores, classification_metrics

T_MIN, T_MAX = 0.05, 20.0  # far wider than the [0.8, 3.0] of the instance-based-LS code
LOG_T_TOL = 1e-7  # relative precision of T
# Temperature scaling keeps the arg-max and the ranking of the classes, so accuracy is the
# same before and after; these are the metrics it changes.
TS_KEYS = ("nll", "ece", "adaece", "cwece", "rmsce", "mce", "brier")
FIT_SPLITS = ("val", "test", "none")  # --calibrate-on; "test" is the biased choice


def nll_at(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean NLL of softmax(logits / T) in float64."""
    z = logits.detach().to(torch.float64) / temperature  # [N, C]
    return float(torch.nn.functional.cross_entropy(z, labels.to(z.device).long()))


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of logits [N, C] / T against labels [N];
    NaN when the logits are not all finite."""
    check_scores(logits, labels)
    z = logits.detach().to(torch.float64)
    y = labels.detach().to(z.device).long()
    if not bool(torch.isfinite(z).all()):
        return math.nan

    def f(log_t: float) -> float:
        return nll_at(z, y, math.exp(log_t))

    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = math.log(T_MIN), math.log(T_MAX)
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > LOG_T_TOL:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    best = math.exp((a + b) / 2)
    return best if f(math.log(best)) < f(0.0) else 1.0


def scaled_metrics(logits: Tensor, labels: Tensor, temperature: float,
                   n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """The TS_KEYS of logits / T, each suffixed `_ts`, and `temperature`."""
    if not math.isfinite(temperature):
        return {**{f"{k}_ts": math.nan for k in TS_KEYS}, "temperature": temperature}
    m = classification_metrics(logits.detach().to(torch.float64) / temperature, labels, n_bins)
    return {**{f"{k}_ts": m[k] for k in TS_KEYS}, "temperature": temperature}
