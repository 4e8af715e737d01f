#!/usr/bin/env bash
# The serving issue's GPU figures, on a machine with one or more GPUs: a random-weight NotaGen-X
# checkpoint on the fast CUDA path (fp16, 16 rows per engine); offline `generate` of N pieces,
# then the same N pieces streamed to C concurrent clients by one GPU's engine (--gpus 0) and by
# one engine per GPU (--gpus all). Env: OUT (default out/serve-gpu), CLIENTS (64), PIECES (128),
# MAXP (max patches per piece, 200), PORT (8765), NG (notagen-trt), GPUS ("0 all"), OFFLINE_RUNS
# ("warm timed"; empty to skip the offline runs). Results: OUT/*.json.
set -uo pipefail
source "$(dirname "$0")/serve_up.sh"
source "$(dirname "$0")/x_checkpoint.sh"
OUT=${OUT:-out/serve-gpu} CLIENTS=${CLIENTS:-64} PIECES=${PIECES:-128} MAXP=${MAXP:-200} PORT=${PORT:-8765}
NG=${NG:-notagen-trt} CKPT=${CKPT:-/tmp/notagen-x-random.pth} BACKEND=${BACKEND:-fast} GPUS=${GPUS:-0 all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null
x_checkpoint "$CKPT"
common=(--model "$CKPT" --backend "$BACKEND" --rows 16)
[ "$BACKEND" = fast ] && common+=(--precision fp16)
# Twice: the first run compiles the Triton kernels (cached on disk for the second and the service).
for run in ${OFFLINE_RUNS-warm timed}; do
  rm -rf /tmp/serve-gpu-offline
  "$NG" generate "${common[@]}" --num-pieces "$PIECES" --max-patches "$MAXP" --formats abc --out /tmp/serve-gpu-offline \
    --json > "$OUT/offline.json" 2> "$OUT/offline.err"
done
for gpus in $GPUS; do
  start_service "$OUT/serve-$gpus.log" "${common[@]}" --gpus "$gpus"
  # one request first: each engine captures its CUDA graph on its first patch
  "$NG" loadtest --url "http://127.0.0.1:$PORT" --clients 2 --requests 2 --max-patches 4 > /dev/null 2>&1
  "$NG" loadtest --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --requests "$PIECES" --max-patches "$MAXP" --stream \
    --json > "$OUT/served-$gpus.json" 2> "$OUT/loadtest-$gpus.err"
  kill "$server"; wait "$server" 2>/dev/null
done
python3 - "$OUT" "$PIECES" "$GPUS" <<'PY'
import json, sys
out, pieces = sys.argv[1], int(sys.argv[2])
try:
    rate = 60 * pieces / json.load(open(f"{out}/offline.json"))["seconds"]
except OSError:  # offline runs skipped
    rate = None
summary = {"offline_pieces_per_minute": rate and round(rate, 1)}
for gpus in sys.argv[3].split():
    try:
        s = json.load(open(f"{out}/served-{gpus}.json"))
    except (OSError, ValueError) as exc:
        summary[gpus] = f"no result: {exc}"
        continue
    summary[gpus] = {k: s.get(k) for k in ("pieces_per_minute", "errors", "first_bar_seconds", "end_to_end_seconds")}
    summary[gpus]["vs_offline"] = rate and round(s["pieces_per_minute"] / rate, 3)
if isinstance(summary.get("0"), dict) and isinstance(summary.get("all"), dict):
    summary["all_vs_one_gpu"] = round(summary["all"]["pieces_per_minute"] / summary["0"]["pieces_per_minute"], 3)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
