"""Post-processing defaults chosen on validation images (never the test splits): minimum nucleus size and the
watershed seed threshold, by AJI and PQ on each dataset's held-out training images (the seeded 10% that training
validates on).

    python benchmarks/postprocessing.py --json benchmarks/results/postprocessing.json   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from sac.data import load_dataset
from sac.evaluate import evaluate_model
from sac.io import atomic_write
from sac.segmenter import Segmenter
from sac.train import split_validation

MIN_SIZES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)  # µm²
SEED_THRESHOLDS = (0.3, 0.4, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder or shipped model name (default: nuclei)")
    parser.add_argument("--datasets", default="monuseg,consep,cryonuseg")
    parser.add_argument("--data-root")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (its validation split)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenter = Segmenter.load(args.model, instances="fast")
    rows = []
    for dataset in args.datasets.split(","):
        held = split_validation(load_dataset(dataset, args.data_root, "train"), 0.1, args.seed)[1]
        for min_size, seed_threshold in itertools.product(MIN_SIZES, SEED_THRESHOLDS):
            chosen = segmenter.with_options(min_size=min_size, seed_threshold=seed_threshold)
            summary = evaluate_model(chosen, held, progress=False)["summary"]
            rows.append(
                {
                    "dataset": dataset,
                    "images": len(held),
                    "min_size": min_size,
                    "seed_threshold": seed_threshold,
                }
                | {key: summary[key] for key in ("dice", "aji", "pq", "f1")}
            )
            print(json.dumps(rows[-1]), flush=True)
    best = {}
    for min_size, seed_threshold in itertools.product(MIN_SIZES, SEED_THRESHOLDS):
        chosen = [r for r in rows if (r["min_size"], r["seed_threshold"]) == (min_size, seed_threshold)]
        best[(min_size, seed_threshold)] = float(np.mean([r["aji"] + r["pq"] for r in chosen]))
    (min_size, seed_threshold), score = max(best.items(), key=lambda item: item[1])
    print(
        f"best mean AJI + PQ over the datasets: min size {min_size} µm², seed threshold {seed_threshold} ({score:.4f})"
    )
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps({"rows": rows, "best": [min_size, seed_threshold]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
