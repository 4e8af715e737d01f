"""On a GPU: the fast path (CUDA graphs, device sampling, batched rows) against the PyTorch
cached reference on the demo model, same seeds: how many pieces are identical, and the time per
patch of each. ``python benchmarks/fast_check.py [--seeds 8] [--dtype fp32|fp16]``."""

from __future__ import annotations

import argparse
import json
import time

import torch

from notagen_trt.demo import DEMO_CHECKPOINT
from notagen_trt.export.checkpoint import load_model
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.fastpath.executor import FastBackend
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    args = parser.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    configs = [GenerationConfig(seed=s) for s in range(args.seeds)]
    reference = ReferenceBackend(load_model(DEMO_CHECKPOINT).to(dtype), "cached", "cuda")
    t0 = time.perf_counter()
    want = [reference.generate(None, c) for c in configs]
    ref_s = time.perf_counter() - t0
    fast = Engine(FastBackend(load_model(DEMO_CHECKPOINT), "cuda", args.dtype).executor(args.seeds))
    fast.generate([PieceRequest(None, GenerationConfig(seed=99, max_patches=4))])  # capture the graph
    t0 = time.perf_counter()
    got = fast.generate(PieceRequest(None, c) for c in configs)
    fast_s = time.perf_counter() - t0
    patches = sum(p.patches for p in want)
    print(json.dumps({
        "gpu": torch.cuda.get_device_name(), "dtype": args.dtype, "seeds": args.seeds,
        "identical_pieces": sum(a.text == b.text for a, b in zip(want, got)),
        "reference_cached_ms_per_patch": round(1000 * ref_s / patches, 3),
        "fast_batched_wall_ms_per_patch": round(1000 * fast_s / sum(p.patches for p in got), 3),
        "patches": [p.patches for p in want],
    }, indent=2))


if __name__ == "__main__":
    main()
