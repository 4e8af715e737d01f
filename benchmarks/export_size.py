"""Export a random-weight model of a published size to ONNX (with the parity check) and report
the time and peak host memory: ``python benchmarks/export_size.py --size x --out DIR``."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.export.onnx_export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(PRESETS), default="x")
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--layout", choices=("growing", "engine"), default="growing",
                        help="engine: also the engine-ready graphs (export --layout engine)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = NotaGenModel(PRESETS[args.size]).eval()
    built = time.perf_counter() - start
    manifest = export_onnx(model, args.out, layout=args.layout)
    result = {
        "size": args.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_model_s": round(built, 1),
        "export_and_parity_s": round(time.perf_counter() - start - built, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "parity": manifest["parity"],
        "external_data": {k: g.get("external_data") for k, g in manifest["graphs"].items()},
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
