#!/usr/bin/env bash
# Trains the glands model shipped in src/sac/models/glands: GlaS train (85 images; 10% held out for validation) at
# half resolution (1.24 µm/px), with the same objectives, initialised from the nuclei model shipped at commit
# 2d1a321 (an interim checkpoint, step 400 of the nuclei run; its H&E features; no external weights), in two cycles:
# 1500 steps of benchmarks/glands_contact.json (benchmarks/glands.json, the recipe shipped until the seventeenth
# session, plus the centre loss weighted at the gaps between glands), then 750 steps at a lower learning rate from
# its last checkpoint (benchmarks/glands_second_cycle.json); both chosen by glands_cv.sh's folds; then the same
# shorter cycle once more (twenty-second session, chosen on the same folds). About 65 + 30 + 30 min on one CPU core.
# The shipped model's first two cycles ran before training crops padded their labels as they pad the image (a fix
# of the twenty-second session: mirrored glands were taught as background), its third cycle after; this script now
# runs all three with the fix.
# Usage: bash benchmarks/train_glands.sh [RUN_DIR]; then python benchmarks/ship_model.py RUN_DIR/cycle3/best --name
#   glands --objects glands --mpp 1.4 --tta --min-size 1000 --seed-threshold 0.15 --no-estimate-scale
set -euo pipefail
RUN_DIR=${1:-runs/glands}
INIT=runs/nuclei_2d1a321
mkdir -p "$INIT"
for file in model.safetensors config.json; do git show "2d1a321:src/sac/models/nuclei/$file" > "$INIT/$file"; done
sac train --config benchmarks/glands_contact.json --init "$INIT" --out "$RUN_DIR"
sac train --config benchmarks/glands_second_cycle.json --init "$RUN_DIR/last" --out "$RUN_DIR/cycle2"
sac train --config benchmarks/glands_second_cycle.json --init "$RUN_DIR/cycle2/last" --out "$RUN_DIR/cycle3"
