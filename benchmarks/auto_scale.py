"""How far should ``--mpp auto`` shrink an image whose nuclei look larger than the model's? (DSB 2018, no pixel size)

For every DSB 2018 training image (validation images first, then training images; never the test split) whose
estimate would shrink it, one row: Dice, AJI and PQ at the estimated zoom as it was before the cap (the estimate
may shrink down to 0.25x), at that zoom capped at 0.5x (``sac.segmenter.AUTO_ZOOM_RANGE`` now), and unshrunk
(``--mpp native``); with the bootstrap 95 % interval of each rule's mean gain over the uncapped one.

    python benchmarks/auto_scale.py --train-images 150 --json benchmarks/results/auto_scale.json   # ~8 min, 1 thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

import sac.segmenter
from paired import bootstrap_interval
from sac.data import load_dataset
from sac.io import atomic_write
from sac.metrics import evaluate_image
from sac.segmenter import Segmenter
from sac.train import split_validation

UNCAPPED_RANGE = (0.25, 4.0)  # the estimate's zoom range before the cap
METRICS = ("dice", "aji", "pq")


def estimated_zoom(segmenter: Segmenter, image: np.ndarray) -> float:
    """The zoom ``--mpp auto`` chose for ``image`` before the cap."""
    capped = sac.segmenter.AUTO_ZOOM_RANGE
    sac.segmenter.AUTO_ZOOM_RANGE = UNCAPPED_RANGE
    try:
        return segmenter.segment(image).zoom
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
            zoom = estimated_zoom(segmenter, sample.image)
            if zoom >= 1:
                continue
            row = {"image": sample.name, "images": part, "estimated_zoom": round(zoom, 3)}
            for rule, rule_zoom in (("uncapped", zoom), ("capped", max(zoom, 0.5)), ("native", 1.0)):
                labels = segmenter.with_options(mpp=model_mpp * rule_zoom).segment(sample.image).labels
                metrics = evaluate_image(sample.labels, labels)
                row[rule] = {key: metrics[key] for key in METRICS}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for rule in ("capped", "native"):
        for key, score in (("aji_plus_pq", ("aji", "pq")), ("dice", ("dice",))):
            gains = np.array([sum(row[rule][m] - row["uncapped"][m] for m in score) for row in rows])
            low, high = bootstrap_interval({"dsb2018": gains})
            summary[f"{rule}_{key}_gain"] = {
                "mean": float(gains.mean()),
                "95_interval": [low, high],
                "images_up": int((gains > 1e-9).sum()),
                "images_down": int((gains < -1e-9).sum()),
            }
    result = {
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "images": len(rows),
        "means": {
            rule: {m: float(np.mean([row[rule][m] for row in rows])) for m in METRICS}
            for rule in ("uncapped", "capped", "native")
        },
        "summary": summary,
        "rows": rows,
    }
    print(json.dumps({k: result[k] for k in ("images", "means", "summary")}, indent=1))
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
