"""Is a validation gain real? Two settings (or two models) on the same validation images, image by image, with a
bootstrap confidence interval of the mean difference (never the test splits).

A setting is ``key=value`` pairs: ``model=`` a checkpoint folder or shipped name (one per cross-validation fold,
joined by ``+``), every other key a segment option (``sac.options.SegmentOptions``). Each image is scored by the
sum that ``postprocessing.py`` chooses by (object F1 + object Dice for GlaS, AJI + PQ for nuclei). The overall
interval resamples images within each dataset, so each dataset weighs the same. A change is adopted only when the
interval of its gain lies above zero.

    python benchmarks/paired.py --model glands --datasets glas --a hv_weight=0 --b hv_weight=2
    python benchmarks/paired.py --a model=nuclei --b model=runs/other/last --also dice --json result.json
    python benchmarks/paired.py --model runs/f0/best,runs/f1/best,runs/f2/best --val-fraction 0.34 --a ... --b ...
    python benchmarks/paired.py --datasets glas --val-fraction 0.34 --a model=A0+A1+A2 --b model=B0+B1+B2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from postprocessing import fold_models, image_metrics, score_keys, validation_arguments, validation_sets
from sac.io import write_json
from sac.segmenter import Segmenter

BOOTSTRAP_SAMPLES = 10000


def parse_setting(text: str) -> dict:
    """``"model=glands,hv_weight=2.5,tta=false,overlap=64"`` -> {"model": "glands", "hv_weight": 2.5, "tta": False,
    "overlap": 64}."""
    setting = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"setting {item!r}: expected key=value")
        lowered = value.lower()
        if lowered in ("true", "false", "none"):
            setting[key] = {"true": True, "false": False, "none": None}[lowered]
        else:
            try:
                setting[key] = int(value)  # whole-number options (overlap, tta) refuse floats
            except ValueError:
                try:
                    setting[key] = float(value)
                except ValueError:
                    setting[key] = value
    return setting


def image_scores(setting: dict, args: argparse.Namespace) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset, each validation image's score under one setting, and its metrics named by ``--also``."""
    options = dict(setting)
    models = options.pop("model", None)  # this setting's own models: one, or one per fold joined by "+"
    models = models.split("+") if models else fold_models(args)
    segmenters = {}
    scores = {}
    for dataset in args.datasets.split(","):
        rows = []
        for model, held in validation_sets(args, dataset, models):
            if model not in segmenters:
                segmenters[model] = Segmenter.load(model, **{"instances": "fast", **options})
            for sample in held:
                labels = segmenters[model].segment(sample.image, mpp=sample.mpp).labels
                metrics = image_metrics(dataset, sample.labels, labels)
                score = sum(metrics[key] for key in score_keys(dataset))
                rows.append({"score": score} | {key: metrics[key] for key in args.also})
        scores[dataset] = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    return scores


def comparison(first: dict, second: dict, key: str) -> dict:
    """Setting b against a on one metric: per dataset and overall, with the bootstrap interval of the gain."""
    differences = {dataset: second[dataset][key] - first[dataset][key] for dataset in first}
    low, high = bootstrap_interval(differences)
    return {
        "datasets": {
            dataset: {
                "images": len(values),
                "a": float(first[dataset][key].mean()),
                "b": float(second[dataset][key].mean()),
                "gain": float(values.mean()),
                "images_up": int((values > 1e-9).sum()),
                "images_down": int((values < -1e-9).sum()),
            }
            for dataset, values in differences.items()
        },
        "gain": float(np.mean([values.mean() for values in differences.values()])),
        "gain_95_interval": [low, high],
    }


def bootstrap_interval(differences: dict[str, np.ndarray], seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean over datasets of each dataset's mean difference, images resampled per dataset."""
    rng = np.random.default_rng(seed)
    means = np.zeros(BOOTSTRAP_SAMPLES)
    for values in differences.values():
        picks = rng.integers(0, len(values), (BOOTSTRAP_SAMPLES, len(values)))
        means += values[picks].mean(axis=1) / len(differences)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.add_argument("--a", required=True, help="the setting now, e.g. hv_weight=0 or model=nuclei")
    parser.add_argument("--b", required=True, help="the candidate, e.g. hv_weight=2 or model=runs/x/last")
    parser.add_argument(
        "--also",
        default="",
        help="metrics also compared, not deciding (e.g. dice; sac.metrics.evaluate_image)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.also = [key for key in args.also.split(",") if key]
    first = image_scores(parse_setting(args.a), args)
    second = image_scores(parse_setting(args.b), args)
    result = {"a": args.a, "b": args.b, **comparison(first, second, "score")}
    result["adopt"] = result["gain_95_interval"][0] > 0
    result["also"] = {key: comparison(first, second, key) for key in args.also}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
