#!/usr/bin/env bash
# Trains the default model shipped in src/sac/pretrained/ (from scratch: no pretrained SAM weights are used).
# Usage: bash benchmarks/train_default.sh [RUN_DIR]   (data from $SAC_DATA or ../shared/data)
# Afterwards: python benchmarks/ship_model.py RUN_DIR/best  copies the checkpoint into the package.
set -euo pipefail
RUN_DIR=${1:-runs/default}
sac train --dataset monuseg,dsb2018 --backbone tiny --encoder-mode full --image-size 256 \
  --batch-size 4 --lr 1e-3 --num-points 8 --max-steps 1600 --seed 0 --out "$RUN_DIR"
