"""A lone piece on a multi-row engine against the one-row engine, interleaved in one process (on
a noisy machine two separate runs can differ more than the effect): the seconds of one piece of
``--patches`` patches at a 256-patch context through ``--rows`` rows and through one, alternately,
and the median of the per-round ratios. The pieces must be the same.

``python benchmarks/lone_row.py --model DIR [--rows 4] [--rounds 8] [--patches 80]`` (ONNX Runtime
on the CPU, generate's threading)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

from notagen_trt.bench import context_text
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.onnx_backend import AUTO, OrtBackend
from notagen_trt.runtime.piece import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with the engine-ready graphs")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--patches", type=int, default=80)
    args = parser.parse_args()
    backend = OrtBackend(args.model, "cpu", threads=AUTO)
    executors = {"one_row": backend.executor(1), f"rows_{args.rows}": backend.executor(args.rows)}
    request = PieceRequest(None, GenerationConfig(seed=0, max_patches=args.patches), context_text(256))
    seconds: dict[str, list[float]] = {name: [] for name in executors}
    texts = set()
    for _ in range(args.rounds):
        for name, executor in executors.items():
            start = time.perf_counter()
            texts.add(Engine(executor).generate([request])[0].text)
            seconds[name].append(time.perf_counter() - start)
    many, one = seconds[f"rows_{args.rows}"], seconds["one_row"]
    print(json.dumps({"seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
                      "median_ratio_to_one_row": round(statistics.median(m / o for m, o in zip(many, one)), 3),
                      "same_piece": len(texts) == 1}))


if __name__ == "__main__":
    main()
