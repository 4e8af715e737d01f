"""Weight-only int8 matrix products for the fast path (CUDA, Triton).

Batch-1 decoding is bound by reading weights, so int8 weights (per output channel, symmetric:
the int8-wo recipe of engines/quantize.py) halve the bytes of fp16. One kernel reads an int8
weight tile, scales it, multiplies on tensor cores with the (few) activation rows, and applies
bias and, for the MLP's first layer, GELU (tanh) in its epilogue."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gelu_tanh(x):
    inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))


@triton.jit
def _int8_matmul(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wk, stride_om,
                 HAS_BIAS: tl.constexpr, GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + rm[:, None] * stride_xm + (k + rk)[None, :], mask=(rm[:, None] < M), other=0.0)
        w = tl.load(w_ptr + (k + rk)[:, None] * stride_wk + rn[None, :])
        acc += tl.dot(x.to(tl.float16), w.to(tl.float16))
    acc = acc * tl.load(scale_ptr + rn).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    if GELU:
        acc = _gelu_tanh(acc)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=rm[:, None] < M)


class Int8Linear:
    """y = x @ (w_int8 * scale) + bias, w stored [in, out] (GPT-2's Conv1D layout)."""

    # Best of a sweep on an H200 (benchmarks/int8_gemv_sweep.py); smaller tiles where shapes need.
    BLOCK_N, BLOCK_K, WARPS = 32, 128, 4

    def __init__(self, weight_in_out: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight_in_out.float()
        scale = w.abs().amax(dim=0).clamp(min=1e-8) / 127.0  # per output channel, symmetric
        self.weight = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.float16)
        self.bias = None if bias is None else bias.to(torch.float16)
        self.k, self.n = self.weight.shape
        self.block_k = next((b for b in (self.BLOCK_K, 64, 32, 16) if self.k % b == 0), None)
        self.block_n = next((b for b in (self.BLOCK_N, 16) if self.n % b == 0), None)
        if self.block_k is None or self.block_n is None:
            raise ValueError(f"int8 weights need in and out sizes divisible by 16, got {tuple(w.shape)}")

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        x2 = x.reshape(-1, self.k)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        m = x2.shape[0]
        out = torch.empty((m, self.n), dtype=torch.float16, device=x.device)
        block_m = max(16, triton.next_power_of_2(m))
        _int8_matmul[(self.n // self.block_n,)](
            x2, self.weight, self.scale, self.bias if self.bias is not None else self.scale, out, m, self.n, self.k,
            x2.stride(0), self.weight.stride(0), out.stride(0), HAS_BIAS=self.bias is not None, GELU=gelu,
            BLOCK_M=block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k, num_warps=self.WARPS)
        return out.view(*x.shape[:-1], self.n)

    def to(self, device: torch.device | str) -> "Int8Linear":
        self.weight, self.scale = self.weight.to(device), self.scale.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def nbytes(self) -> int:
        return self.weight.numel() + 2 * self.scale.numel() + (0 if self.bias is None else 2 * self.bias.numel())
