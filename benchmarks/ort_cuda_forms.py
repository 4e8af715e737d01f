"""fp16 on ONNX Runtime CUDA, the engine-ready patch graph in two forms: the fixed form (standard
ONNX ops, what TensorRT builds) against the CPU form's fused attention (one MultiHeadAttention a
char-step layer, one GroupQueryAttention a patch-step layer over the cache in place; no
data-dependent shape, so a CUDA graph can hold it), which fp16 variants carry and `generate`
runs on CUDA. Each runs through the production engine with its CUDA graph, ``--rows`` pieces
continuing a context, in interleaved rounds.

``python benchmarks/ort_cuda_forms.py --fp32 X_DIR --fp16 X_FP16_DIR [--rounds 4] [--patches 30]``
(X_FP16_DIR: `quantize --precision fp16` of X_DIR. A variant written before fp16 variants carried
the form gets it converted here, as ``patch_engine.ortform.onnx``, the way `quantize` converts it.)"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from notagen_trt.bench import context_text
from notagen_trt.engines.quantize import _variant_graph
from notagen_trt.manifest import read_manifest
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.graph_executor import GraphExecutor
from notagen_trt.runtime.onnx_backend import OrtBackend, session_options
from notagen_trt.runtime.piece import GenerationConfig

FORM = "patch_engine.ortform.onnx"


def convert(fp32_dir: Path, fp16_dir: Path) -> None:
    """The fp32 CPU form of patch_engine, converted to fp16 into ``fp16_dir``."""
    entry = read_manifest(fp32_dir, expect_kind="onnx")["graphs"]["patch_engine"]
    with tempfile.TemporaryDirectory(dir=fp16_dir) as tmp:
        src = Path(tmp) / "patch_engine.onnx"  # quantize treats a graph by its name
        shutil.copyfile(fp32_dir / entry["cpu_file"], src)
        if entry.get("cpu_external_data"):  # the graph names its weights' file: keep that name
            shutil.copyfile(fp32_dir / entry["cpu_external_data"], Path(tmp) / entry["cpu_external_data"])
        print(json.dumps(_variant_graph(src, fp16_dir / FORM, "fp16", None, "minmax", [], print,
                                        external=bool(entry.get("cpu_external_data")))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--fp16", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--patches", type=int, default=30)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1, help="rows in flight, each a piece continuing the context")
    args = parser.parse_args()
    backend = OrtBackend(args.fp16, args.device, threads=1)
    fused = copy.deepcopy(backend.manifest)
    if not fused["graphs"]["patch_engine"].get("cpu_file"):
        if not (args.fp16 / FORM).is_file():
            convert(args.fp32, args.fp16)
        fused["graphs"]["patch_engine"]["cpu_file"] = FORM
    fixed = copy.deepcopy(backend.manifest)
    for entry in fixed["graphs"].values():
        entry.pop("cpu_file", None)
    forms = {"fixed": fixed, "fused attention": fused}
    engines = {name: Engine(GraphExecutor(args.fp16, manifest, backend.config, args.rows, session_options(1),
                                          args.device))
               for name, manifest in forms.items()}
    text = context_text(args.context)
    report: dict = {name: {"executor": engine.executor.name, "median_step_ms": [], "texts": []}
                    for name, engine in engines.items()}
    for round_ in range(args.rounds):
        for name, engine in engines.items():
            steps: list[float] = []
            engine.on_step[:] = [lambda seconds, rows: steps.append(seconds)]
            pieces = engine.generate([PieceRequest(None, GenerationConfig(seed=round_ * args.rows + i,
                                                                          max_patches=args.patches), text)
                                      for i in range(args.rows)])
            report[name]["median_step_ms"].append(round(1000 * statistics.median(steps[3:]), 3))
            report[name]["texts"] += [p.text for p in pieces]
    fixed = report["fixed"]["texts"]
    for row in report.values():
        row["same_pieces_as_fixed"] = sum(a == b for a, b in zip(row.pop("texts"), fixed))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
