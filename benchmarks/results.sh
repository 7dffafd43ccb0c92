#!/usr/bin/env bash
# Reproduces every figure in benchmarks/RESULTS.md for the shipped models (data from $SAC_DATA or ../shared/data).
# Usage: bash benchmarks/results.sh [OUT_DIR]      (about 90 min on 2 CPU cores)
set -euo pipefail
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
python benchmarks/postprocessing.py --json "$OUT/postprocessing.json"          # validation images only
python benchmarks/instance_errors.py --json "$OUT/instance_errors.json"        # validation images only
python benchmarks/instance_errors.py --seed-threshold 0.4 --seed-depth 0 --json "$OUT/instance_errors_cores.json"
python benchmarks/working_scale.py --model glands --datasets glas --scales 1.24,1.4,1.55,1.86 --tta both \
  --json "$OUT/working_scale_glands.json"
# the gland choices themselves come from cross-validation: bash benchmarks/glands_cv.sh (trains three runs)
python benchmarks/postprocessing.py --model glands --datasets glas --min-sizes 500,1000,2000 \
  --seed-thresholds 0.1,0.15,0.2,0.25,0.3 --json "$OUT/postprocessing_glands.json"
python benchmarks/click_diagnostics.py --json "$OUT/click_diagnostics.json"    # validation images only
python benchmarks/auto_scale.py --json "$OUT/auto_scale.json"                  # DSB training images only
python benchmarks/click_diagnostics.py --without-automatic-negatives \
  --json "$OUT/click_diagnostics_without_automatic_negatives.json"
for dataset in monuseg consep dsb2018; do
  sac evaluate --dataset "$dataset" --split test --instances fast --json "$OUT/${dataset}_test.json"
  sac evaluate --dataset "$dataset" --split test --instances fast --tta --json "$OUT/${dataset}_test_tta.json"
done
sac evaluate --dataset glas --split test --model glands --json "$OUT/glas_test.json"
for dataset in monuseg dsb2018; do
  python benchmarks/prompts.py --datasets "$dataset" --json "$OUT/prompts_${dataset}.json"
done
python benchmarks/magnification.py --json "$OUT/magnification.json"
python benchmarks/speed.py --sizes 1000,2000 | tee "$OUT/speed.md"
python benchmarks/figures.py --out benchmarks/figures
