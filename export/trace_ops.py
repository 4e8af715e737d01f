"""Ops written so the TorchScript ONNX exporter traces each as few nodes as ONNX Runtime runs
fast: shared by the step graphs (onnx_export.py) and the engine-ready graphs (engine_graphs.py)."""

from __future__ import annotations

import torch
from torch import nn


class Reshape(torch.autograd.Function):
    """``x.reshape(shape)`` where a 0 keeps x's size on that axis (ONNX Reshape semantics; the
    exporter's shape inference also wants one -1), exported as one Reshape of a constant.
    Sizes read from ``x.shape`` trace as a Shape/Gather/Unsqueeze/Concat chain per reshape;
    those chains were most of the nodes ONNX Runtime runs per call, and per-node overhead is
    most of a small model's step. ``shape`` must hold plain ints (not traced sizes)."""

    @staticmethod
    def forward(ctx, x, shape):  # no annotations: the tracer chokes on them
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])

    @staticmethod
    def symbolic(g, x, shape):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))


class ExclusiveCumSum(torch.autograd.Function):
    """The running sum before each term on the last axis (0 first), as one CumSum node with
    ``exclusive=1``: each term is the sum of the ones before it, added left to right, as numpy's
    ``cumsum`` adds them (``cumsum(x) - x`` rounds differently)."""

    @staticmethod
    def forward(ctx, x):  # no annotations: the tracer chokes on them
        return torch.cat([torch.zeros_like(x[..., :1]), torch.cumsum(x, dim=-1)[..., :-1]], dim=-1)

    @staticmethod
    def symbolic(g, x):
        return g.op("CumSum", x, g.op("Constant", value_t=torch.tensor(-1, dtype=torch.int64)), exclusive_i=1)


class TopRanks(torch.autograd.Function):
    """The ``k`` largest entries of ``x`` on the last axis, sorted, and their indices, where ``k`` is
    a [1] int64 tensor the graph computes (one TopK node whose K is a per-call value)."""

    @staticmethod
    def forward(ctx, x, k):  # no annotations: the tracer chokes on them
        return torch.topk(x, int(k), dim=-1)

    @staticmethod
    def symbolic(g, x, k):
        return g.op("TopK", x, k, axis_i=-1, largest_i=1, sorted_i=1, outputs=2)


class FirstColumns(torch.autograd.Function):
    """``x[..., :k]`` with ``k`` a [1] int64 tensor the graph computes, as one Slice node."""

    @staticmethod
    def forward(ctx, x, k):  # no annotations: the tracer chokes on them
        return x[..., : int(k)]

    @staticmethod
    def symbolic(g, x, k):
        const = lambda v: g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))  # noqa: E731
        return g.op("Slice", x, const([0]), k, const([-1]))


def linear(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    return x @ conv.weight + conv.bias  # MatMul + Add: Conv1D's flattening reshapes are not needed


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's gelu_new written out in the form ONNX Runtime fuses into one FastGelu node (the
    # tracer's own expansion of F.gelu(approximate="tanh") is left as eight elementwise nodes).
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))


# ONNX Runtime's fused contrib ops (domain com.microsoft), used by the CPU form of the engine-ready
# graphs only: TensorRT does not parse them. Each eager forward computes what the node computes.
# (SkipLayerNormalization was measured and left out: on one row it ran slower than Add + LayerNorm.)

def _absent(g):
    """An omitted optional input of a contrib node (an empty input name in the ONNX graph)."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


class PastAttention(torch.autograd.Function):
    """One new query per row attending over its past and its own key and value: q, k, v
    [rows, 1, heads * 64] and past keys / values [rows, heads, n, 64] -> (the attention output
    [rows, 1, heads * 64], keys and values [rows, heads, n + 1, 64]), as one MultiHeadAttention
    node that appends to the past itself."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, heads):  # no annotations: the tracer chokes on them
        rows = q.shape[0]
        split = lambda z: z.reshape(rows, heads, 1, -1)  # noqa: E731 (one query: heads are plain reshapes)
        keys, values = torch.cat([past_k, split(k)], dim=2), torch.cat([past_v, split(v)], dim=2)
        weights = torch.softmax(split(q) @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5, dim=-1)
        return (weights @ values).reshape(rows, 1, -1), keys, values

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, heads):
        none = _absent(g)
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, none, none, none, past_k, past_v,
                   num_heads_i=heads, outputs=3)
        out[0].setType(q.type())
        out[1].setType(past_k.type())
        out[2].setType(past_v.type())
        return tuple(out)


class CacheAttention(torch.autograd.Function):
    """One new query per row attending over a fixed-capacity cache: q, k, v [rows, 1, heads * 64],
    caches [rows, heads, capacity, 64], ``seqlens`` [rows] int32 (each row's position) and
    ``total`` [] int32 (any length >= every position + 1: each row reads up to its own) -> (the
    attention output [rows, 1, heads * 64], the caches with each row's new key and value at its
    position), as one GroupQueryAttention node: it writes the caches in place where the runner
    binds them as both input and output, and reads only positions 0 .. position of each row (no
    window copied out of the cache)."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens, total, heads):  # no annotations: the tracer chokes on them
        rows, capacity = q.shape[0], past_k.shape[2]
        split = lambda z: z.reshape(rows, heads, 1, -1)  # noqa: E731 (one query: heads are plain reshapes)
        at = (torch.arange(capacity)[None] == seqlens.long()[:, None])[:, None, :, None]  # [rows, 1, capacity, 1]
        keys, values = torch.where(at, split(k), past_k), torch.where(at, split(v), past_v)
        scores = split(q) @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5
        visible = (torch.arange(capacity)[None] <= seqlens.long()[:, None])[:, None, None]
        weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        return (weights @ values).reshape(rows, 1, -1), keys, values

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens, total, heads):
        out = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens, total,
                   num_heads_i=heads, kv_num_heads_i=heads, outputs=3)
        out[0].setType(q.type())
        out[1].setType(past_k.type())
        out[2].setType(past_v.type())
        return tuple(out)
