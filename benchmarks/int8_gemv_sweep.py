"""Tile sizes of the int8 weight-only kernel against fp16 cuBLAS on NotaGen-X's matrix shapes
(one activation row): ``python benchmarks/int8_gemv_sweep.py``."""

from __future__ import annotations

import itertools

import torch

from notagen_trt.export.int8_gemv import Int8Linear

SHAPES = [(1280, 3840), (1280, 1280), (1280, 5120), (5120, 1280), (1280, 128)]


def time_us(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 5120, device="cuda", dtype=torch.float16)
    total = {}
    for k, n in SHAPES:
        w = torch.randn(k, n, device="cuda", dtype=torch.float16) * 0.02
        b = torch.zeros(n, device="cuda", dtype=torch.float16)
        xs = x[:, :k]
        ref = time_us(lambda: torch.addmm(b, xs, w))
        total.setdefault("fp16 cuBLAS", 0.0)
        total["fp16 cuBLAS"] += ref
        line = [f"{k}x{n}: fp16 {ref:.1f} us"]
        for bn, bk, warps in itertools.product((16, 32, 64), (64, 128, 256), (2, 4, 8)):
            if n % bn or k % bk:
                continue
            Int8Linear.BLOCK_N, Int8Linear.BLOCK_K, Int8Linear.WARPS = bn, bk, warps
            lin = Int8Linear(w.float().cpu(), b.float().cpu()).to("cuda")
            t = time_us(lambda: lin(xs))
            key = f"int8 n{bn} k{bk} w{warps}"
            total[key] = total.get(key, 0.0) + t
        print(" | ".join(line), flush=True)
    for key, t in sorted(total.items(), key=lambda kv: kv[1])[:12]:
        print(f"{key}: {t:.1f} us over the {len(SHAPES)} shapes")


if __name__ == "__main__":
    main()
