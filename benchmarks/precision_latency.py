"""ONNX Runtime CPU per-patch latency of every precision variant vs fp32, side by side, on the demo
model and on a random-weight NotaGen-small: ``python benchmarks/precision_latency.py``.

One generated patch = 16 sampled characters and one patch-decoder step on a cache of
``--context`` patches, through the runtime's ORT backend exactly as `generate` drives it
(``sample_patch``; a patch is always 16 characters, so every variant does the same work). The median over ``--patches``
patches is reported per variant, with its ratio to fp32; variants take turns patch by patch so
that load from other processes falls on all of them alike. Variants of NotaGen-small are
calibrated on a few corpus pieces: random weights make their accuracy meaningless, only their
speed is measured. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from notagen_trt.config import PATCH_SIZE, PRESETS
from notagen_trt.demo import demo_model_dir
from notagen_trt.engines.quantize import PRECISIONS, quantize
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.sampling import SamplingParams


class PatchTimer:
    """One variant's session, primed with ``context`` patches; ``step()`` generates and times one patch."""

    def __init__(self, model_dir: Path, context: int, threads: int, seed: int = 0) -> None:
        self.session = OrtBackend(model_dir, "cpu", threads).new_session()
        prompt = np.random.default_rng(seed).integers(3, 128, size=(context, PATCH_SIZE))
        self.hidden = self.session.extend(prompt)
        self.rng = np.random.default_rng(seed)
        self.times: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        out = self.session.sample_patch(self.hidden, [], self.rng.random(PATCH_SIZE), SamplingParams())
        self.hidden = self.session.extend(np.array([out]))
        self.times.append(time.perf_counter() - start)

    def median_ms(self) -> float:
        return 1000 * statistics.median(self.times[2:])  # the first two warm up


def model_dirs(size: str, work: Path) -> Path:
    if size == "demo":
        return demo_model_dir()
    import torch

    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    out = work / size
    if not (out / "manifest.json").is_file():
        torch.manual_seed(0)
        print(f"exporting a random-weight NotaGen-{size} to {out}", file=sys.stderr)
        export_onnx(NotaGenModel(PRESETS[size]), out, parity=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["demo", "small"], help="demo and/or preset names")
    parser.add_argument("--context", type=int, default=64, help="patches already in the cache")
    parser.add_argument("--patches", type=int, default=16, help="timed patches per variant")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--calib-pieces", type=int, default=8)
    parser.add_argument("--work", help="folder for exported / quantized models (default: a temp folder)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    work_ctx = tempfile.TemporaryDirectory(prefix="precision-latency-") if not args.work else None
    work = Path(args.work or work_ctx.name)
    rows = []
    for size in args.sizes:
        fp32 = model_dirs(size, work)
        dirs = {"fp32": fp32}
        for precision in PRECISIONS:
            dirs[precision] = work / f"{size}-{precision}"
            if not (dirs[precision] / "manifest.json").is_file():
                print(f"quantizing {size} -> {precision}", file=sys.stderr)
                quantize(fp32, precision, dirs[precision], calib_pieces=args.calib_pieces)
        # Round robin, one patch per variant per round: load from other processes hits all alike.
        timers = {p: PatchTimer(d, args.context, args.threads) for p, d in dirs.items()}
        for _ in range(args.patches + 2):
            for timer in timers.values():
                timer.step()
        base = timers["fp32"].median_ms()
        for precision, d in dirs.items():
            ms = timers[precision].median_ms()
            size_mb = sum(f.stat().st_size for f in d.glob("*.onnx*")) / 2**20
            rows.append({"model": size, "precision": precision, "ms_per_patch": round(ms, 2),
                         "vs_fp32": round(ms / base, 2), "onnx_mb": round(size_mb, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"rows": rows, "context": args.context, "patches": args.patches, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    print("| model | precision | median ms/patch | vs fp32 | ONNX MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['ms_per_patch']} | {r['vs_fp32']}x | {r['onnx_mb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if work_ctx:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
