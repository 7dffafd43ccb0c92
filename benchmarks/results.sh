#!/usr/bin/env bash
# Reproduces every figure in benchmarks/RESULTS.md for the shipped model (data from $SAC_DATA or ../shared/data).
# Usage: bash benchmarks/results.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
sac evaluate --dataset monuseg --split test --instances fast --json "$OUT/monuseg_test.json"
sac evaluate --dataset dsb2018 --split test --instances fast --json "$OUT/dsb2018_test.json"
python benchmarks/speed.py --sizes 1000,2000,4000,8000 | tee "$OUT/speed.md"
python benchmarks/figures.py --out benchmarks/figures
