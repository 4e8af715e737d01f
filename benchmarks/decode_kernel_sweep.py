"""The fused decode kernels (fastpath/decode_kernels.py) against cuBLAS on NotaGen-X's matrix
shapes, one activation row (a sweep of _gemv's tiles) and 16 rows (of _rows' tiles), fp16 and
int8 weights;
and decode attention against PyTorch's (``--attention-only``). Times are per call inside a CUDA
graph of back-to-back calls (launch gaps included, as in the fast path), cycling over weight
copies larger than the L2 cache, with the LayerNorm prologue where the fast path has one (qkv,
fc, lm_head). ``python benchmarks/decode_kernel_sweep.py``."""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from notagen_trt.fastpath import decode_kernels
from notagen_trt.fastpath.decode_kernels import PackedLinear, RowsWorkspace, decode_attention

# (in, out) of one layer's qkv, proj, fc, fc2, and the char lm_head.
SHAPES = [(1280, 3840), (1280, 1280), (1280, 5120), (5120, 1280), (1280, 128)]


def time_us(fn, reps: int = 100) -> float:
    for _ in range(3):
        fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def sampler_sweep() -> dict:
    """sample_into per call (published settings, and top-k off: 128 kept ranks), with the next
    character's embedding, by warps a program."""
    from notagen_trt.fastpath import sampler_kernel

    report = {}
    for rows, top_k in ((1, 9), (16, 9), (16, 0)):
        logits = torch.randn(rows, 128, device="cuda") * 4
        u = torch.rand(rows, device="cuda", dtype=torch.float64)
        tokens = torch.zeros(rows, dtype=torch.long, device="cuda")
        mask = torch.zeros(rows, dtype=torch.bool, device="cuda")
        params = (torch.full((rows,), top_k, device="cuda"), torch.full((rows,), 0.9, dtype=torch.float64, device="cuda"),
                  torch.full((rows,), 1 / 1.2, dtype=torch.float64, device="cuda"))
        embed = (torch.randn(128, 1280, device="cuda").half(), torch.randn(1280, device="cuda").half(),
                 torch.zeros(rows, 1280, device="cuda"))
        timings = {}
        for warps in (1, 2, 4, 16):
            sampler_kernel.WARPS = warps
            timings[f"{warps} warps us"] = round(time_us(
                lambda: sampler_kernel.sample_into(logits, u, tokens, mask, tokens, params, embed)), 2)
        report[f"rows={rows} top_k={top_k}"] = timings
        print(json.dumps({f"rows={rows} top_k={top_k}": timings}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attention-only", action="store_true")
    parser.add_argument("--rows-only", action="store_true",
                        help="only 16 rows, over a wider set of _rows tiles (inputs whole in one program too)")
    parser.add_argument("--fp16-only", action="store_true")
    parser.add_argument("--sampler-only", action="store_true",
                        help="only the sampler kernel (one draw for 1 and 16 rows), by warps a row")
    args = parser.parse_args()
    if args.sampler_only:
        print(json.dumps(sampler_sweep(), indent=1))
        return
    torch.manual_seed(0)
    report = {"gpu": torch.cuda.get_device_name(), "linear": {}, "attention": {}}
    for rows in () if args.attention_only else (16,) if args.rows_only else (1, 16):
        x = torch.randn(rows, 5120, device="cuda", dtype=torch.float16)
        totals: dict[str, float] = {}
        shapes: dict[str, list[float]] = {}  # per shape, in SHAPES order
        for k, n in SHAPES:
            # Enough copies of the weights that every call reads them from memory, not the 50 MB L2.
            copies = max(2, 256 * 2**20 // (2 * k * n))
            ws = [torch.randn(k, n, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
            b = torch.zeros(n, device="cuda", dtype=torch.float16)
            xs = x[:, :k].contiguous()
            ln = torch.nn.LayerNorm(k, device="cuda", dtype=torch.float16) if n != 1280 else None  # qkv, fc, lm_head
            turn = iter(range(10**9))
            t = time_us(lambda: torch.addmm(b, xs, ws[next(turn) % copies]))
            totals["cublas fp16"] = totals.get("cublas fp16", 0.0) + t
            shapes.setdefault("cublas fp16", []).append(round(t, 2))
            if rows > 1:  # what the fast path ran before _rows: PyTorch's LayerNorm, then cuBLAS
                t = time_us(lambda: torch.addmm(b, ln(xs) if ln is not None else xs, ws[next(turn) % copies]))
                totals["torch LN + cublas"] = totals.get("torch LN + cublas", 0.0) + t
                shapes.setdefault("torch LN + cublas", []).append(round(t, 2))
            for int8 in (False,) if args.fp16_only else (False, True):
                lins = [PackedLinear(w, b, int8=int8) for w in ws]
                # One row: _gemv's tiles (weight elements a program, warps). 16 rows: _rows' tiles
                # (BLOCK_N, largest BLOCK_K, warps).
                widths, depths = ((16, 32, 64, 128), (256, 512, 1024, 2048)) if args.rows_only else \
                    ((32, 64, 128), (256, 512, 1024))
                tiles = itertools.product((8192, 16384, 32768), (4, 8)) if rows == 1 else [
                    t for t in itertools.product(widths, depths, (4, 8)) if t[0] * t[1] <= 65536]
                for tile in tiles:
                    if rows == 1:
                        PackedLinear.GEMV_ELEMENTS, PackedLinear.GEMV_WARPS = tile
                    else:
                        PackedLinear.ROWS_TILES = PackedLinear.ROWS_TILES_LONG = tile
                        for lin in lins:  # sized for the tile, before any capture
                            lin.workspace = RowsWorkspace([lin], "cuda")
                    key = f"{'int8' if int8 else 'fp16'} {tile}"
                    t = time_us(lambda: lins[next(turn) % copies](xs, ln=ln))
                    totals[key] = totals.get(key, 0.0) + t
                    shapes.setdefault(key, []).append(round(t, 2))
        best = sorted(totals.items(), key=lambda kv: kv[1])
        report["linear"][f"rows={rows}"] = {**{k: (round(totals[k], 2), shapes[k]) for k in
                                               ("cublas fp16", "torch LN + cublas") if k in totals},
                                            "best": [(k, round(v, 2), shapes[k]) for k, v in best[:6]],
                                            "best int8": [(k, round(v, 2), shapes[k])
                                                          for k, v in best if "int8" in k][:3],
                                            "best per shape": [min((v[i], k) for k, v in shapes.items() if kind in k)
                                                               for kind in ("fp16 (", "int8 (")
                                                               if any(kind in k for k in shapes)
                                                               for i in range(len(SHAPES))]}
        print(json.dumps(report["linear"][f"rows={rows}"]), flush=True)
    for rows, capacity, pos in () if args.rows_only else ((1, 16, 15), (16, 16, 15), (1, 1024, 255), (16, 1024, 255)):
        cache = torch.randn(rows, 2, 20, capacity, 64, device="cuda", dtype=torch.float16)
        qkv = torch.randn(rows, 3840, device="cuda", dtype=torch.float16)
        out = torch.empty(rows, 1280, device="cuda", dtype=torch.float16)
        position = torch.full((rows,), pos, device="cuda")

        def torch_attention():
            q, k, v = qkv.view(rows, 3, 20, 1, 64).unbind(1)
            cache[:, 0, :, pos] = k[:, :, 0]
            cache[:, 1, :, pos] = v[:, :, 0]
            F.scaled_dot_product_attention(q, cache[:, 0, :, : pos + 1], cache[:, 1, :, : pos + 1])

        timings = {"torch us": round(time_us(torch_attention), 2)}
        for warps in (1, 2, 4, 8):
            decode_kernels.ATTENTION_WARPS[capacity <= 32] = warps
            timings[f"fused {warps} warps us"] = round(time_us(lambda: decode_attention(qkv, cache, out, position)), 2)
        report["attention"][f"rows={rows} keys={pos + 1}"] = timings
        print(json.dumps({f"rows={rows} keys={pos + 1}": timings}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
