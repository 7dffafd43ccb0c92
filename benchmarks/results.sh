#!/usr/bin/env bash
# Reproduces every figure in benchmarks/RESULTS.md for the shipped models (data from $SAC_DATA or ../shared/data).
# Usage: bash benchmarks/results.sh [OUT_DIR]      (about 45 min on 2 CPU cores)
set -euo pipefail
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
python benchmarks/postprocessing.py --json "$OUT/postprocessing.json"          # validation images only
for dataset in monuseg consep dsb2018; do
  sac evaluate --dataset "$dataset" --split test --instances fast --json "$OUT/${dataset}_test.json"
done
sac evaluate --dataset glas --split test --model glands --json "$OUT/glas_test.json"
python benchmarks/prompts.py --json "$OUT/prompts.json"
python benchmarks/magnification.py --json "$OUT/magnification.json"
python benchmarks/speed.py --sizes 1000,2000,4000 | tee "$OUT/speed.md"
python benchmarks/figures.py --out benchmarks/figures
