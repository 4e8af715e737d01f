#!/usr/bin/env bash
# On a GPU machine (the engine issue's figures): `generate --backend auto` on the demo model
# (fp32 against the cached reference on the same GPU; fp16 / int8-wo pieces kept for a parse
# check), the GPU tests, and `bench` of NotaGen-X through the production engine with an
# in-flight row. Writes everything under $OUT (default: out/gpu-check).
# `rows`: the demo model's pieces (seeds 0..7) on the fast path with one row against eight, each
# precision (one row runs the GEMV kernels, more rows the tensor-core ones).
# Usage: gpu_engine_check.sh generate|tests|bench|rows (each fits in ten minutes on an H200).
set -uo pipefail
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
if [ "$1" = generate ]; then
for p in fp32 fp16 int8-wo; do
  notagen-trt generate --backend auto --precision "$p" --seed 0 --num-pieces 8 --out "$OUT/generate-$p" --json \
    > "$OUT/generate-$p.json" 2> "$OUT/generate-$p.err"
done
notagen-trt reference --device cuda --seed 0 --num-pieces 8 --no-check --out "$OUT/reference-cuda" \
  > "$OUT/reference-cuda.jsonl" 2>&1
fi
if [ "$1" = tests ]; then
python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/pytest-gpu.txt" 2>&1
fi
if [ "$1" = bench ]; then
notagen-trt bench --size x --context 256 --patches 30 --backends torch-cached,fast --precisions fp16,int8-wo \
  --batch 1,16 --json "$OUT/bench-x.json" --json-only > "$OUT/bench-x.txt" 2>&1
notagen-trt bench --size x --context 256 --patches 30 --backends fast --precisions fp16 --batch 1,16 \
  --inflight 64 --json "$OUT/bench-x-inflight.json" --json-only \
  > "$OUT/bench-x-inflight.txt" 2>&1
fi
if [ "$1" = rows ]; then
for p in fp32 fp16 int8-wo; do
  for r in 1 8; do
    notagen-trt generate --backend fast --precision "$p" --seed 0 --num-pieces 8 --rows "$r" --formats abc \
      --out "$OUT/rows-$p-$r" --json > "$OUT/rows-$p-$r.json" 2> "$OUT/rows-$p-$r.err"
  done
  same=0
  for f in "$OUT/rows-$p-1"/*.abc; do  # the first line names the backend
    cmp -s <(tail -n +2 "$f") <(tail -n +2 "$OUT/rows-$p-8/$(basename "$f")") && same=$((same + 1))
  done
  echo "$p: $same of 8 pieces equal with one row and with eight" | tee -a "$OUT/rows.txt"
done
fi
echo "done: $1"
