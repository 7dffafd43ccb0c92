#!/usr/bin/env bash
# Trains the glands model shipped in src/sac/models/glands, in two stages on GlaS train (85 images; 10% held out for
# validation, the same 8 in both):
# 1. benchmarks/glands.json: the whole model at half resolution (1.24 µm/px), with the same objectives as the
#    nuclei model, initialised from the nuclei model shipped at commit 2d1a321 (an interim checkpoint, step 400 of
#    the nuclei run; its H&E features; no external weights). About 65 min on one CPU core.
# 2. benchmarks/glands_hv.json: an HV head (HoVer-Net's horizontal and vertical maps) trained alone at the working
#    scale chosen on validation (1.55 µm/px), every other weight frozen. About 29 min on one CPU core.
# Usage: bash benchmarks/train_glands.sh [RUN_DIR]; then
#   python benchmarks/ship_model.py RUN_DIR/last --name glands --objects glands --mpp 1.55 --tta --min-size 1000 \
#     --seed-threshold 0.2 --hv-weight 2 --no-estimate-scale
set -euo pipefail
RUN_DIR=${1:-runs/glands}
INIT=runs/nuclei_2d1a321
mkdir -p "$INIT"
for file in model.safetensors config.json; do git show "2d1a321:src/sac/models/nuclei/$file" > "$INIT/$file"; done
sac train --config benchmarks/glands.json --init "$INIT" --out "${RUN_DIR}_stage1"
sac train --config benchmarks/glands_hv.json --init "${RUN_DIR}_stage1/best" --out "$RUN_DIR"
