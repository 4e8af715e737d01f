#!/usr/bin/env bash
# The engine-ready graphs on ONNX Runtime CUDA (issue #15), on a machine with an NVIDIA GPU and
# onnxruntime-gpu: (1) the demo model's fp32 pieces for seeds 0..7 on 1 and 4 rows against the
# cached PyTorch reference; (2) the NotaGen-X shape (random weights) exported with
# `--layout engine`; (3) `notagen-trt bench` on it: ONNX Runtime CUDA fp32 / fp16 (one CUDA graph
# per patch) at 1 and 16 rows beside the published algorithm and the fast CUDA path, one run;
# (4) where a patch of PROFILE_MODEL goes on ONNX Runtime CUDA, by op type (benchmarks/profile_ort.py;
# benchmarks/quantize_x.sh writes NotaGen-X's fp16 variant).
#
# Usage: benchmarks/engine_graphs_gpu.sh [demo] [export] [bench] [profile]   (default: the first three)
# Env: OUT (results, default out/engine-graphs-gpu), WORK (models: gigabytes, default
#   /var/tmp/engine-graphs), X (the NotaGen-X directory bench times, default WORK/x), PATCHES (timed
#   patches per row, default 20), PROFILE_MODEL, PROFILE_PATCHES (default 6).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/engine-graphs-gpu}
WORK=${WORK:-/var/tmp/engine-graphs}
PATCHES=${PATCHES:-20}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(demo export bench)
mkdir -p "$OUT" "$WORK"
for step in "${STEPS[@]}"; do
  case $step in
    demo)
      python3 - "$WORK/demo" > "$OUT/demo-pieces.json" <<'PY'
import json, sys
from notagen_trt.demo import DEMO_CHECKPOINT
from notagen_trt.export.checkpoint import load_model
from notagen_trt.export.onnx_export import export_onnx
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.piece import GenerationConfig

model = load_model(DEMO_CHECKPOINT)
export_onnx(model, sys.argv[1], checkpoint_path=DEMO_CHECKPOINT, layout="engine", force=True)
requests = [PieceRequest(None, GenerationConfig(seed=s)) for s in range(8)]
reference = [p.text for p in Engine(ReferenceBackend(model, "cached").executor()).generate(requests)]
result = {}
for rows in (1, 4):
    executor = OrtBackend(sys.argv[1], "cuda").executor(rows)
    pieces = [p.text for p in Engine(executor).generate(requests)]
    result[f"rows_{rows}"] = {"executor": executor.name, "equal_to_reference": pieces == reference,
                              "equal_seeds": [s for s in range(8) if pieces[s] == reference[s]]}
# The variants load and write whole pieces on CUDA too (their gates are CPU tests).
from notagen_trt.engines.quantize import quantize
for precision in ("fp16", "int8-wo"):
    out = sys.argv[1] + "-" + precision
    quantize(sys.argv[1], precision, out, calib_pieces=4)
    executor = OrtBackend(out, "cuda").executor(4)
    pieces = Engine(executor).generate(requests)
    result[precision] = {"executor": executor.name, "graphs": [f.name for f in executor.files],
                         "complete": sum(p.complete for p in pieces)}
print(json.dumps(result, indent=2))
PY
      cat "$OUT/demo-pieces.json" ;;
    export)
      python3 benchmarks/export_size.py --size x --layout engine --out "$WORK/x" --json "$OUT/export-x.json" \
        > /dev/null
      cat "$OUT/export-x.json" ;;
    bench)
      notagen-trt bench --model "${X:-$WORK/x}" --backends ort-cuda,fast --precisions fp32,fp16 --batch 1,16 \
        --context 256 --patches "$PATCHES" --json "$OUT/bench-x.json" ;;
    profile)
      python3 benchmarks/profile_ort.py --model "${PROFILE_MODEL:?an fp16 engine-ready model directory}" --device cuda --patches "${PROFILE_PATCHES:-6}" \
        | tee "$OUT/profile-x-fp16.txt" ;;
    *) echo "unknown step $step (demo, export, bench, profile)" >&2; exit 2 ;;
  esac
done
