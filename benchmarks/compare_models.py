"""Two or more model directories side by side on ONNX Runtime's CPU, through the production engine
(one row, the same piece continuing a context, as `generate` runs it), in interleaved rounds so
that a machine's drift falls on all of them alike. Prints each directory's median step per round.

``python benchmarks/compare_models.py DIR_A [DIR_B ...] [--threads 1[,2]] [--rounds 8] [--patches 40] [--context 256]``

``--threads``: ONNX Runtime intra-op threads per call; each directory runs at each count given."""

from __future__ import annotations

import argparse
import json
import statistics

from notagen_trt.bench import context_text
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.piece import GenerationConfig


def interleaved(engines: dict[str, Engine], rounds: int, patches: int, context: int, rows: int = 1,
                warmup: int = 5) -> dict[str, dict[str, list]]:
    """Per engine, each round's median step (ms, past ``warmup`` steps) and the pieces' texts:
    ``rows`` pieces a round continuing a context of ``context`` patches, engines in turn."""
    text = context_text(context)
    out: dict[str, dict[str, list]] = {name: {"median_step_ms": [], "texts": []} for name in engines}
    for round_ in range(rounds):
        for name, engine in engines.items():
            steps: list[float] = []
            engine.on_step[:] = [lambda seconds, stepped, lane_rows: steps.append(seconds)]
            pieces = engine.generate([PieceRequest(None, GenerationConfig(seed=round_ * rows + i, max_patches=patches),
                                                   text) for i in range(rows)])
            out[name]["median_step_ms"].append(round(1000 * statistics.median(steps[warmup:]), 3))
            out[name]["texts"] += [p.text for p in pieces]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--threads", default="1", help="comma list of intra-op threads per call (default 1)")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    engines = {f"{m} threads={t}": Engine(OrtBackend(m, "cpu", threads=t).executor(1)) for m in args.models for t in counts}
    medians = {m: r["median_step_ms"] for m, r in interleaved(engines, args.rounds, args.patches, args.context).items()}
    first = next(iter(medians.values()))
    for model, ms in medians.items():
        ratios = [b / a for a, b in zip(first, ms)]
        print(json.dumps({"model": model, "median_step_ms_per_round": ms,
                          "median_ratio_to_first": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
