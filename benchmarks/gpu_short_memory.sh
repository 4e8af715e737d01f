#!/usr/bin/env bash
# `generate` on a GPU that other work fills (the fast CUDA path, a random-weight NotaGen-X
# checkpoint): another process holds all but LEAVE GiB, then
#   - the default rows are those the rest holds (the note says how many), and the pieces are written;
#   - --rows 64 is refused in one line that says what to do (exit 2);
#   - with too little left for the weights, one line again.
# Env: OUT (default out/gpu-short-memory), MODEL, LEAVE ("4 1.2"), NG (notagen-trt).
set -uo pipefail
source "$(dirname "$0")/x_checkpoint.sh"
OUT=${OUT:-out/gpu-short-memory} NG=${NG:-notagen-trt} LEAVE=${LEAVE:-4 1.2}
MODEL=${MODEL:-/tmp/notagen-x-random.pth}
mkdir -p "$OUT"
x_checkpoint "$MODEL"
# The first run compiles the Triton kernels, on a free GPU.
"$NG" generate --model "$MODEL" --backend fast --num-pieces 1 --max-patches 3 --formats abc --out /tmp/gsm-warm \
  > /dev/null 2>&1
for leave in $LEAVE; do
  fifo=$(mktemp -u) && mkfifo "$fifo"
  python3 -c "
import sys, time, torch
free, total = torch.cuda.mem_get_info()
hog = torch.empty(free - int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device='cuda')
print(f'{torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB left free of {total / 2**30:.1f}', flush=True)
time.sleep(900)" "$leave" > "$fifo" &
  hog=$!
  read -r line < "$fifo" && rm -f "$fifo"
  echo "== another process holds the GPU: $line" | tee -a "$OUT/log.txt"
  for rows in default 64; do
    args=(--model "$MODEL" --backend fast --num-pieces 16 --max-patches 5 --formats abc --out "/tmp/gsm-$leave-$rows")
    [ "$rows" = default ] || args+=(--rows "$rows")
    echo "-- notagen-trt generate ${args[*]}" | tee -a "$OUT/log.txt"
    "$NG" generate "${args[@]}" > "$OUT/generate-$leave-$rows.out" 2>&1
    echo "exit $?; $(grep -c -- '->' "$OUT/generate-$leave-$rows.out") pieces written" | tee -a "$OUT/log.txt"
    grep -v -- '->' "$OUT/generate-$leave-$rows.out" | head -5 | tee -a "$OUT/log.txt"
  done
  kill "$hog"; wait "$hog" 2>/dev/null
done
