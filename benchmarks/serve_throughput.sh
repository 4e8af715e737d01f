#!/usr/bin/env bash
# Served pieces per minute at C concurrent clients against `generate --rows C` offline, the same
# pieces (unconditional, seeds 0..N-1) on the same backend: the serving issue's figure.
# Usage: benchmarks/serve_throughput.sh   Env: BACKEND (default ort-cpu), MODEL (default: the demo
#   model), CLIENTS (8), PIECES (32), PORT (8765), OUT (default out/serve-throughput).
# Results: OUT/offline.json (generate's summary), OUT/served.json (loadtest's, with --check against
#   a local engine), OUT/summary.json (both rates and their ratio).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-ort-cpu} CLIENTS=${CLIENTS:-8} PIECES=${PIECES:-32} PORT=${PORT:-8765}
OUT=${OUT:-out/serve-throughput}
NG=${NG:-.venv/bin/notagen-trt} PY=${PY:-.venv/bin/python}
MODEL_ARGS=() && [ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
mkdir -p "$OUT" && rm -rf "$OUT/offline"
"$NG" generate "${MODEL_ARGS[@]}" --backend "$BACKEND" --rows "$CLIENTS" --num-pieces "$PIECES" --formats abc \
  --out "$OUT/offline" --json > "$OUT/offline.json"
"$NG" serve "${MODEL_ARGS[@]}" --backend "$BACKEND" --rows "$CLIENTS" --port "$PORT" --log-level warning \
  2> "$OUT/serve.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
until "$PY" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/readyz').status_code != 200)" 2>/dev/null; do
  kill -0 "$server" || { cat "$OUT/serve.log"; exit 1; }
  sleep 0.5
done
"$NG" loadtest "${MODEL_ARGS[@]}" --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --requests "$PIECES" --check \
  --backend "$BACKEND" --json > "$OUT/served.json" || true  # the summary says what failed
"$PY" - "$OUT" "$PIECES" <<'PY'
import json, sys
out, pieces = sys.argv[1], int(sys.argv[2])
offline, served = (json.load(open(f"{out}/{name}.json")) for name in ("offline", "served"))
rate = 60 * pieces / offline["seconds"]
summary = {"offline_pieces_per_minute": round(rate, 2), "served_pieces_per_minute": served["pieces_per_minute"],
           "ratio": round(served["pieces_per_minute"] / rate, 3), "served_errors": served["errors"],
           "check_differ": served["check"]["differ"], "end_to_end_seconds": served["end_to_end_seconds"],
           "backend": offline["backend"]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
