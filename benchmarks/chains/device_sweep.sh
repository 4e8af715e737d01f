#!/usr/bin/env bash
# One lease: time _rows tiles with parts against the shipped one (the first); where one is 2% or
# more faster, ship it in this copy and run the in-flight bench and the GPU tests on it. Into $OUT.
set -u
export PATH="$HOME/.local/bin:$PATH"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -1
timeout 150 python3 benchmarks/chains/time_variants.py 64x512x8p4 128x512x8p4 32x512x4p4 \
  > "$OUT/sweep.txt" 2>&1
tail -14 "$OUT/sweep.txt"
python3 - "$OUT/sweep.txt" <<'PY' | tee "$OUT/chosen.txt"
import json, re, sys, statistics
text = open(sys.argv[1]).read()
data = json.loads(text[text.rindex("\n{\n") + 1:])
specs = sorted({k.split(" rows=16")[0] for k in data if " rows=16 r" in k})
ms = {s: statistics.median([data[f"{s} rows=16 r{r}"] for r in (0, 1) if f"{s} rows=16 r{r}" in data]) for s in specs}
close = all(v["max_diff_vs_base"] < 1e-4 and v["repeat_same_bits"] for k, v in data.items() if k.startswith("check"))
best = min(ms, key=ms.get)
ship = best != "64x512x8p4" and ms[best] <= 0.98 * ms["64x512x8p4"] and close
print(json.dumps({"ms": ms, "best": best, "checks_close": close, "ship": ship}))
if ship:
    n, k, w = best.split("p")[0].split("x")
    path = "fastpath/decode_kernels.py"
    src = open(path).read()
    src = re.sub(r"ROWS_TILES = \([^)]*\)", f"ROWS_TILES = ({n}, {k}, {w})", src, count=1)
    src = re.sub(r"ROWS_PARTS = \d+", f"ROWS_PARTS = {best.split('p')[1]}", src, count=1)
    open(path, "w").write(src)
    open("/tmp/ship", "w").write(best)
PY
[ -f /tmp/ship ] || exit 0
grep -n "ROWS_TILES = \|ROWS_PARTS = " fastpath/decode_kernels.py | tee -a "$OUT/chosen.txt"
timeout 170 notagen-trt bench --size x --context 256 --patches 30 --backends fast --precisions fp16 --batch 1,16 \
  --inflight 64 --json "$OUT/bench-x-inflight.json" > "$OUT/bench.txt" 2>&1
tail -12 "$OUT/bench.txt"
timeout 150 python3 -m pytest -q tests/test_fast.py tests/test_decode_kernels.py tests/test_generate.py -k "not fuzz" \
  > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"
