#!/usr/bin/env bash
# Cross-validates the gland model's recipe on GlaS train (never the test split): three runs of benchmarks/glands.json
# from the same init as train_glands.sh, each holding out a third of the 85 images (val_fraction 0.34, val_fold 0-2),
# then the working scale and the post-processing chosen on all 85 held-out images, each scored by the run that
# never trained on it. About 75 min for the runs (three at once, one thread each, 2 cores) and 40 min after them.
# Usage: bash benchmarks/glands_cv.sh [RUN_DIR] [OUT_DIR] [CONFIG] [SECOND_CONFIG] (default benchmarks/glands.json: the
# recipe shipped until the seventeenth session, which the scale and post-processing figures in RESULTS.md come from;
# SECOND_CONFIG: a second training cycle from each fold's last checkpoint, whose best checkpoints are then scored)
set -euo pipefail
RUN_DIR=${1:-runs/glands_cv}
OUT=${2:-benchmarks/results}
CONFIG=${3:-benchmarks/glands.json}
SECOND_CONFIG=${4:-}
INIT=runs/nuclei_2d1a321
mkdir -p "$INIT" "$RUN_DIR" "$OUT"
for file in model.safetensors config.json; do git show "2d1a321:src/sac/models/nuclei/$file" > "$INIT/$file"; done
train_fold() {  # fold $1 of three (its third held out): config $2 from init $3 into run folder $4, in the background
  python -c 'import json, sys; print(json.dumps({**json.load(open(sys.argv[3])),
    "init": sys.argv[1], "val_fraction": 0.34, "val_fold": int(sys.argv[2])}))' "$3" "$1" "$2" > "$4.json"
  OMP_NUM_THREADS=1 sac train --config "$4.json" --out "$4" &
}
for fold in 0 1 2; do train_fold "$fold" "$CONFIG" "$INIT" "$RUN_DIR/fold$fold"; done
wait
SCORED=""  # the runs whose best checkpoints are scored: fold<i>, or fold<i>_cycle2 after a second cycle
if [ -n "$SECOND_CONFIG" ]; then
  for fold in 0 1 2; do train_fold "$fold" "$SECOND_CONFIG" "$RUN_DIR/fold$fold/last" "$RUN_DIR/fold${fold}_cycle2"; done
  wait
  SCORED=_cycle2
fi
folds() {  # each fold's best checkpoint set up as the gland model ships, at working scale $1
  for fold in 0 1 2; do
    python benchmarks/ship_model.py "$RUN_DIR/fold$fold$SCORED/best" --name glands --objects glands --mpp "$1" --tta \
      --min-size 1000 --seed-threshold 0.2 --no-estimate-scale --out "$RUN_DIR/f${fold}_$1" > /dev/null
  done
  echo "$RUN_DIR/f0_$1,$RUN_DIR/f1_$1,$RUN_DIR/f2_$1"
}
CV=(--datasets glas --val-fraction 0.34 --limit 100)
AT_155=$(folds 1.55)
AT_140=$(folds 1.4)
python benchmarks/working_scale.py --model "$AT_155" "${CV[@]}" --scales 1.24,1.4,1.55,1.7,1.86 --tta both \
  --json "$OUT/working_scale_glands_cv.json"
python benchmarks/paired.py "${CV[@]}" --a "model=${AT_155//,/+}" --b "model=${AT_140//,/+}" \
  --also dice,object_f1,object_dice --json "$OUT/paired_glands_scale_cv.json"
python benchmarks/postprocessing.py --model "$AT_140" "${CV[@]}" --tta --min-sizes 500,1000,2000 \
  --seed-thresholds 0.1,0.15,0.2,0.3 --seed-depths 0 --json "$OUT/postprocessing_glands_cv.json"
