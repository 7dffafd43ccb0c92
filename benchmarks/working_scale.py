"""The pixel size a model works at, chosen on validation images: the model run at several working scales (with and
without test-time augmentation), each scored with its own post-processing.

A model trained with zoom augmentation has seen its objects over a range of sizes, so the scale it was trained at
need not be the one it segments best at: glands gain from a coarser view (a whole gland and its surroundings in one
tile), nuclei from a finer one (more encoder tokens per nucleus). The best mean score over the datasets decides:
AJI + PQ for nuclei, the GlaS challenge's object F1 + object Dice for glands. Never the test splits.

    python benchmarks/working_scale.py --scales 0.18,0.2,0.21,0.225,0.25,0.3 --json benchmarks/results/working_scale_nuclei.json
    python benchmarks/working_scale.py --model glands --datasets glas --scales 1.24,1.55,1.86 --tta both \\
        --json benchmarks/results/working_scale_glands.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from postprocessing import (
    GLAND_SCORE,
    evaluate_sets,
    fold_models,
    score_keys,
    validation_arguments,
    validation_sets,
)
from sac.io import write_json
from sac.segmenter import Segmenter
from speed import matmul_gflops

TTA_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.add_argument(
        "--scales", required=True, help="working pixel sizes to compare, µm/px, comma-separated"
    )
    parser.add_argument("--tta", choices=TTA_CHOICES, default="off")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenters = {model: Segmenter.load(model, instances="fast") for model in fold_models(args)}
    own = next(iter(segmenters.values())).model.config
    rows = []
    for dataset in args.datasets.split(","):
        sets = [(segmenters[model], held) for model, held in validation_sets(args, dataset)]
        for scale in [float(value) for value in args.scales.split(",")]:
            for segmenter, _ in sets:
                segmenter.model.config = own.at_scale(scale)
            for tta in TTA_CHOICES[args.tta]:
                chosen = [(segmenter.with_options(tta=tta), held) for segmenter, held in sets]
                summary = evaluate_sets(chosen, glands=dataset == "glas")
                score = sum(summary[key] for key in score_keys(dataset))
                rows.append(
                    {"dataset": dataset, "images": summary["n_images"], "mpp": scale, "tta": tta}
                    | {key: summary[key] for key in ("dice", "aji", "pq", *GLAND_SCORE) if key in summary}
                    | {"score": score}
                )
                print(json.dumps(rows[-1]), flush=True)
    settings = sorted({(row["mpp"], row["tta"]) for row in rows})
    mean_score = {
        setting: float(np.mean([row["score"] for row in rows if (row["mpp"], row["tta"]) == setting]))
        for setting in settings
    }
    (scale, tta), best = max(mean_score.items(), key=lambda item: item[1])
    print(
        f"the model's own scale: {own.mpp} µm/px; best mean score: {scale} µm/px, TTA {'on' if tta else 'off'} ({best:.4f})"
    )
    if args.json:
        report = {
            "command": "python benchmarks/working_scale.py " + " ".join(argv or sys.argv[1:]),
            "date": str(datetime.date.today()),
            "matmul_gflops": round(matmul_gflops()),
            "model_mpp": own.mpp,
            "rows": rows,
            "mean_score": [{"mpp": s, "tta": t, "score": v} for (s, t), v in mean_score.items()],
            "best": {"mpp": scale, "tta": tta},
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
