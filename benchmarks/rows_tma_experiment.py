"""An experiment towards a cheaper 16-row step of the fast path: `_rows` with its weight tile
fetched by the Tensor Memory Accelerator straight into shared memory before the wait for the
input (programmatic dependent launch), and the product taken as W @ x^T (swap AB: the weight
rows fill the MMA's 64-row side, the 16 activation rows its narrow side). Against the product's
`_rows` on NotaGen-X's five matrix shapes at 16 rows, fp16, each in a CUDA graph of
back-to-back calls over weight copies larger than L2, with a correctness check against
PyTorch. ``python benchmarks/rows_tma_experiment.py``"""

from __future__ import annotations

import itertools
import json

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from notagen_trt.fastpath.decode_kernels import PackedLinear, RowsWorkspace, _after_producer, _rows_epilogue, \
    pdl_enabled, pdl_launch

SHAPES = [(1280, 3840), (1280, 1280), (1280, 5120), (5120, 1280), (1280, 128)]


@triton.jit
def _rows_tma(x_ptr, w_desc, bias_ptr, lnw_ptr, c1_ptr, out_ptr, part_ptr, stats_ptr, count_ptr, M, N,
              stride_x, stride_out, eps, K: tl.constexpr, LN: tl.constexpr, GELU: tl.constexpr,
              RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_M: tl.constexpr, USE_PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rows = rm < M
    cols = rn < N
    inside = rk < K
    w = w_desc.load([pid_n * BLOCK_N, pid_k * BLOCK_K])  # [BLOCK_N, BLOCK_K], into shared memory
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=cols, other=0.0).to(tl.float32)
    c1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    if LN:
        ln_w = tl.load(lnw_ptr + rk, mask=inside, other=0.0).to(tl.float32)
        c1 = tl.load(c1_ptr + rn, mask=cols, other=0.0)
    _after_producer(USE_PDL)
    x = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=rows[:, None] & inside[None, :],
                other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_M], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    if LN:
        x = tl.where(inside[None, :], x - tl.load(x_ptr + rm * stride_x, mask=rows, other=0.0).to(tl.float32)[:, None],
                     0.0)
        s1 = tl.sum(x, 1)
        s2 = tl.sum(x * x, 1)
        x *= ln_w[None, :]
    acc = tl.trans(tl.dot(w, tl.trans(x.to(tl.float16))))  # swap AB: [BLOCK_N, BLOCK_M] -> [BLOCK_M, BLOCK_N]
    scale = tl.zeros([BLOCK_N], dtype=tl.float32)
    SPLIT: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    if SPLIT == 1:
        _rows_epilogue(acc, s1, s2, rm, rn, rows, cols, out_ptr, stride_out, scale, bias, c1, eps, K, LN, False,
                       HAS_BIAS, GELU, RESIDUAL)
    else:
        tile = rm[:, None] * N + rn[None, :]
        tl.store(part_ptr + pid_k * BLOCK_M * N + tile, acc, mask=cols[None, :])
        if LN:
            stats = stats_ptr + (pid_k * tl.num_programs(0) + pid_n) * 2 * BLOCK_M + 2 * rm
            tl.store(stats, s1)
            tl.store(stats + 1, s2)
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            s1 = tl.zeros([BLOCK_M], dtype=tl.float32)
            s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for split in tl.static_range(SPLIT):
                total += tl.load(part_ptr + split * BLOCK_M * N + tile, mask=cols[None, :], other=0.0,
                                 cache_modifier=".cg")
                if LN:
                    stats = stats_ptr + (split * tl.num_programs(0) + pid_n) * 2 * BLOCK_M + 2 * rm
                    s1 += tl.load(stats, cache_modifier=".cg")
                    s2 += tl.load(stats + 1, cache_modifier=".cg")
            tl.store(count_ptr + pid_n, 0)
            _rows_epilogue(total, s1, s2, rm, rn, rows, cols, out_ptr, stride_out, scale, bias, c1, eps, K, LN,
                           False, HAS_BIAS, GELU, RESIDUAL)


