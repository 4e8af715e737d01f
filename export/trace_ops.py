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


def linear(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    return x @ conv.weight + conv.bias  # MatMul + Add: Conv1D's flattening reshapes are not needed


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's gelu_new written out in the form ONNX Runtime fuses into one FastGelu node (the
    # tracer's own expansion of F.gelu(approximate="tanh") is left as eight elementwise nodes).
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))
