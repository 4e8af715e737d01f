"""fp16 on ONNX Runtime CUDA, the engine-ready patch graph in two forms: the fixed form (standard
ONNX ops, what TensorRT builds) against the CPU form's fused attention (one MultiHeadAttention a
char-step layer, one GroupQueryAttention a patch-step layer over the cache in place; no
data-dependent shape, so a CUDA graph can hold it), which fp16 variants carry and `generate`
runs on CUDA. Each runs through the production engine with its CUDA graph, ``--rows`` pieces
continuing a context, in interleaved rounds.

``python benchmarks/ort_cuda_forms.py --fp16 X_FP16_DIR [--rounds 4] [--patches 30] [--rows 1]``
(X_FP16_DIR: `quantize --precision fp16` of an engine-layout export; the H200 run of
docs/measurements/ort-cuda-forms-h200 converted the form in this script, before `quantize` did.)"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from compare_models import interleaved  # this folder's

from notagen_trt.errors import NotaGenError
from notagen_trt.runtime.engine import Engine
from notagen_trt.runtime.graph_executor import GraphExecutor
from notagen_trt.runtime.onnx_backend import OrtBackend, session_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp16", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--patches", type=int, default=30)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1, help="rows in flight, each a piece continuing the context")
    args = parser.parse_args()
    backend = OrtBackend(args.fp16, args.device, threads=1)
    if not backend.manifest["graphs"]["patch_engine"].get("cpu_file"):
        raise NotaGenError(f"{args.fp16}: no fused-attention form; quantize --precision fp16 again")
    fixed = copy.deepcopy(backend.manifest)
    for entry in fixed["graphs"].values():
        entry.pop("cpu_file", None)
    forms = {"fixed": fixed, "fused attention": backend.manifest}
    engines = {name: Engine(GraphExecutor(args.fp16, manifest, backend.config, args.rows, session_options(1),
                                          args.device))
               for name, manifest in forms.items()}
    report = interleaved(engines, args.rounds, args.patches, args.context, args.rows, warmup=3)
    fixed_texts = report["fixed"]["texts"]
    for name, row in report.items():
        row["executor"] = engines[name].executor.name
        row["same_pieces_as_fixed"] = sum(a == b for a, b in zip(row.pop("texts"), fixed_texts))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
