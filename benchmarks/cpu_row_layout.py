"""Rows on a CPU: side by side (one call per core, one thread each: ``OrtBackend(threads=1)``)
against one call for every row on every core (its threads spinning between ops, as AUTO runs
it), for 1, 2 and 4 pieces in flight through a 4-row engine, interleaved in one process; the
median of the per-round ratios (one call / side by side).
What `generate`'s AUTO threads choose between (``OrtBackend.executor``).

``python benchmarks/cpu_row_layout.py --model DIR [--rounds 4] [--patches 30]``"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from notagen_trt.bench import context_text
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.graph_executor import GraphExecutor
from notagen_trt.runtime.onnx_backend import OrtBackend, session_options
from notagen_trt.runtime.piece import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with the engine-ready graphs")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--patches", type=int, default=30)
    args = parser.parse_args()
    backend = OrtBackend(args.model, "cpu", threads=1)
    layouts = {"side_by_side": backend.executor(4),
               "one_call": GraphExecutor(backend.model_dir, backend.manifest, backend.config, 4,
                                         session_options(os.cpu_count() or 1, spin=True), "cpu")}
    text = context_text(256)
    seconds: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for pieces in (1, 2, 4):
            requests = [PieceRequest(None, GenerationConfig(seed=i, max_patches=args.patches), text) for i in range(pieces)]
            for name, executor in layouts.items():
                start = time.perf_counter()
                Engine(executor).generate(requests)
                seconds.setdefault((pieces, name), []).append(time.perf_counter() - start)
    report = {"cores": os.cpu_count(), "hidden_size": backend.config.hidden_size}
    for pieces in (1, 2, 4):
        side, one = seconds[(pieces, "side_by_side")], seconds[(pieces, "one_call")]
        report[f"{pieces}_pieces"] = {"side_by_side_s": round(statistics.median(side), 3),
                                      "one_call_s": round(statistics.median(one), 3),
                                      "one_call_over_side_by_side": round(statistics.median(o / s for o, s in zip(one, side)), 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
