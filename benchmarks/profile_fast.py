"""Where a fast-path patch spends its GPU time: the top kernels of a few eager patches of a
published shape (random weights), by total CUDA time.
``python benchmarks/profile_fast.py --size x [--rows 16]``."""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from notagen_trt.bench import context_text
from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath.executor import FastBackend
from notagen_trt.runtime import codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="x", choices=sorted(PRESETS))
    parser.add_argument("--patches", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1, help="rows sampled together (each with the same context)")
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = FastBackend(NotaGenModel(PRESETS[args.size]), "cuda", "fp16").executor(args.rows, graph=False)
    for row in range(args.rows):
        gen.load(row, codec.encode_generate(context_text(256))[0])
    gen._attempt()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.patches):
            gen._attempt()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    # The kernels of one patch in launch order (names repeat, so order tells which call is which).
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_patch = len(kernels) // args.patches
    print(f"{per_patch} kernels per patch; one patch's, in order (us):")
    for e in kernels[:per_patch]:
        print(f"{e.device_time:8.2f}  {e.name[:90]}")


if __name__ == "__main__":
    main()
