"""Two or more model directories side by side on ONNX Runtime's CPU, through the production engine
(one row, the same piece continuing a context, as `generate` runs it), in interleaved rounds so
that a machine's drift falls on all of them alike. Prints each directory's median step per round.

``python benchmarks/compare_models.py DIR_A DIR_B [--rounds 8] [--patches 40] [--context 256]``"""

from __future__ import annotations

import argparse
import json
import statistics

from notagen_trt.bench import context_text
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.piece import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    text = context_text(args.context)
    engines = {m: Engine(OrtBackend(m, "cpu", threads=1).executor(1)) for m in args.models}
    medians: dict[str, list[float]] = {m: [] for m in args.models}
    for round_ in range(args.rounds):
        for model, engine in engines.items():
            steps: list[float] = []
            engine.on_step[:] = [lambda seconds, rows: steps.append(seconds)]
            engine.generate([PieceRequest(None, GenerationConfig(seed=round_, max_patches=args.patches), text)])
            medians[model].append(round(1000 * statistics.median(steps[5:]), 3))  # past the warm-up
    first = medians[args.models[0]]
    for model, ms in medians.items():
        ratios = [b / a for a, b in zip(first, ms)]
        print(json.dumps({"model": model, "median_step_ms_per_round": ms,
                          "median_ratio_to_first": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
