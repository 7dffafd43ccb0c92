"""Defaults chosen on validation images (never the test splits): minimum nucleus size and the watershed seeds'
threshold and depth, by AJI and PQ on each dataset's held-out training images (the seeded 10% that training validates on);
which instance mode (watershed or SAM per nucleus) does better, and what test-time augmentation gains; and what
the automatic scale does when no pixel size is known (``auto`` against ``native``, and the known one). GlaS is
scored by the challenge's object F1 and object Dice (the gland targets) instead of AJI and PQ.

    python benchmarks/postprocessing.py --json benchmarks/results/postprocessing.json   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from sac.data import load_dataset
from sac.evaluate import evaluate_model, summarize_evaluation
from sac.instances import filter_instances
from sac.io import write_json
from sac.metrics import evaluate_image, gland_metrics, summarize
from sac.segmenter import Segmenter
from sac.train import split_validation

MIN_SIZES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)  # µm²
SEED_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
SEED_DEPTHS = (0.0, 0.1, 0.15, 0.2)  # 0: one seed per core
HV_WEIGHTS = (0.0, 2.0, 4.0, 8.0)  # for a model with horizontal and vertical maps; 0: not used
GLAND_SCORE = ("object_f1", "object_dice")  # the GlaS challenge's object metrics, the gland model's targets


def score_keys(dataset: str) -> tuple[str, ...]:
    """The metrics whose sum decides a validation choice: the gland targets for GlaS, AJI + PQ for nuclei."""
    return GLAND_SCORE if dataset == "glas" else ("aji", "pq")


def image_metrics(dataset: str, truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of one validation image: Dice, AJI, PQ and the rest, and for GlaS the challenge's object ones."""
    return evaluate_image(truth, labels) | (gland_metrics(truth, labels) if dataset == "glas" else {})


