#!/usr/bin/env bash
# NotaGen-X through the precision pipeline on a big host (issue #15): export the X shape with
# random weights (2.06 GB fp32, stored as external data), `quantize` it to fp16 and int8-wo, and
# `build --flavor rtx` the fp16 variant, recording each step's seconds and peak RSS.
#
# Usage: benchmarks/quantize_x.sh [STEP...]   STEP: export fp16 int8-wo int8 build (default:
#   export fp16 int8-wo build; steps run in the order given, later ones reuse earlier models).
# Env: OUT (results, default out/quantize-x), WORK (models and plans, default out/quantize-x-work:
#   gigabytes, kept out of OUT), SIZE (x, large, medium, small: random weights via
#   benchmarks/export_size.py; demo: the shipped demo model exported with --external-data, a
#   seconds-long check of this script), LAYOUT (engine, the default: the engine-ready graphs and
#   their CPU form too; growing: the step graphs only), CALIB_PIECES (default 32, the CLI's), COMPUTE_CAPABILITY
#   (build targets, e.g. 8.9; default the CLI's), PYTHON (default .venv/bin/python, else python3).
# Results: OUT/steps.jsonl (one line per step: seconds, peak RSS, files written), OUT/<step>.log,
#   OUT/host.json, OUT/summary.json. /usr/bin/time may be missing, so each step runs in-process
#   under a small Python wrapper that reads ru_maxrss.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quantize-x}
WORK=${WORK:-out/quantize-x-work}
SIZE=${SIZE:-x}
CALIB_PIECES=${CALIB_PIECES:-32}
LAYOUT=${LAYOUT:-engine}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(export fp16 int8-wo build)
mkdir -p "$OUT" "$WORK"
FP32=$WORK/fp32 PLANS=$WORK/plans-rtx-fp16

# timed LABEL DIR ARGV...: run `notagen-trt ARGV` (or, after --script, a Python file) in this
# process; append {step, rc, seconds, peak_rss_gb, files in DIR} to steps.jsonl; exit with its rc.
TIMED='
import json, os, resource, runpy, sys, time
label, directory, *argv = sys.argv[1:]
start = time.perf_counter()
if argv[0] == "--script":
    sys.argv = argv[1:]
    try:
        runpy.run_path(argv[1], run_name="__main__")
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
else:
    from notagen_trt.cli import main
    rc = main(argv)
seconds = time.perf_counter() - start
peak_kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
files = {e.name: e.stat().st_size for e in os.scandir(directory) if e.is_file()} if os.path.isdir(directory) else {}
record = {"step": label, "argv": argv, "rc": rc, "seconds": round(seconds, 1),
          "peak_rss_gb": round(peak_kb / 2**20, 2), "files": files, "total_gb": round(sum(files.values()) / 1e9, 3)}
with open(os.path.join(os.environ["OUT"], "steps.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
print(json.dumps({k: v for k, v in record.items() if k != "files"}), file=sys.__stderr__)
sys.exit(rc)
'
timed() { OUT=$OUT "$PYTHON" -c "$TIMED" "$@" > "$OUT/$1.log" 2>&1 || { tail -n 5 "$OUT/$1.log" >&2; exit 1; }; tail -n 1 "$OUT/$1.log"; }

OUT=$OUT SIZE=$SIZE LAYOUT=$LAYOUT "$PYTHON" - > "$OUT/host.json" <<'EOF'
import importlib, json, os, platform, subprocess
def version(name):
    try:
        return getattr(importlib.import_module(name), "__version__", "?")
    except ImportError:
        return None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
mem = next((int(l.split()[1]) / 2**20 for l in open("/proc/meminfo") if l.startswith("MemTotal")), None)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"size": os.environ["SIZE"], "layout": os.environ["LAYOUT"], "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1),
                  "python": platform.python_version(), "commit": commit or None,
                  **{m: version(m) for m in ("onnx", "onnxruntime", "torch", "tensorrt_rtx_bindings")}}, indent=2))
EOF

for step in "${STEPS[@]}"; do
  case $step in
    export)
      if [ "$SIZE" = demo ]; then
        timed export "$FP32" export --external-data --layout "$LAYOUT" --out "$FP32" --json
      else
        timed export "$FP32" --script benchmarks/export_size.py --size "$SIZE" --layout "$LAYOUT" --out "$FP32" \
          --json "$OUT/export.json"
      fi ;;
    fp16|int8-wo|int8)
      timed "quantize-$step" "$WORK/$step" quantize --model "$FP32" --precision "$step" --out "$WORK/$step" \
        --calib-pieces "$CALIB_PIECES" --json ;;
    build)
      timed build-rtx-fp16 "$PLANS" build --flavor rtx --model "$WORK/fp16" --out "$PLANS" --json \
        ${COMPUTE_CAPABILITY:+--compute-capability "$COMPUTE_CAPABILITY"} ;;
    *) echo "unknown step $step (export fp16 int8-wo int8 build)" >&2; exit 2 ;;
  esac
done

# One summary: the last record of each step, the plans' per-graph build seconds and targets.
OUT=$OUT PLANS=$PLANS "$PYTHON" - <<'EOF'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
steps = {}
for line in (out / "steps.jsonl").read_text().splitlines():
    record = json.loads(line)
    steps[record["step"]] = {k: v for k, v in record.items() if k != "argv"}
summary = {"host": json.loads((out / "host.json").read_text()), "steps": steps}
plans = Path(os.environ["PLANS"]) / "manifest.json"
if "build-rtx-fp16" in steps and plans.is_file():
    engine = json.loads(plans.read_text())
    summary["build"] = {"targets": engine["engine"]["compute_capabilities"],
                        "graph_seconds": {g: e["build_seconds"] for g, e in engine["graphs"].items()}}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {out}/summary.json")
EOF
