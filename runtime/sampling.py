"""The published sampling rule in numpy: softmax -> top-k -> top-p -> temperature -> draw.

Each draw consumes exactly one uniform number, so a seeded ``numpy.random.Generator`` fixes a
piece on every backend (and an in-graph sampler fed the same uniforms can reproduce it).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from notagen_trt.config import VOCAB_SIZE


# Settings every way in accepts (CLI, HTTP, page): top-k past the vocabulary would keep it all, as
# 0 does; at temperature 0.01 the weights are raised to the 100th power, the top one nearly always drawn.
TOP_K_MAX = VOCAB_SIZE
TEMPERATURE_RANGE = (0.01, 10.0)


@dataclass(frozen=True)
class SamplingParams:
    top_k: int = 9
    top_p: float = 0.9
    temperature: float = 1.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_k", whole_number("top_k", self.top_k))
        for name in ("top_p", "temperature"):
            number(name, getattr(self, name))
        if not 0 <= self.top_k <= TOP_K_MAX:
            raise ValueError(f"top_k must be 0 (off) to {TOP_K_MAX}, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        low, high = TEMPERATURE_RANGE
        if not low <= self.temperature <= high:
            raise ValueError(f"temperature must be {low} to {high}, got {self.temperature}")


def whole_number(name: str, value: object) -> int:
    """``value`` as an int (numpy's integers too); a float, a string, a bool or None is a ValueError
    naming the setting."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def number(name: str, value: object) -> None:
    """A ValueError naming the setting unless ``value`` is an int or a float (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def weights(logits: np.ndarray, params: SamplingParams = SamplingParams()) -> np.ndarray:
    """What a draw is made from: softmax(logits) over the last axis truncated and reshaped in the
    published order, unnormalised. Keep the top_k most likely; keep the smallest head whose mass
    reaches top_p of what top-k kept (a token survives when the mass ranked strictly before it is
    at most top_p of the kept total); then p ** (1 / T) on what is left. Ties rank towards the
    lower id.

    Every backend computes the same float64 values: each probability relative to the most likely
    one, exp(logit - the top logit) (so tied leaders weigh exactly 1.0 and a top-p cut between
    them is exact whatever the backend's exp rounds), and sums as running sums in rank order
    (the mass before a token is the exclusive cumulative sum, the total the inclusive one's last
    term), which the in-graph samplers make with one CumSum each."""
    z = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-z, axis=-1, kind="stable")
    ranked = np.take_along_axis(z, order, axis=-1)
    ranked = np.exp(ranked - ranked[..., :1])
    if params.top_k:
        ranked[..., params.top_k :] = 0.0
    mass = np.cumsum(ranked, axis=-1)
    before = np.concatenate([np.zeros_like(mass[..., :1]), mass[..., :-1]], axis=-1)
    ranked = np.where(before <= params.top_p * mass[..., -1:], ranked, 0.0) ** (1.0 / params.temperature)
    out = np.zeros_like(z)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def transform_probs(probs: np.ndarray, params: SamplingParams = SamplingParams()) -> np.ndarray:
    """The distribution a draw follows, from probabilities: ``weights`` of their logs, renormalised."""
    with np.errstate(divide="ignore"):  # log(0) = -inf weighs 0
        w = weights(np.log(np.asarray(probs, dtype=np.float64)), params)
    return w / w.sum(axis=-1, keepdims=True)


def draw(probs: np.ndarray, u: np.ndarray | float) -> np.ndarray:
    """Inverse-CDF draw: the first id whose cumulative probability exceeds ``u`` in [0, 1) of the
    total (``probs`` may be unnormalised weights)."""
    cdf = np.cumsum(probs, axis=-1)
    u = np.asarray(u, dtype=np.float64)[..., None] * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


def sample(logits: np.ndarray, u: np.ndarray | float, params: SamplingParams = SamplingParams()) -> np.ndarray:
    """Token ids for logits [..., 128] and one uniform per row."""
    if np.ndim(logits) == 1 and np.ndim(u) == 0:
        return _sample_row(logits, u, params)
    return draw(weights(logits, params), u)


def _sample_row(logits: np.ndarray, u: float, params: SamplingParams) -> np.int64:
    """``sample`` for one row: the per-character hot path of batch-1 generation. The same float64
    operations as weights -> draw on arrays of the same length and order (so
    the same reductions and the same ids, ties included), without the axis-generic helpers
    (take/put_along_axis, keepdims) that cost several times the arithmetic at this size."""
    z = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-z, kind="stable")
    k = params.top_k or len(z)
    # Everything past the top k weighs an exact 0.0, so only the head is computed: a running sum
    # gains nothing from the zeros after it.
    head = z[order[:k]]
    head = np.exp(head - head[0])
    mass = np.cumsum(head)
    before = np.concatenate(([0.0], mass[:-1]))
    probs = np.zeros_like(z)
    probs[order[:k]] = np.where(before <= params.top_p * mass[-1], head, 0.0) ** (1.0 / params.temperature)
    cdf = np.cumsum(probs)
    return np.int64(min((cdf <= float(u) * cdf[-1]).sum(), len(cdf) - 1))
