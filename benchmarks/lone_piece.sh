#!/usr/bin/env bash
# What a piece costs on a service at low load, against one row: `generate --rows 1` (the batch-1
# speed), then `serve --rows ROWS` with C clients each asking for one piece at a time (C = 1: every
# piece alone in its engine; C = 2: two pieces in flight). Defaults: a GPU, a random-weight
# NotaGen-X checkpoint on the fast CUDA path in fp16, 16 rows. On a CPU, e.g.
#   MODEL=DIR BACKEND=ort-cpu PRECISION= ROWS=4 CLIENTS="1 2" bash benchmarks/lone_piece.sh
# Env: OUT (default out/lone-piece), MODEL, BACKEND (fast), PRECISION (fp16; empty: none), ROWS
# (16), CLIENTS ("1"), PIECES per run (4), MAXP (max patches per piece, 200), PORT (8766), NG
# (notagen-trt). Results: OUT/generate.json, OUT/served-C.json, OUT/summary.json.
set -uo pipefail
source "$(dirname "$0")/serve_up.sh"
source "$(dirname "$0")/x_checkpoint.sh"
OUT=${OUT:-out/lone-piece} PIECES=${PIECES:-4} MAXP=${MAXP:-200} PORT=${PORT:-8766} NG=${NG:-notagen-trt}
BACKEND=${BACKEND:-fast} PRECISION=${PRECISION-fp16} ROWS=${ROWS:-16} CLIENTS=${CLIENTS:-1}
MODEL=${MODEL:-/tmp/notagen-x-random.pth}
mkdir -p "$OUT"
x_checkpoint "$MODEL"
common=(--model "$MODEL" --backend "$BACKEND")
[ -n "$PRECISION" ] && common+=(--precision "$PRECISION")
# Twice: the first run compiles the Triton kernels (cached on disk for the timed run and the service).
for run in warm timed; do
  rm -rf /tmp/lone-piece-offline
  "$NG" generate "${common[@]}" --rows 1 --num-pieces "$PIECES" --max-patches "$MAXP" --formats abc \
    --out /tmp/lone-piece-offline --json > "$OUT/generate.json" 2> "$OUT/generate.err"
done
start_service "$OUT/serve.log" "${common[@]}" --rows "$ROWS"
"$NG" loadtest --url "http://127.0.0.1:$PORT" --clients 1 --requests 1 --max-patches 4 > /dev/null 2>&1  # warm-up
for c in $CLIENTS; do
  "$NG" loadtest --url "http://127.0.0.1:$PORT" --clients "$c" --requests $((PIECES * c)) --max-patches "$MAXP" \
    --json > "$OUT/served-$c.json" 2> "$OUT/loadtest-$c.err"
done
kill "$server"; wait "$server" 2>/dev/null
python3 - "$OUT" $CLIENTS <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
one_row = statistics.median(p["ms_per_patch"] for p in json.loads((out / "generate.json").read_text())["pieces"])
summary = {"generate_rows1_ms_per_patch_median": round(one_row, 3)}
for c in sys.argv[2:]:
    served = json.loads((out / f"served-{c}.json").read_text())
    ms = 1000 * served["end_to_end_seconds"]["p50"] / (served["patches"] / max(1, served["ok"]))
    summary[f"served_{c}_clients"] = {"ms_per_patch_of_a_piece_p50": round(ms, 3), "vs_one_row": round(ms / one_row, 3),
                                      "pieces_per_minute": served["pieces_per_minute"], "ok": served["ok"]}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
PY