class TmaLinear:
    """A PackedLinear (fp16) run through _rows_tma."""

    def __init__(self, packed: PackedLinear, block_n: int, block_k: int, warps: int) -> None:
        self.packed, self.block_n, self.block_k, self.warps = packed, block_n, min(block_k, packed.k), warps
        self.desc = TensorDescriptor.from_tensor(packed.weight, [block_n, self.block_k])
        splits = triton.cdiv(packed.k, self.block_k)
        blocks = triton.cdiv(packed.n, block_n)
        dev = packed.weight.device
        self.partials = torch.empty(splits * 16 * packed.n, dtype=torch.float32, device=dev)
        self.stats = torch.empty(splits * blocks * 32, dtype=torch.float32, device=dev)
        self.tickets = torch.zeros(blocks, dtype=torch.int32, device=dev)

    def __call__(self, x: torch.Tensor, ln: torch.nn.LayerNorm | None, out: torch.Tensor) -> torch.Tensor:
        p = self.packed
        c1, bias = p._ln_terms(ln) if ln is not None else (p.weight, p.bias)
        grid = (triton.cdiv(p.n, self.block_n), triton.cdiv(p.k, self.block_k))
        _rows_tma[grid](x, self.desc, bias if bias is not None else p.weight, ln.weight if ln is not None else p.weight,
                        c1, out, self.partials, self.stats, self.tickets, x.shape[0], p.n, x.stride(0), out.stride(0),
                        ln.eps if ln is not None else 0.0, K=p.k, LN=ln is not None, GELU=False, RESIDUAL=False,
                        HAS_BIAS=bias is not None, BLOCK_N=self.block_n, BLOCK_K=self.block_k, BLOCK_M=16,
                        USE_PDL=pdl_enabled(), num_warps=self.warps, **pdl_launch())
        return out


def time_us(fn, reps: int = 100) -> float:
    for _ in range(3):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def main() -> None:
    torch.manual_seed(0)
    report: dict = {"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": {}, "tma": {}}
    x = torch.randn(16, 5120, device="cuda", dtype=torch.float16)
    for k, n in SHAPES:
        copies = max(2, 256 * 2**20 // (2 * k * n))
        ws = [torch.randn(k, n, device="cuda") * 0.02 for _ in range(copies)]
        b = torch.randn(n, device="cuda") * 0.1
        ln = torch.nn.LayerNorm(k, device="cuda") if n != 1280 else None
        xs = x[:, :k].contiguous()
        lins = [PackedLinear(w, b).to("cuda") for w in ws]
        for lin in lins:
            lin.workspace = RowsWorkspace([lin], "cuda")
        out = torch.empty(16, n, device="cuda", dtype=torch.float16)
        for lin in lins:  # each one's folded LayerNorm terms, before any capture
            lin(xs, ln=ln, out=out)
        turn = itertools.count()
        report["rows"][f"{k}x{n}"] = round(time_us(lambda: lins[next(turn) % copies](xs, ln=ln, out=out)), 2)
        want = lins[0](xs, ln=ln).float()
        for block_n, block_k, warps in itertools.product((64, 128), (64, 128, 256), (4, 8)):
            key = f"{k}x{n} ({block_n}, {block_k}, {warps})"
            try:
                tmas = [TmaLinear(lin, block_n, block_k, warps) for lin in lins]
                got = tmas[0](xs, ln, torch.empty_like(out)).float()
                err = (got - want).abs().max().item()
                report["tma"][key] = (round(time_us(lambda: tmas[next(turn) % copies](xs, ln, out)), 2), round(err, 4))
            except Exception as exc:  # a tile the compiler or TMA refuses
                report["tma"][key] = f"{type(exc).__name__}: {str(exc)[:120]}"
            print(key, report["tma"][key], "rows", report["rows"][f"{k}x{n}"], flush=True)
    best = {}
    for key, value in report["tma"].items():
        shape = key.split()[0]
        if isinstance(value, tuple | list) and value[1] < 0.05 and (shape not in best or value[0] < best[shape][0]):
            best[shape] = (value[0], key)
    report["best tma per shape"] = best
    report["sum rows us"] = round(sum(report["rows"].values()), 2)
    report["sum best tma us"] = round(sum(v[0] for v in best.values()), 2) if len(best) == len(SHAPES) else None
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
