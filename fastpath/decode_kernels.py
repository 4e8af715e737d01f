"""Fused decode kernels for the fast path (CUDA, Triton): few launches, each overlapping the last.

At one activation row every matrix product is bound by fetching its weights and by the latency
of a kernel launch (~2 us each, even in a CUDA graph). PyTorch ops spent ~11 kernels a layer
(cuBLAS, LayerNorms, residual adds, cache writes, attention); here a layer is five:

    qkv  = LayerNorm_1(x) @ Wqkv + b          _gemv (LayerNorm prologue)
    attn = attention(q, cache + new k, v)     _decode_attention (writes k, v into the cache)
    x   += attn @ Wproj + b                   _gemv (residual epilogue, in place)
    h    = GELU(LayerNorm_2(x) @ Wfc + b)     _gemv (LayerNorm prologue, GELU epilogue)
    x   += h @ Wfc2 + b                       _gemv (residual epilogue, in place)

Every kernel is launched with programmatic dependent launch where the GPU has it (Hopper and
later): it starts while its predecessor runs, loads its constant weights whole, and only then
waits for its input, so weight fetches overlap the chain instead of following it.

The residual stream x stays float32 (more exact than the fp16 reference, never less). Weights
are stored [out, in], fp16 or int8 with one scale per output channel (the int8-wo recipe of
engines/quantize.py). 2-16 rows (batched decoding; up to 64, 16 at a time) run _rows: the same
weight prefetch, on tensor cores, with the input dimension split over programs (and each
program's slice into parts whose products run side by side) and the partial sums added by
whichever program finishes last, always in split order; longer inputs (prefill)
run a tensor-core tile (_linear). Every sum runs in a fixed order: the same inputs give the same
bits on every run.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _gelu_tanh(x):
    inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))


@triton.jit
def _after_producer(USE_PDL: tl.constexpr):
    """With programmatic dependent launch (Hopper and later) a kernel starts while the ones before
    it still run: let the next kernel start its own constant-only prologue (its weight loads),
    then wait until the previous kernel has finished and its writes are visible. Nothing before
    this call may read activations or write anything; as every kernel waits for its
    predecessor, each also follows all earlier ones."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


def pdl_enabled() -> bool:
    """Programmatic dependent launch needs compute capability 9.0+ and a Triton that has it
    (3.4+); never under the Triton interpreter."""
    global _PDL
    if _PDL is None:
        _PDL = (os.environ.get("TRITON_INTERPRET") != "1" and hasattr(tl.extra.cuda, "gdc_wait")
                and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9)
    return _PDL


def pdl_launch() -> dict[str, bool]:
    """The launch option, only where it is on (older Triton does not know the keyword)."""
    return {"launch_pdl": True} if pdl_enabled() else {}


_PDL: bool | None = None


@triton.jit
def _weights(w_ptr, rn, rk, N, K: tl.constexpr):
    """The weight tile [rows rn, inputs rk] (zeros outside the matrix)."""
    return tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0)


@triton.jit
def _constants(w_ptr, scale_ptr, bias_ptr, rn, rk, N, K: tl.constexpr, W_INT8: tl.constexpr,
               HAS_BIAS: tl.constexpr):
    """A program's weight tile [rows rn, inputs rk] and its columns' scale and bias (zeros where
    the layer has none): what a program may load before it waits for its input."""
    cols = rn < N
    w = _weights(w_ptr, rn, rk, N, K)
    scale = tl.zeros(rn.shape, dtype=tl.float32)
    bias = tl.zeros(rn.shape, dtype=tl.float32)
    if W_INT8:
        scale = tl.load(scale_ptr + rn, mask=cols, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=cols, other=0.0).to(tl.float32)
    return w, scale, bias


