#!/usr/bin/env bash
# Stipple vs PyTorch + diffusers: one SD 1.5 UNet forward pass (CFG batch 2, f32, random weights)
# at 256² and 512², alternating the two implementations per size so both see the same machine.
# Prints one JSON line per (implementation, size) and a Markdown table for bench/README.md.
#
# Usage: bench/unet_side_by_side.sh [RUNS]
#   PYTHON=/path/to/venv/bin/python (a venv with bench/requirements.txt; default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
py=${PYTHON:-python3}
cargo build --release -q -p stipple-cli
out=$(mktemp)
for size in 256 512; do
    ./target/release/stipple bench unet --sizes "$size" --runs "$runs" --json | tee -a "$out"
    "$py" bench/diffusers_unet.py --sizes "$size" --runs "$runs" | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["size"]): r for r in rows}
print("\n| size | Stipple median (min–max) | diffusers median (min–max) | Stipple / diffusers | peak RSS Stipple / diffusers |")
print("|---|---|---|---|---|")
for size in sorted({r["size"] for r in rows}):
    s, d = by.get(("stipple", size)), by.get(("diffusers", size))
    if not (s and d):
        continue
    print(f"| {size}² | {s['median_s']:.2f} s ({s['min_s']:.2f}–{s['max_s']:.2f}) | {d['median_s']:.2f} s ({d['min_s']:.2f}–{d['max_s']:.2f}) "
          f"| {s['median_s'] / d['median_s']:.2f}× | {s['peak_rss_mb']:.0f} / {d['peak_rss_mb']:.0f} MB |")
PY
rm -f "$out"
