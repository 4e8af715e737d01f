#!/usr/bin/env bash
# A lone piece on a 16-row service against the batch-1 speed, on a GPU: a random-weight NotaGen-X
# checkpoint on the fast CUDA path (fp16). `generate --rows 1` (one row), then `serve --rows 16`
# with one client asking for one piece at a time, so every piece runs alone in its engine.
# Env: OUT (default out/lone-piece), PIECES (4), MAXP (max patches per piece, 200), PORT (8766),
# NG (notagen-trt), CKPT. Results: OUT/generate.json, OUT/served.json, OUT/summary.json.
set -uo pipefail
OUT=${OUT:-out/lone-piece} PIECES=${PIECES:-4} MAXP=${MAXP:-200} PORT=${PORT:-8766}
NG=${NG:-notagen-trt} CKPT=${CKPT:-/tmp/notagen-x-random.pth}
mkdir -p "$OUT"
[ -f "$CKPT" ] || python3 -c "
import torch, sys
from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
torch.manual_seed(0)
torch.save({'model': NotaGenModel(PRESETS['x']).state_dict()}, sys.argv[1])" "$CKPT"
common=(--model "$CKPT" --backend fast --precision fp16)
# Twice: the first run compiles the Triton kernels (cached on disk for the timed run and the service).
for run in warm timed; do
  rm -rf /tmp/lone-piece-offline
  "$NG" generate "${common[@]}" --rows 1 --num-pieces "$PIECES" --max-patches "$MAXP" --formats abc \
    --out /tmp/lone-piece-offline --json > "$OUT/generate.json" 2> "$OUT/generate.err"
done
"$NG" serve "${common[@]}" --rows 16 --port "$PORT" --log-level warning 2> "$OUT/serve.log" &
server=$!
until python3 -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/readyz').status_code != 200)" 2>/dev/null; do
  kill -0 "$server" 2>/dev/null || break
  sleep 1
done
"$NG" loadtest --url "http://127.0.0.1:$PORT" --clients 1 --requests 1 --max-patches 4 > /dev/null 2>&1  # warm-up
"$NG" loadtest --url "http://127.0.0.1:$PORT" --clients 1 --requests "$PIECES" --max-patches "$MAXP" \
  --json > "$OUT/served.json" 2> "$OUT/loadtest.err"
kill "$server"; wait "$server" 2>/dev/null
python3 - "$OUT" "$PIECES" <<'PY'
import json, statistics, sys
from pathlib import Path
out, pieces = Path(sys.argv[1]), int(sys.argv[2])
one_row = statistics.median(p["ms_per_patch"] for p in json.loads((out / "generate.json").read_text())["pieces"])
served = json.loads((out / "served.json").read_text())
lone = 1000 * served["end_to_end_seconds"]["p50"] / (served["patches"] / max(1, served["ok"]))
summary = {"generate_rows1_ms_per_patch_median": round(one_row, 3),
           "served_rows16_lone_ms_per_patch_median": round(lone, 3),
           "lone_vs_one_row": round(lone / one_row, 3), "pieces": pieces, "ok": served["ok"]}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
PY