@triton.jit
def _linear(x_ptr, w_ptr, scale_ptr, bias_ptr, lnw_ptr, lnb_ptr, out_ptr, M, N, stride_x, stride_out, eps,
            K: tl.constexpr, LN: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
            W_INT8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            USE_PDL: tl.constexpr):
    # More than PackedLinear.ROWS rows (prefill) on tensor cores. K is a compile-time constant and the
    # loops over it are unrolled, so a program can issue its weight loads ahead of use.
    pid_n = tl.program_id(0)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rows = rm < M
    cols = rn < N
    x_rows = x_ptr + rm[:, None] * stride_x
    _after_producer(USE_PDL)
    if LN:  # one pass: sums about the row's first value (the shift keeps them from cancelling)
        shift = tl.load(x_ptr + rm * stride_x, mask=rows, other=0.0).to(tl.float32)
        s1 = tl.zeros([BLOCK_M], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in tl.static_range(0, K, BLOCK_K):
            d = tl.load(x_rows + (k + rk)[None, :], mask=rows[:, None], other=0.0).to(tl.float32) - shift[:, None]
            s1 += tl.sum(d, 1)
            s2 += tl.sum(d * d, 1)
        mean = s1 / K
        rstd = 1.0 / tl.sqrt(tl.maximum(s2 / K - mean * mean, 0.0) + eps)
        mean += shift
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_rows = w_ptr + rn[:, None] * K
    for k in tl.static_range(0, K, BLOCK_K):
        x = tl.load(x_rows + (k + rk)[None, :], mask=rows[:, None], other=0.0).to(tl.float32)
        if LN:
            x = (x - mean[:, None]) * rstd[:, None] * tl.load(lnw_ptr + k + rk).to(tl.float32)[None, :] \
                + tl.load(lnb_ptr + k + rk).to(tl.float32)[None, :]
        w = tl.load(w_rows + (k + rk)[None, :], mask=cols[:, None], other=0.0)  # [BLOCK_N, BLOCK_K]
        acc += tl.dot(x.to(tl.float16), tl.trans(w.to(tl.float16)))
    if W_INT8:
        acc = acc * tl.load(scale_ptr + rn, mask=cols, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=cols, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = _gelu_tanh(acc)
    out = out_ptr + rm[:, None] * stride_out + rn[None, :]
    both = rows[:, None] & cols[None, :]
    if RESIDUAL:  # out holds the residual stream; each program owns its columns, so in place is safe
        acc += tl.load(out, mask=both, other=0.0).to(tl.float32)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=both)


@triton.jit
def _gemv(x_ptr, w_ptr, scale_ptr, bias_ptr, lnw_ptr, lnb_ptr, out_ptr, N, eps, K: tl.constexpr,
          LN: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
          W_INT8: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """One activation row (batch-1 decoding): each program reads its BLOCK_N weight rows whole, in
    one load issued before it waits for its input (BLOCK_K >= K), so the fetch overlaps the end
    of the previous kernel instead of following it."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    cols = rn < N
    inside = rk < K
    # Everything constant is loaded before the wait, off the critical path.
    w, scale, bias = _constants(w_ptr, scale_ptr, bias_ptr, rn, rk, N, K, W_INT8, HAS_BIAS)
    if LN:
        ln_w = tl.load(lnw_ptr + rk, mask=inside, other=0.0).to(tl.float32)
        ln_b = tl.load(lnb_ptr + rk, mask=inside, other=0.0).to(tl.float32)
    _after_producer(USE_PDL)
    x = tl.load(x_ptr + rk, mask=inside, other=0.0).to(tl.float32)
    if LN:  # one round of reductions, both sums at once, taken about the row's first value (the
        # shift keeps E[d^2] - E[d]^2 from cancelling when the row's mean is large)
        d = tl.where(inside, x - tl.load(x_ptr).to(tl.float32), 0.0)
        s1 = tl.sum(d, 0) / K
        rstd = 1.0 / tl.sqrt(tl.maximum(tl.sum(d * d, 0) / K - s1 * s1, 0.0) + eps)
        x = (d - s1) * rstd * ln_w + ln_b
    acc = tl.sum(w.to(tl.float32) * x[None, :], 1)
    if W_INT8:
        acc = acc * scale
    if HAS_BIAS:
        acc += bias
    if GELU:
        acc = _gelu_tanh(acc)
    if RESIDUAL:  # out holds the residual stream; each program owns its columns, so in place is safe
        acc += tl.load(out_ptr + rn, mask=cols, other=0.0).to(tl.float32)
    tl.store(out_ptr + rn, acc.to(out_ptr.dtype.element_ty), mask=cols)


@triton.jit
def _rows_epilogue(acc, s1, s2, rm, rn, rows, cols, out_ptr, stride_out, scale, bias, c1, eps,
                   K: tl.constexpr, LN: tl.constexpr, W_INT8: tl.constexpr, HAS_BIAS: tl.constexpr,
                   GELU: tl.constexpr, RESIDUAL: tl.constexpr):
    if W_INT8:
        acc = acc * scale[None, :]
    if LN:  # LN(x) @ W + b = rstd * (d*g @ W - mean_d * c1) + c2, d = x - shift, mean_d = mean(d)
        mean = s1 / K
        rstd = 1.0 / tl.sqrt(tl.maximum(s2 / K - mean * mean, 0.0) + eps)
        acc = rstd[:, None] * (acc - mean[:, None] * c1[None, :])
    if HAS_BIAS:  # with LN: c2 = beta @ W + b
        acc += bias[None, :]
    if GELU:
        acc = _gelu_tanh(acc)
    out = out_ptr + rm[:, None] * stride_out + rn[None, :]
    both = rows[:, None] & cols[None, :]
    if RESIDUAL:  # in place: exactly one program finishes each output
        acc += tl.load(out, mask=both, other=0.0).to(tl.float32)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=both)


@triton.jit
def _unfolded_add(a, b):
    """a + b (float32) that Triton cannot fold: it rewrites tl.dot(x, w) + b as one product
    accumulating into b, which would chain _rows' independent products back into one."""
    return tl.inline_asm_elementwise("add.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _rows_input(x_ptr, lnw_ptr, rm, rows, rk, stride_x, shift, K: tl.constexpr, LN: tl.constexpr):
    """Inputs rk of the rows as a product's fp16 operand, with their sums of d and d^2 (zeros
    without a LayerNorm; with one the operand is d * g, d = x - shift, the row's first value)."""
    inside = rk < K  # the last split may be partial
    x = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=rows[:, None] & inside[None, :],
                other=0.0).to(tl.float32)
    s1 = tl.zeros(shift.shape, dtype=tl.float32)
    s2 = tl.zeros(shift.shape, dtype=tl.float32)
    if LN:
        x = tl.where(inside[None, :], x - shift[:, None], 0.0)
        s1 = tl.sum(x, 1)
        s2 = tl.sum(x * x, 1)
        x *= tl.load(lnw_ptr + rk, mask=inside, other=0.0).to(tl.float32)[None, :]
    return x.to(tl.float16), s1, s2


@triton.jit
def _rows(x_ptr, w_ptr, scale_ptr, bias_ptr, lnw_ptr, c1_ptr, out_ptr, part_ptr, stats_ptr, count_ptr, M, N,
          stride_x, stride_out, eps, K: tl.constexpr, LN: tl.constexpr, GELU: tl.constexpr,
          RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, W_INT8: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PARTS: tl.constexpr, USE_PDL: tl.constexpr):
    """2-BLOCK_M activation rows (batched decoding). Program (n, k) owns the [BLOCK_N, BLOCK_K] weight
    tile at output columns n, inputs k, loaded whole before the wait as in _gemv, and multiplies
    the rows' slice with it on tensor cores. With the input split (K > BLOCK_K) each program
    leaves its partial product in part_ptr and takes a ticket; the last of a column block's
    programs adds the partials in split order (the same bits whichever arrives last), applies
    the epilogue and resets the counter for the next call (or graph replay).
    A LayerNorm needs whole-row statistics no program sees, so it is folded into the epilogue:
    programs multiply d * g (d = x - the row's first value, g the LN weight) and sum d and d^2
    over their slice; the finisher adds those too and corrects with c1 = g @ W (and c2 =
    beta @ W + b passed as the bias), LN(x) @ W + b = rstd * (d*g @ W - mean(d) * c1) + c2.
    A program's product is PARTS products over slices of its split, added after: one product is
    a chain of BLOCK_K / 16 dependent tensor-core steps in each warp, the program's critical
    path; PARTS chains of a PARTS-th of that length run side by side."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = rm < M
    cols = rn < N
    tl.static_assert((PARTS & (PARTS - 1) == 0) & (PARTS <= 16), "PARTS is a power of two up to 16 (LEVELS)")
    PART: tl.constexpr = BLOCK_K // PARTS
    rp = pid_k * BLOCK_K + tl.arange(0, PART)  # a part's inputs; part p's are rp + p * PART
    w, scale, bias = _constants(w_ptr, scale_ptr, bias_ptr, rn, rp, N, K, W_INT8, HAS_BIAS)
    w = (w,)
    for p in tl.static_range(1, PARTS):
        w = w + (_weights(w_ptr, rn, rp + p * PART, N, K),)
    c1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    if LN:
        c1 = tl.load(c1_ptr + rn, mask=cols, other=0.0)
    _after_producer(USE_PDL)
    shift = tl.zeros([BLOCK_M], dtype=tl.float32)
    if LN:
        shift = tl.load(x_ptr + rm * stride_x, mask=rows, other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_M], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Every part's input before any product: an input's layout change (through shared memory, with
    # a barrier) between two products would keep their chains from interleaving.
    x = ()
    for p in tl.static_range(PARTS):
        xp, p1, p2 = _rows_input(x_ptr, lnw_ptr, rm, rows, rp + p * PART, stride_x, shift, K, LN)
        x = x + (xp,)
        s1 += p1
        s2 += p2
    products = ()
    for p in tl.static_range(PARTS):
        products = products + (tl.dot(x[p], tl.trans(w[p].to(tl.float16))),)  # [BLOCK_M, BLOCK_N], float32
    LEVELS: tl.constexpr = (PARTS >= 2) + (PARTS >= 4) + (PARTS >= 8) + (PARTS >= 16)
    for level in tl.static_range(LEVELS):  # added pairwise: only then does ptxas interleave the chains
        pairs = ()
        for i in tl.static_range(PARTS >> (level + 1)):
            pairs = pairs + (_unfolded_add(products[2 * i], products[2 * i + 1]),)
        products = pairs
    acc = products[0]
    SPLIT: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    if SPLIT == 1:
        _rows_epilogue(acc, s1, s2, rm, rn, rows, cols, out_ptr, stride_out, scale, bias, c1, eps, K, LN, W_INT8,
                       HAS_BIAS, GELU, RESIDUAL)
    else:
        tile = rm[:, None] * N + rn[None, :]
        tl.store(part_ptr + pid_k * BLOCK_M * N + tile, acc, mask=cols[None, :])
        sums = 2 * rm[:, None] + tl.arange(0, 2)[None, :]  # a row's two sums side by side: one store
        if LN:
            tl.store(stats_ptr + (pid_k * tl.num_programs(0) + pid_n) * 2 * BLOCK_M + sums, tl.join(s1, s2))
        # CUTLASS's serial split-K handshake: every thread's stores, a barrier, then one release
        # (acq_rel) atomic; the finisher's acquire makes all partials visible to it.
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            s1 = tl.zeros([BLOCK_M], dtype=tl.float32)  # this program's own sums come back with the rest
            s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for split in tl.static_range(SPLIT):  # .cg: from L2, never a stale L1 line
                total += tl.load(part_ptr + split * BLOCK_M * N + tile, mask=cols[None, :], other=0.0,
                                 cache_modifier=".cg")
                if LN:
                    p1, p2 = tl.split(tl.load(stats_ptr + (split * tl.num_programs(0) + pid_n) * 2 * BLOCK_M + sums,
                                              cache_modifier=".cg"))
                    s1 += p1
                    s2 += p2
            tl.store(count_ptr + pid_n, 0)
            _rows_epilogue(total, s1, s2, rm, rn, rows, cols, out_ptr, stride_out, scale, bias, c1, eps, K, LN,
                           W_INT8, HAS_BIAS, GELU, RESIDUAL)


@triton.jit
def _decode_attention(qkv_ptr, stride_qkv, cache_ptr, stride_cb, stride_ckv, stride_ch, stride_ct, out_ptr,
                      stride_out, pos_ptr, pos_const, scale, HIDDEN: tl.constexpr, D: tl.constexpr,
                      PER_ROW: tl.constexpr, BLOCK_T: tl.constexpr, USE_PDL: tl.constexpr):
    """One query per (row, head): write the new key and value at the row's position, attend
    over positions 0..pos (the new key from registers, earlier ones from the cache)."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, D)
    _after_producer(USE_PDL)
    src = qkv_ptr + row * stride_qkv + head * D + d
    q = tl.load(src).to(tl.float32)
    k_new = tl.load(src + HIDDEN)
    v_new = tl.load(src + 2 * HIDDEN)
    pos = tl.load(pos_ptr + row) if PER_ROW else pos_const
    keys = cache_ptr + row * stride_cb + head * stride_ch
    values = keys + stride_ckv
    # Online softmax, starting from the new key (it is always visible).
    m = tl.sum(q * k_new.to(cache_ptr.dtype.element_ty).to(tl.float32), 0) * scale
    denom = m * 0.0 + 1.0
    acc = v_new.to(cache_ptr.dtype.element_ty).to(tl.float32)
    for start in range(0, pos, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        seen = t < pos
        k = tl.load(keys + t[:, None] * stride_ct + d[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
        v = tl.load(values + t[:, None] * stride_ct + d[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
        s = tl.where(seen, tl.sum(k * q[None, :], 1) * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        denom = denom * alpha + tl.sum(p, 0)
        m = m_new
    tl.store(out_ptr + row * stride_out + head * D + d, (acc / denom).to(out_ptr.dtype.element_ty))
    # The cache writes come last: stores before the loop would hold its loads back (the compiler
    # cannot tell that position pos is never read).
    tl.store(keys + pos * stride_ct + d, k_new.to(cache_ptr.dtype.element_ty))
    tl.store(values + pos * stride_ct + d, v_new.to(cache_ptr.dtype.element_ty))


def _divisor(n: int, choices: tuple[int, ...]) -> int | None:
    return next((c for c in choices if n % c == 0), None)


class PackedLinear:
    """A GPT-2 Conv1D (weight [in, out]) repacked [out, in] for the fused kernel, as fp16 or
    int8 with a per-output-channel scale."""

    # One row: _gemv, a program per BLOCK_N weight rows held whole (BLOCK_N * next_pow2(in) <=
    # GEMV_ELEMENTS). 2..ROWS rows: _rows, tiles ROWS_TILES / ROWS_TILES_LONG (BLOCK_N, BLOCK_K, warps); up to
    # MANY_ROWS, ROWS at a time. More rows (the longer context loads): _linear, tiles TILES
    # (BLOCK_N, BLOCK_K, warps). From sweeps on an H200
    # (benchmarks/decode_kernel_sweep.py), then warps, ROWS_PARTS and the two _rows tiles from
    # benchmarks/chains/, timing a whole 16-row NotaGen-X patch on an H200 (three sweeps in one lease:
    # 128 x 256 for inputs up to LONG and 64 x 512 beyond 3.41 ms, 64 x 512 everywhere 3.49-3.51,
    # 128 x 256 everywhere 3.42-3.44).
    GEMV_ELEMENTS, GEMV_WARPS = 16384, 4
    ROWS = 16  # the tensor cores' smallest tile height
    # Up to MANY_ROWS rows (an engine's most) run _rows 16 rows at a time: on an H200 a NotaGen-X
    # fp16 patch for 32 rows took 17.0 ms on _linear, 6.2 ms this way (3.6 ms for 16 rows).
    MANY_ROWS = 64
    ROWS_TILES = (128, 256, 8)
    ROWS_TILES_LONG = (64, 512, 8)  # inputs over LONG (NotaGen's MLP output projection: 5120)
    LONG = 2048
    ROWS_PARTS = 4  # each _rows program's product as this many independent ones (see _rows)
    TILES = (32, 256, 4)

    def __init__(self, weight_in_out: torch.Tensor, bias: torch.Tensor | None, int8: bool = False) -> None:
        # _rows' scratch: a model shares one among its layers (set it); made on first use if not.
        self.workspace: RowsWorkspace | None = None
        self._ln_folds: dict[torch.nn.LayerNorm, tuple[torch.Tensor, torch.Tensor]] = {}
        w = weight_in_out.detach().float().t().contiguous()  # [out, in]
        self.n, self.k = w.shape
        if self.k % 16:
            raise ValueError(f"fused kernels need an input size divisible by 16, got {self.k}")
        if int8:
            scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # symmetric, per output channel
            self.weight = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
            self.scale = scale.to(torch.float16)
        else:
            self.weight, self.scale = w.to(torch.float16), None
        self.bias = None if bias is None else bias.detach().to(torch.float16)

    def to(self, device: torch.device | str) -> "PackedLinear":
        self.weight = self.weight.to(device)
        self.scale = None if self.scale is None else self.scale.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def rows_tile(self) -> tuple[int, int, int, int]:
        """(BLOCK_N, BLOCK_K, warps, splits) of _rows for this layer."""
        block_n, block_k, warps = self.ROWS_TILES if self.k <= self.LONG else self.ROWS_TILES_LONG
        block_k = min(block_k, triton.next_power_of_2(self.k))
        return block_n, block_k, warps, triton.cdiv(self.k, block_k)

    def rows_parts(self) -> int:
        """PARTS of _rows: each at least one tensor-core step (16 inputs) long."""
        return max(1, min(self.ROWS_PARTS, self.rows_tile()[1] // 16))

    def _ln_terms(self, ln: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """_rows' folded LayerNorm: c1 = g @ W and c2 = beta @ W + b over the stored weights
        (int8 ones with their scales), float32, computed once per LayerNorm."""
        terms = self._ln_folds.get(ln)
        if terms is None:
            w = self.weight.double() * (self.scale.double()[:, None] if self.scale is not None else 1.0)
            c2 = w @ ln.bias.double() + (self.bias.double() if self.bias is not None else 0.0)
            terms = self._ln_folds[ln] = ((w @ ln.weight.double()).float(), c2.float())
        return terms

    def _rows(self, x: torch.Tensor, ln: torch.nn.LayerNorm | None, gelu: bool, residual: torch.Tensor | None,
              out: torch.Tensor) -> None:
        if self.workspace is None:
            self.workspace = RowsWorkspace([self], x.device)
        ws, dummy = self.workspace, self.weight
        c1, bias = self._ln_terms(ln) if ln is not None else (dummy, self.bias)
        block_n, block_k, warps, splits = self.rows_tile()
        _rows[(triton.cdiv(self.n, block_n), splits)](
            x, self.weight, self.scale if self.scale is not None else dummy, bias if bias is not None else dummy,
            ln.weight if ln is not None else dummy, c1, out, ws.partials, ws.stats, ws.tickets, x.shape[0], self.n,
            x.stride(0), out.stride(0), ln.eps if ln is not None else 0.0, K=self.k, LN=ln is not None, GELU=gelu,
            RESIDUAL=residual is not None, HAS_BIAS=bias is not None, W_INT8=self.scale is not None,
            BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_M=self.ROWS, PARTS=self.rows_parts(), USE_PDL=pdl_enabled(),
            num_warps=warps,
            **pdl_launch())

    def __call__(self, x: torch.Tensor, *, ln: torch.nn.LayerNorm | None = None, gelu: bool = False,
                 residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """act(LN(x) @ W + b) [+ residual, accumulated in place into ``residual``]."""
        x2 = x.reshape(-1, self.k)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        m = x2.shape[0]
        if residual is not None:
            out = residual.view(m, self.n)
        elif out is None:
            out = torch.empty((m, self.n), dtype=out_dtype, device=x.device)
        dummy = self.weight
        if m == 1:
            block_k = triton.next_power_of_2(self.k)
            block_n = max(1, self.GEMV_ELEMENTS // block_k)
            _gemv[(triton.cdiv(self.n, block_n),)](
                x2, self.weight, self.scale if self.scale is not None else dummy,
                self.bias if self.bias is not None else dummy, ln.weight if ln is not None else dummy,
                ln.bias if ln is not None else dummy, out, self.n, ln.eps if ln is not None else 0.0, K=self.k,
                LN=ln is not None, GELU=gelu, RESIDUAL=residual is not None, HAS_BIAS=self.bias is not None,
                W_INT8=self.scale is not None,
                BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=pdl_enabled(), num_warps=self.GEMV_WARPS,
                **pdl_launch())
            return out.view(*x.shape[:-1], self.n)
        if m <= self.ROWS:
            self._rows(x2, ln, gelu, residual, out)
            return out.view(*x.shape[:-1], self.n)
        if m <= self.MANY_ROWS:  # 16 rows a launch: _linear's tiles, made for long inputs, cost far more
            for start in range(0, m, self.ROWS):
                rows = slice(start, start + self.ROWS)
                self._rows(x2[rows], ln, gelu, residual, out[rows])
            return out.view(*x.shape[:-1], self.n)
        block_m = min(64, max(16, triton.next_power_of_2(m)))
        block_n, block_k, warps = self.TILES
        block_k = _divisor(self.k, tuple(b for b in (1024, 512, 256, 128, 64, 32, 16) if b <= block_k))
        grid = (triton.cdiv(self.n, block_n), triton.cdiv(m, block_m))
        _linear[grid](x2, self.weight, self.scale if self.scale is not None else dummy,
                      self.bias if self.bias is not None else dummy, ln.weight if ln is not None else dummy,
                      ln.bias if ln is not None else dummy, out, m, self.n, x2.stride(0), out.stride(0),
                      ln.eps if ln is not None else 0.0, K=self.k, LN=ln is not None, GELU=gelu,
                      RESIDUAL=residual is not None, HAS_BIAS=self.bias is not None,
                      W_INT8=self.scale is not None, BLOCK_M=block_m,
                      BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=pdl_enabled(), num_warps=warps,
                      **pdl_launch())
        return out.view(*x.shape[:-1], self.n)


class RowsWorkspace:
    """_rows' scratch for a set of layers run one after another (a model's): the split partial
    products and LayerNorm sums, and one ticket counter per column block (zero between calls)."""

    def __init__(self, linears: list[PackedLinear], device: torch.device | str) -> None:
        parts, stats, blocks = 1, 1, 1
        for lin in linears:
            block_n, _, _, split = lin.rows_tile()
            column_blocks = triton.cdiv(lin.n, block_n)
            parts = max(parts, split * PackedLinear.ROWS * lin.n)
            stats = max(stats, split * column_blocks * 2 * PackedLinear.ROWS)
            blocks = max(blocks, column_blocks)
        self.partials = torch.empty(parts, dtype=torch.float32, device=device)
        self.stats = torch.empty(stats, dtype=torch.float32, device=device)
        self.tickets = torch.zeros(blocks, dtype=torch.int32, device=device)


# Warps of decode_attention for (patch level, char level: at most 32 positions), from
# benchmarks/decode_kernel_sweep.py on an H200.
ATTENTION_WARPS = {False: 8, True: 1}


def decode_attention(qkv: torch.Tensor, cache: torch.Tensor, out: torch.Tensor, position: torch.Tensor | int) -> None:
    """qkv [B, 3H] (one new position per row) -> out [B, H]; writes k, v into cache
    [B, 2, heads, capacity, 64] at ``position`` (an int for every row, or a [B] tensor)."""
    b, _, heads, capacity, d = cache.shape
    per_row = isinstance(position, torch.Tensor)
    _decode_attention[(b, heads)](
        qkv, qkv.stride(0), cache, cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3), out,
        out.stride(0), position if per_row else qkv, 0 if per_row else int(position), d ** -0.5,
        HIDDEN=heads * d, D=d, PER_ROW=per_row, BLOCK_T=min(128, triton.next_power_of_2(capacity)),
        USE_PDL=pdl_enabled(), num_warps=ATTENTION_WARPS[capacity <= 32], **pdl_launch())
