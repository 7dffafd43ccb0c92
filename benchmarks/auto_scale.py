"""How far should ``--mpp auto`` shrink an image whose nuclei look larger than the model's? (DSB 2018, no pixel size)

For every DSB 2018 training image (validation images first, then training images; never the test split) whose
estimate would shrink it, one row: Dice, AJI and PQ at the estimated zoom as it was before the cap (the estimate
may shrink down to 0.25x), at that zoom capped at 0.5x (``sac.segmenter.AUTO_ZOOM_RANGE`` now), and unshrunk
(``--mpp native``); with the bootstrap 95 % interval of each rule's mean gain over the uncapped one
(``paired.comparison``).

    python benchmarks/auto_scale.py --train-images 150 --json benchmarks/results/auto_scale.json   # ~4 min, 1 thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

import sac.segmenter
from paired import comparison
from sac.data import load_dataset
from sac.io import write_json
from sac.metrics import evaluate_image
from sac.segmenter import Segmentation, Segmenter
from sac.train import split_validation

UNCAPPED_RANGE = (0.25, 4.0)  # the estimate's zoom range before the cap
METRICS = ("dice", "aji", "pq")
RULES = ("uncapped", "capped", "native")  # the first is what the others are compared with


def uncapped_estimate(segmenter: Segmenter, image: np.ndarray) -> Segmentation:
    """``image`` segmented as ``--mpp auto`` did before the cap (its zoom is the uncapped estimate)."""
    capped = sac.segmenter.AUTO_ZOOM_RANGE
    sac.segmenter.AUTO_ZOOM_RANGE = UNCAPPED_RANGE
    try:
        return segmenter.segment(image)
    finally:
        sac.segmenter.AUTO_ZOOM_RANGE = capped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--data-root")
    parser.add_argument(
        "--train-images", type=int, default=150, help="training images after the validation ones"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    train, validation = split_validation(load_dataset("dsb2018", args.data_root, "train"), 0.1, 0)
    segmenter = Segmenter.load(args.model, instances="fast")
    model_mpp = segmenter.model.config.mpp
    rows = []
    for part, samples in (("validation", validation), ("training", train[: args.train_images])):
        for sample in samples:
            before = uncapped_estimate(segmenter, sample.image)
            if before.zoom >= 1:
                continue
            row = {"image": sample.name, "images": part, "estimated_zoom": round(before.zoom, 3)}
            labels = {"uncapped": before.labels}  # capped: an estimate under 0.5x runs at 0.5x
            for rule, zoom in (("capped", max(before.zoom, 0.5)), ("native", 1.0)):
                labels[rule] = segmenter.with_options(mpp=model_mpp * zoom).segment(sample.image).labels
            for rule in RULES:
                metrics = evaluate_image(sample.labels, labels[rule])
                row[rule] = {key: metrics[key] for key in METRICS}
            rows.append(row)
            print(json.dumps(row), flush=True)
    # each rule against the uncapped estimate, image by image, as paired.py compares two settings
    scores = {
        rule: {
            "dsb2018": {
                "aji_plus_pq": np.array([row[rule]["aji"] + row[rule]["pq"] for row in rows]),
                "dice": np.array([row[rule]["dice"] for row in rows]),
            }
        }
        for rule in RULES
    }
    summary = {
        f"{rule}_{key}_gain": comparison(scores["uncapped"], scores[rule], key)
        for rule in RULES[1:]
        for key in ("aji_plus_pq", "dice")
    }
    result = {
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "images": len(rows),
        "means": {
            rule: {m: float(np.mean([row[rule][m] for row in rows])) for m in METRICS} for rule in RULES
        },
        "summary": summary,
        "rows": rows,
    }
    print(json.dumps({k: result[k] for k in ("images", "means", "summary")}, indent=1))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
