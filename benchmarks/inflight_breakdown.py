"""Where an in-flight step of the fast path goes (NotaGen-X shape, random weights, fp16): the
captured patch graphs alone (CUDA events), the executor's ``sample`` (host packing, one copy each
way, the sync), and whole engine steps with the published rules, at 1 and 16 rows; and the
16-row graph with _rows' tiles chosen per matrix shape (``TILES_BY_SHAPE``, each shape's best
in ``decode_kernel_sweep.py --rows-only``) against the tiles the fast path ships.
``python benchmarks/inflight_breakdown.py [--json out.json]``."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath import decode_kernels
from notagen_trt.fastpath.executor import FastBackend
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig, PieceState


# NotaGen-X's shapes (in, out) -> (BLOCK_N, BLOCK_K, warps): each shape's best _rows tile at 16
# rows, fp16, in the sweep (8% less time over a layer than the one tile shipped then, kernel by kernel).
TILES_BY_SHAPE = {(1280, 3840): (128, 256, 4), (1280, 1280): (64, 512, 8), (1280, 5120): (128, 256, 8),
                  (5120, 1280): (64, 512, 4), (1280, 128): (32, 256, 4)}


def _use_tiles(backend, tiles: dict) -> None:
    """Each layer on its shape's tile in ``tiles`` (else the shipped tiles), with a workspace sized
    for them (a smaller one lets _rows write past it)."""
    for packed in backend.packed.values():
        packed.__dict__.pop("ROWS_TILES", None)  # back to the class's tiles
        packed.__dict__.pop("ROWS_TILES_LONG", None)
        if (packed.k, packed.n) in tiles:
            packed.ROWS_TILES = packed.ROWS_TILES_LONG = tiles[(packed.k, packed.n)]
    _new_workspace(backend)


def _new_workspace(backend) -> None:
    workspace = decode_kernels.RowsWorkspace(list(backend.packed.values()), "cuda")
    for packed in backend.packed.values():
        packed.workspace = workspace


def graph_ms(executor, reps: int = 50) -> float:
    """Median of ``reps`` replays of the patch's graphs (characters, patch step), each timed with CUDA events."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for graph in executor._graphs:
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sample_ms(executor, rows: int, reps: int = 50) -> float:
    """Median wall time of ``sample`` for every row (the host's packing, copies and sync)."""
    states = [PieceState(None, GenerationConfig(seed=r), 1024) for r in range(rows)]
    times = []
    for _ in range(reps):
        requests = {r: s.request() for r, s in enumerate(states)}
        t = time.perf_counter()
        executor.sample(requests)
        executor.accept([])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def inflight(backend, rows: int, pieces: int) -> dict:
    rng = np.random.default_rng(1)
    requests = [PieceRequest(None, GenerationConfig(seed=i, max_patches=int(n)))
                for i, n in enumerate(rng.integers(100, 401, pieces))]
    with Engine(backend.executor(rows)) as engine:
        engine.generate([PieceRequest(None, GenerationConfig(seed=10**6, max_patches=3))])
        inner: list[float] = []
        sample = engine.executor.sample

        def timed(reqs):
            t = time.perf_counter()
            out = sample(reqs)
            inner.append(time.perf_counter() - t)
            return out

        engine.executor.sample = timed
        steps: list[tuple[float, int]] = []
        engine.on_step.append(lambda s, r, lane_rows: steps.append((s, r)))
        start = time.perf_counter()
        engine.generate(requests)
        wall = time.perf_counter() - start
    step_s = [s for s, _ in steps]
    return {"rows": rows, "seconds": round(wall, 3), "steps": len(steps),
            "row_use": round(sum(r for _, r in steps) / rows / len(steps), 3),
            "step_ms_median": round(1000 * statistics.median(step_s), 3),
            "sample_ms_median": round(1000 * statistics.median(inner), 3),
            "rules_ms_median": round(1000 * statistics.median(s - i for s, i in zip(step_s, inner)), 3),
            "outside_steps_s": round(wall - sum(step_s), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pieces", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    backend = FastBackend(NotaGenModel(PRESETS["x"]).eval(), "cuda", "fp16")
    report: dict = {"gpu": torch.cuda.get_device_name(), "tiles": {}}
    for rows in (1, 16):
        ex = backend.executor(rows)
        report[f"rows={rows}"] = {"graph_ms": round(graph_ms(ex), 3), "sample_ms": round(sample_ms(ex, rows), 3)}
        print(json.dumps(report[f"rows={rows}"]), flush=True)
    for name, tiles in (("shipped", {}), ("per shape", TILES_BY_SHAPE)):
        _use_tiles(backend, tiles)
        report["tiles"][name] = round(graph_ms(backend.executor(16)), 3)
        print(name, report["tiles"][name], flush=True)
    _use_tiles(backend, {})  # in flight on the shipped tiles, as the fast path runs
    for rows in (1, 16):
        report[f"inflight rows={rows}"] = inflight(backend, rows, args.pieces)
        print(json.dumps(report[f"inflight rows={rows}"]), flush=True)
    one, many = report["inflight rows=1"], report["inflight rows=16"]
    report["inflight_vs_one_row"] = round(one["seconds"] / many["seconds"], 2)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