def validation_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, and which validation images: the arguments every validation benchmark shares."""
    parser.add_argument(
        "--model",
        help="checkpoint folder or shipped model name (default: nuclei); for cross-validation, one run's model per "
        "fold joined by commas, the i-th validated on fold i",
    )
    parser.add_argument("--datasets", default="monuseg,consep,cryonuseg,dsb2018")
    parser.add_argument("--data-root")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (its validation split)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="the training run's validation fraction (its split)"
    )
    parser.add_argument(
        "--val-fold", type=int, default=0, help="the training run's validation fold (one model)"
    )
    parser.add_argument(
        "--limit", type=int, default=20, help="at most this many validation images per dataset and model"
    )


def fold_models(args: argparse.Namespace) -> list[str | None]:
    """``--model``: one model (None: the shipped default), or one per cross-validation fold."""
    return args.model.split(",") if args.model else [None]


def validation_sets(
    args: argparse.Namespace, dataset: str, models: list[str | None] | None = None
) -> list[tuple[str | None, list]]:
    """Each model (default: ``--model``'s) with the share of a dataset's training images its run held out (at most
    --limit): one model with its run's fold, or in cross-validation the i-th model with fold i, so every image is
    scored by a model that never trained on it."""
    models = models or fold_models(args)
    folds = range(len(models)) if len(models) > 1 else [args.val_fold]
    samples = load_dataset(dataset, args.data_root, "train")
    return [
        (model, split_validation(samples, args.val_fraction, args.seed, fold)[1][: args.limit])
        for model, fold in zip(models, folds, strict=True)
    ]


def validation_images(args: argparse.Namespace, dataset: str) -> list:
    """The validation images of a benchmark that takes one model (see :func:`validation_sets`)."""
    (_, held), *others = validation_sets(args, dataset)
    if others:
        raise SystemExit("this benchmark takes one model, not one per fold")
    return held


def evaluate_sets(sets: list[tuple[Segmenter, list]], glands: bool) -> dict:
    """:func:`sac.evaluate.evaluate_model`'s summary over several models' validation images pooled."""
    per_image = [
        row
        for segmenter, held in sets
        for row in evaluate_model(segmenter, held, progress=False, glands=glands)["per_image"]
    ]
    return summarize_evaluation(per_image, glands)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.add_argument("--min-sizes", default=",".join(map(str, MIN_SIZES)), help="µm², comma-separated")
    parser.add_argument("--seed-thresholds", default=",".join(map(str, SEED_THRESHOLDS)))
    parser.add_argument("--seed-depths", default=",".join(map(str, SEED_DEPTHS)))
    parser.add_argument(
        "--hv-weights", default=",".join(map(str, HV_WEIGHTS)), help="only for a model with HV maps"
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="sweep on maps averaged over flips and turns (default: the model's own choice)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    min_sizes = [float(v) for v in args.min_sizes.split(",")]
    seed_thresholds = [float(v) for v in args.seed_thresholds.split(",")]
    seed_depths = [float(v) for v in args.seed_depths.split(",")]
    segmenters = {model: Segmenter.load(model, instances="fast", tta=args.tta) for model in fold_models(args)}
    segmenter = next(iter(segmenters.values()))  # instances from maps read only its options and config
    hv_weights = (
        [float(v) for v in args.hv_weights.split(",")]
        if segmenter.model.config.hv_maps
        else [segmenter.model.config.hv_weight]  # unused: the model has no HV maps
    )
    model_mpp = segmenter.model.config.mpp or 1.0
    rows, scale_rows = [], []
    for dataset in args.datasets.split(","):
        sets = [(segmenters[model], held) for model, held in validation_sets(args, dataset)]
        held = [sample for _, images in sets for sample in images]
        results = [  # maps once per image
            fold.segment(sample.image, mpp=sample.mpp) for fold, images in sets for sample in images
        ]
        for seed_threshold, seed_depth, hv_weight in itertools.product(
            seed_thresholds, seed_depths, hv_weights
        ):
            seeded = segmenter.with_options(
                seed_threshold=seed_threshold, seed_depth=seed_depth, hv_weight=hv_weight
            )
            unfiltered = [seeded.instances(r.maps, r.zoom) for r in results]
            for min_size in min_sizes:
                per_image = []
                for sample, result, labels in zip(held, results, unfiltered, strict=True):
                    pixel_area = (result.mpp or model_mpp * result.zoom) ** 2
                    labels = filter_instances(labels, min_size / pixel_area)
                    per_image.append(image_metrics(dataset, sample.labels, labels))
                summary = summarize(per_image) | {
                    key: float(np.mean([row[key] for row in per_image]))
                    for key in GLAND_SCORE
                    if dataset == "glas"
                }
                rows.append(
                    {
                        "dataset": dataset,
                        "images": len(held),
                        "min_size": min_size,
                        "seed_threshold": seed_threshold,
                        "seed_depth": seed_depth,
                        "hv_weight": hv_weight,
                    }
                    | {
                        key: summary[key]
                        for key in ("dice", "aji", "pq", "f1", *GLAND_SCORE)
                        if key in summary
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        modes = {  # the default instance mode, and what test-time augmentation gains, decided here
            "fast": {"tta": False},
            "sam": {"instances": "sam", "tta": False},
            "fast, tta": {"tta": True},
        }
        for mode, change in modes.items():
            chosen = [(fold.with_options(**change), images) for fold, images in sets]
            summary = evaluate_sets(chosen, glands=dataset == "glas")
            scale_rows.append(
                {"dataset": dataset, "instances": mode}
                | {k: summary[k] for k in ("dice", "aji", "pq", *GLAND_SCORE) if k in summary}
            )
            print(json.dumps(scale_rows[-1]), flush=True)
        unknown = [[dataclasses.replace(sample, mpp=None) for sample in images] for _, images in sets]
        settings = [("auto", {}, unknown), ("native", {"mpp": "native"}, unknown)]
        if any(sample.mpp is not None for sample in held):
            settings.insert(0, ("known", {}, [images for _, images in sets]))
        for setting, change, data in settings:
            chosen = [
                (fold.with_options(**change), images) for (fold, _), images in zip(sets, data, strict=True)
            ]
            summary = evaluate_sets(chosen, glands=False)
            scale_rows.append(
                {"dataset": dataset, "mpp": setting} | {k: summary[k] for k in ("dice", "aji", "pq")}
            )
            print(json.dumps(scale_rows[-1]), flush=True)
    score = {
        combination: float(
            np.mean(
                [
                    sum(r[key] for key in score_keys(r["dataset"]))
                    for r in rows
                    if (r["min_size"], r["seed_threshold"], r["seed_depth"], r["hv_weight"]) == combination
                ]
            )
        )
        for combination in itertools.product(min_sizes, seed_thresholds, seed_depths, hv_weights)
    }
    best_settings, best = max(score.items(), key=lambda item: item[1])
    min_size, seed_threshold, seed_depth, hv_weight = best_settings
    print(
        f"best mean AJI + PQ (GlaS: object F1 + object Dice) over the datasets: min size {min_size} µm², seed "
        f"threshold {seed_threshold}, seed depth {seed_depth}, hv weight {hv_weight} ({best:.4f})"
    )
    if args.json:
        write_json(args.json, {"rows": rows, "best": list(best_settings), "scale": scale_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
