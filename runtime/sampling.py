"""The published sampling rule in numpy: softmax -> top-k -> top-p -> temperature -> draw.

Each draw consumes exactly one uniform number, so a seeded ``numpy.random.Generator`` fixes a
piece on every backend (and an in-graph sampler fed the same uniforms can reproduce it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    top_k: int = 9
    top_p: float = 0.9
    temperature: float = 1.2

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def transform_probs(probs: np.ndarray, params: SamplingParams = SamplingParams()) -> np.ndarray:
    """Truncate and reshape a distribution over the last axis, in the published order: keep
    the top_k most likely; keep the smallest head whose mass reaches top_p (on the renormalised
    probabilities); then apply temperature to what is left (p ** (1 / T), renormalised).
    Ties are broken towards the lower id so every backend truncates the same way."""
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    keep = np.ones_like(ranked, dtype=bool)
    if params.top_k:
        keep[..., params.top_k :] = False
    ranked = np.where(keep, ranked, 0.0)
    ranked = ranked / ranked.sum(axis=-1, keepdims=True)
    # A token survives top-p when the mass ranked strictly before it is at most top_p.
    before = np.cumsum(ranked, axis=-1) - ranked
    keep &= before <= params.top_p
    keep[..., 0] = True
    ranked = np.where(keep, ranked, 0.0) ** (1.0 / params.temperature)
    ranked = ranked / ranked.sum(axis=-1, keepdims=True)
    out = np.zeros_like(p)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def draw(probs: np.ndarray, u: np.ndarray | float) -> np.ndarray:
    """Inverse-CDF draw: the first id whose cumulative probability exceeds ``u`` in [0, 1)."""
    cdf = np.cumsum(probs, axis=-1)
    u = np.asarray(u, dtype=np.float64)[..., None] * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


def sample(logits: np.ndarray, u: np.ndarray | float, params: SamplingParams = SamplingParams()) -> np.ndarray:
    """Token ids for logits [..., 128] and one uniform per row."""
    if np.ndim(logits) == 1 and np.ndim(u) == 0:
        return _sample_row(logits, u, params)
    return draw(transform_probs(softmax(logits), params), u)


def _sample_row(logits: np.ndarray, u: float, params: SamplingParams) -> np.int64:
    """``sample`` for one row: the per-character hot path of batch-1 generation. The same float64
    operations as softmax -> transform_probs -> draw on arrays of the same length and order (so
    the same reductions and the same ids, ties included), without the axis-generic helpers
    (take/put_along_axis, keepdims) that cost several times the arithmetic at this size."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max())
    p = z / z.sum()
    order = np.argsort(-p, kind="stable")
    k = params.top_k or len(p)
    # Everything past the top k is an exact 0.0 in the published order of operations, so only
    # the head is computed; sums still run over full-length zero-padded arrays, because numpy's
    # pairwise summation groups terms by length and a shorter sum could round differently.
    ranked = np.zeros_like(p)
    ranked[:k] = p[order[:k]]
    ranked /= ranked.sum()
    head = ranked[:k]
    keep = np.cumsum(head) - head <= params.top_p  # mass ranked strictly before <= top_p
    keep[0] = True
    ranked[:k] = np.where(keep, head, 0.0) ** (1.0 / params.temperature)
    ranked /= ranked.sum()
    probs = np.zeros_like(p)
    probs[order[:k]] = ranked[:k]
    cdf = np.cumsum(probs)
    return np.int64(min((cdf <= float(u) * cdf[-1]).sum(), len(cdf) - 1))
