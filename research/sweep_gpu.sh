#!/bin/bash
# Runs every named variant of position_sweep.py at once on one GPU; results to $OUT/sweep.log.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=/tmp/sweep; mkdir -p $W
nvidia-smi --query-gpu=name,memory.used --format=csv
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on"
pids=()
for v in "$@"; do
  timeout ${SWEEP_SECS:-480} python3 research/position_sweep.py "$v" 6000 "$W/$v.json" > "$W/$v.log" 2>&1 &
  pids+=($!)
done
( while sleep 30; do grep -h '^[a-z_0-9]* {' $W/*.log > "$OUT/sweep.log"; done ) &
loop=$!
sleep 45; tail -n 3 $W/*.log; nvidia-smi --query-gpu=utilization.gpu --format=csv
wait "${pids[@]}"
kill $loop
grep -h '^[a-z_0-9]* {' $W/*.log > "$OUT/sweep.log"; tail -n 3 $W/*.log > "$OUT/tails.log"
cat "$OUT/sweep.log"
