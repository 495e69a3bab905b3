"""Counter-based random numbers: every draw is a pure function of its coordinates.

A draw is addressed by (seed, sample, view, stream, counter) and computed by hashing those
integers with the splitmix64 finaliser in numpy uint64 arithmetic. Nothing is carried from one
draw to the next, so a value never depends on how many other values were drawn before it, on
the batch it was drawn in, or on the process that drew it — the property view recipes need
(shards sampled on different ranks agree with one sample drawn in one go).

Samplers are vectorised over elements: each element `i` of a `CounterRNG` has its own key
(seed, sample_i, view_i). Rejection samplers (Gamma) run in rounds; an element still pending
in round r uses counters derived from r only, so its result depends on its own key alone.

Floating-point note: the transforms use numpy's log/exp/cos/sqrt in float64. On one machine the
results are bit-identical however the elements are batched; across CPU families the last ulp of
a transcendental may differ, which is why stores keep the sampled recipes and never re-sample.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_INV53 = 1.0 / float(1 << 53)
_MAX_ROUNDS = 200  # Marsaglia–Tsang accepts with p > 0.95 per round; 200 rounds never run out


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 step on a uint64 array: add the golden gamma, then the bijective finaliser."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
        return z ^ (z >> _U64(31))


def _as_u64(v: int | np.ndarray) -> np.ndarray:
    """Any Python/numpy integers (negative allowed) as uint64, reduced modulo 2**64."""
    if isinstance(v, (int, np.integer)):
        return np.asarray(int(v) & _MASK64, dtype=np.uint64)
    a = np.asarray(v)
    if a.dtype == np.uint64:
        return a
    return a.astype(np.int64).view(np.uint64) if a.dtype.kind == "i" else a.astype(np.uint64)


class CounterRNG:
    """Vectorised counter-based generator: one independent key per element.

    `CounterRNG(seed, sample, view)` broadcasts `sample` and `view` (integer arrays) to one
    shape; every sampler returns an array of that shape. `stream` names the quantity being
    drawn (use a distinct stream per quantity); `counter` indexes repeated draws inside it.
    """

    def __init__(self, seed: int, sample: np.ndarray | int, view: np.ndarray | int = 0) -> None:
        s, v = np.broadcast_arrays(_as_u64(sample), _as_u64(view))
        key = mix64(np.broadcast_to(_as_u64(seed), s.shape).copy())
        key = mix64(key ^ s)
        self.keys = mix64(key ^ v)  # uint64, the element's identity

    @property
    def shape(self) -> tuple[int, ...]:
        return self.keys.shape

    def _sub(self, mask: np.ndarray | None) -> np.ndarray:
        return self.keys if mask is None else self.keys[mask]

    def bits(self, stream: int, counter: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
        """64 random bits per element (or per selected element when `mask` is given)."""
        k = self._sub(mask)
        h = mix64(k ^ _as_u64(stream))
        return mix64(h ^ _as_u64(counter))

    def uniform(self, stream: int, counter: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
        """float64 in the open interval (0, 1): the top 53 bits, centred, so log() is finite."""
        top = (self.bits(stream, counter, mask) >> _U64(11)).astype(np.float64)
        return (top + 0.5) * _INV53

    def integers(self, stream: int, low, high, counter: int = 0) -> np.ndarray:
        """int64 uniform in [low, high) per element; `low`/`high` broadcast, high > low.

        Uses floor(u * n): the bias is below n / 2**53, far below anything measurable here.
        """
        low = np.asarray(low, dtype=np.int64)
        n = np.asarray(high, dtype=np.int64) - low
        if np.any(n <= 0):
            raise ValueError("integers(): high must exceed low")
        u = self.uniform(stream, counter)
        # n < 2**53 so n * u < n and the floor stays in [0, n)
        return low + np.minimum(np.floor(u * n).astype(np.int64), n - 1)

    def normal(self, stream: int, counter: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
        """Standard normal by Box–Muller from two uniforms at counters 2c and 2c+1."""
        u1 = self.uniform(stream, 2 * counter, mask)
        u2 = self.uniform(stream, 2 * counter + 1, mask)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def log_gamma_variate(self, stream: int, alpha: float) -> np.ndarray:
        """log of a Gamma(alpha, 1) draw per element (Marsaglia–Tsang, vectorised rejection).

        alpha < 1 uses the boost Gamma(alpha) = Gamma(alpha + 1) * U**(1/alpha), kept in log
        space so that tiny values (likely for alpha = 0.3) neither underflow nor give 0/0 later.
        Round r of the rejection draws its normal from counter r of sub-stream 0 and its
        acceptance uniform from counter r of sub-stream 1, for pending elements only.
        """
        if not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"gamma shape must be positive and finite, got {alpha}")
        a = alpha + 1.0 if alpha < 1.0 else alpha
        d = a - 1.0 / 3.0
        c = 1.0 / np.sqrt(9.0 * d)
        s_norm, s_acc, s_boost = _sub_stream(stream, 0), _sub_stream(stream, 1), _sub_stream(stream, 2)
        out = np.empty(self.shape, dtype=np.float64)
        pending = np.ones(self.shape, dtype=bool)
        for r in range(_MAX_ROUNDS):
            x = self.normal(s_norm, r, pending)
            u = self.uniform(s_acc, r, pending)
            v = 1.0 + c * x
            ok = v > 0
            v = np.where(ok, v, 1.0)  # placeholder where rejected, keeps log finite
            v3 = v * v * v
            lv3 = 3.0 * np.log(v)
            ok &= np.log(u) < 0.5 * x * x + d - d * v3 + d * lv3
            idx = np.flatnonzero(pending)[ok]
            out.flat[idx] = np.log(d) + lv3[ok]
            pending.flat[idx] = False
            if not pending.any():
                break
        else:  # pragma: no cover - probability ~ 0.05**200
            raise RuntimeError("gamma sampler did not converge")
        if alpha < 1.0:
            out = out + np.log(self.uniform(s_boost)) / alpha
        return out

    def gamma(self, stream: int, alpha: float) -> np.ndarray:
        """Gamma(alpha, 1) per element."""
        return np.exp(self.log_gamma_variate(stream, alpha))

    def beta(self, stream: int, a: float, b: float) -> np.ndarray:
        """Beta(a, b) per element as G1 / (G1 + G2), computed from log-gammas for stability."""
        lg1 = self.log_gamma_variate(_sub_stream(stream, 10), a)
        lg2 = self.log_gamma_variate(_sub_stream(stream, 11), b)
        # G1/(G1+G2) = 1/(1 + exp(lg2 - lg1)); exp overflow -> inf -> 0, which is the limit
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(lg2 - lg1))


def _sub_stream(stream: int, k: int) -> int:
    """A stream id derived from (stream, k), far from the small ids callers use directly."""
    return int(mix64(np.asarray([(int(stream) & _MASK64)], dtype=np.uint64) ^ _U64(0xA5A5 + k))[0])


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, "epoch", 3)), stable across runs."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with derive_seed(*parts): torch's own draws, replayable."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
