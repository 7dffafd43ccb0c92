"""What kind of instance errors a model makes (nuclei or glands), on validation images (never the test splits).

Each true nucleus that no prediction matches (IoU < 0.5) is counted once, in the first class that fits: *merged*
(its best-overlapping prediction also covers at least 30 % of another true nucleus), *split* (two or more
predictions each cover at least 20 % of it), *missed* (at least half its pixels are background in the
prediction) or *misshapen* (the rest). Each unmatched prediction is, likewise, a *merge* (it covers at least
30 % of two or more true nuclei), *background* (at least half on true background), a *fragment* (less than half
of the true nucleus that holds most of it) or a *near miss* (the rest). True nuclei are also broken down by area,
since small crowded nuclei are where the watershed struggles (glands: by their own area bins). The objects the
model's size filter drops are counted apart: how many of them are true objects (covering more than half of the true
object they overlap most, the GlaS rule) and whether their mean probability tells those from the rest.

    python benchmarks/instance_errors.py --json benchmarks/results/instance_errors.json   # ~2 min on 2 cores
    python benchmarks/instance_errors.py --model F0,F1,F2 --datasets glas --val-fraction 0.34 --limit 100  # CV
    python benchmarks/instance_errors.py --seed-threshold 0.4 --seed-depth 0   # seeds as before the depth split
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from skimage import measure

from postprocessing import fold_models, validation_arguments, validation_sets
from sac.io import write_json
from sac.model import MAP_NAMES
from sac.segmenter import Segmenter

AREA_BINS = {  # µm², by the model's objects
    "nuclei": (0.0, 8.0, 16.0, 32.0, np.inf),
    "glands": (0.0, 1000.0, 3000.0, 10000.0, 30000.0, np.inf),
}
TRUE_CLASSES = ("merged", "split", "missed", "misshapen")
PREDICTED_CLASSES = ("merge", "background", "fragment", "near miss")
CONFIDENCE_LEVELS = (0.6, 0.7, 0.8, 0.9)  # mean probabilities at which a dropped object could be kept


def overlap_table(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(T + 1, P + 1) pixel counts of every (true label, predicted label) pair, background at index 0."""
    truth, prediction = truth.astype(np.int64), prediction.astype(np.int64)
    rows, cols = int(truth.max()) + 1, int(prediction.max()) + 1
    return np.bincount((truth * cols + prediction).ravel(), minlength=rows * cols).reshape(rows, cols)


def classify(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per true nucleus and per prediction: its class (an index into TRUE_CLASSES / PREDICTED_CLASSES, -1 when
    matched), and the true nuclei's areas in pixels."""
    true_area, pred_area = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
    inter = table[1:, 1:]
    iou = inter / np.maximum(true_area[:, None] + pred_area[None, :] - inter, 1)
    true_class = np.full(len(true_area), -1)
    pred_class = np.full(len(pred_area), -1)
    if len(true_area) and len(pred_area):
        cover = inter / np.maximum(true_area[:, None], 1)  # share of each true nucleus a prediction covers
        overlapped = inter.max(axis=1) > 0  # argmax names a prediction only where one overlaps
        merged = overlapped & ((cover >= 0.3).sum(axis=0)[inter.argmax(axis=1)] >= 2)
        split = (cover >= 0.2).sum(axis=1) >= 2
        missed = table[1:, 0] >= 0.5 * true_area
        unmatched = iou.max(axis=1) < 0.5
        for index, condition in enumerate((merged, split, missed, np.ones_like(merged))):
            true_class[unmatched & (true_class < 0) & condition] = index
        merge = (cover >= 0.3).sum(axis=0) >= 2
        on_background = table[0, 1:] >= 0.5 * pred_area
        fragment = cover[inter.argmax(axis=0), np.arange(len(pred_area))] < 0.5
        unmatched = iou.max(axis=0) < 0.5
        for index, condition in enumerate((merge, on_background, fragment, np.ones_like(merge))):
            pred_class[unmatched & (pred_class < 0) & condition] = index
    else:  # nothing to match: every true nucleus missed, every prediction on background
        true_class[:] = TRUE_CLASSES.index("missed")
        pred_class[:] = PREDICTED_CLASSES.index("background")
    return true_class, pred_class, true_area, pred_area


def merge_causes(
    table: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    centre: np.ndarray,
    seed_threshold: float,
    merged: np.ndarray,
) -> dict[str, int]:
    """Why the ``merged`` true objects (their ids) were merged: how many share a watershed seed with a neighbour in
    the same prediction (the centre map stays above the seed threshold across the gap between them), and how
    many have no seed of their own (flooded from a neighbour's). Seeds as the watershed cuts them for a model
    without HV maps and with no seed depth: the centre map's cores at the seed threshold. ``table``:
    :func:`overlap_table` of ``truth`` and ``prediction``."""
    cores = measure.label((prediction > 0) & (centre >= seed_threshold))
    counts = {"merged sharing a seed": 0, "merged without a seed": 0}
    for true_id in merged:
        own = set(np.unique(cores[truth == true_id])) - {0}
        if not own:
            counts["merged without a seed"] += 1
            continue
        predicted = table[true_id, 1:].argmax() + 1
        covered = table[1:, predicted] >= 0.3 * table[1:].sum(axis=1)
        neighbours = [n + 1 for n in np.flatnonzero(covered) if n + 1 != true_id]
        if any(own & set(np.unique(cores[truth == n])) for n in neighbours):
            counts["merged sharing a seed"] += 1
    return counts


def dropped_objects(
    truth: np.ndarray, unfiltered: np.ndarray, kept: np.ndarray, probability: np.ndarray
) -> np.ndarray:
    """(K, 2) rows of the objects of ``unfiltered`` (the watershed's labels) that the size filter dropped, i.e. that
    have no pixel in ``kept`` (the labels it kept): whether each is a true object by the GlaS rule (it covers more
    than half of the true object it overlaps most) and its mean probability."""
    table = overlap_table(truth, unfiltered)
    area = table.sum(axis=0)[1:]
    survived = np.bincount(unfiltered.ravel(), (kept > 0).ravel(), len(area) + 1)[1:] > 0
    small = np.flatnonzero((area > 0) & ~survived)
    if not len(small):
        return np.zeros((0, 2))
    mean_probability = (
        np.bincount(unfiltered.ravel(), probability.ravel(), len(area) + 1)[small + 1] / area[small]
    )
    true_area = table.sum(axis=1)
    best = table[1:, small + 1].argmax(axis=0) + 1 if len(true_area) > 1 else np.zeros(len(small), int)
    real = (best > 0) & (2 * table[best, small + 1] > true_area[best])
    return np.column_stack([real, mean_probability])


def summarise_dropped(rows: np.ndarray) -> dict:
    """How many dropped objects are true ones, and how many of each kind a mean-probability floor would keep."""
    real, confidence = rows[:, 0] > 0, rows[:, 1]
    return {
        "dropped": len(rows),
        "dropped_true": int(real.sum()),
        "dropped_mean_probability_median_true_false": [
            float(np.median(confidence[chosen])) if chosen.any() else None for chosen in (real, ~real)
        ],
        "kept_true_false_at_mean_probability": {
            str(level): [
                int((real & (confidence >= level)).sum()),
                int((~real & (confidence >= level)).sum()),
            ]
            for level in CONFIDENCE_LEVELS
        },
    }


def summarise(
    true_class: np.ndarray, pred_class: np.ndarray, true_area_um2: np.ndarray, bins: tuple[float, ...]
) -> dict:
    """Shares of each class, and per area bin the share matched and the share of each true class."""
    record = {
        "true_nuclei": len(true_class),
        "matched": float(np.mean(true_class < 0)),
        **{name: float(np.mean(true_class == i)) for i, name in enumerate(TRUE_CLASSES)},
        "predictions": len(pred_class),
        "predictions_matched": float(np.mean(pred_class < 0)),
        **{f"predicted {name}": float(np.mean(pred_class == i)) for i, name in enumerate(PREDICTED_CLASSES)},
        "by_area": [],
    }
    for low, high in itertools.pairwise(bins):
        chosen = true_class[(true_area_um2 >= low) & (true_area_um2 < high)]
        record["by_area"].append(
            {"area_um2": [low, None if np.isinf(high) else high], "true_nuclei": len(chosen)}
            | (
                {"matched": float(np.mean(chosen < 0))}
                | {name: float(np.mean(chosen == i)) for i, name in enumerate(TRUE_CLASSES)}
                if len(chosen)
                else {}
            )
        )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.add_argument("--seed-threshold", type=float, help="default: the model's")
    parser.add_argument("--seed-depth", type=float, help="default: the model's")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenters = {
        model: Segmenter.load(
            model, instances="fast", seed_threshold=args.seed_threshold, seed_depth=args.seed_depth
        )
        for model in fold_models(args)
    }
    segmenter = next(iter(segmenters.values()))  # the folds share their config and options
    config = segmenter.model.config
    model_mpp = config.mpp or 1.0
    seed_threshold = segmenter.setting("seed_threshold")
    # the watershed's seeds are the centre map's cores
    plain_seeds = not config.hv_maps and segmenter.setting("seed_depth") == 0
    records = []
    for dataset in args.datasets.split(","):
        classes, causes, dropped = [], Counter(), []
        for model, held in validation_sets(args, dataset):
            for sample in held:
                result = segmenters[model].segment(sample.image, mpp=sample.mpp)
                unfiltered = segmenters[model].instances(result.maps, result.zoom)  # before the size filter
                probability = result.maps[MAP_NAMES.index("nuclei")]
                dropped.append(dropped_objects(sample.labels, unfiltered, result.labels, probability))
                table = overlap_table(sample.labels, result.labels)
                true_class, pred_class, true_area, _ = classify(table)
                classes.append((true_class, pred_class, true_area * (sample.mpp or model_mpp) ** 2))
                if plain_seeds:
                    merged = np.flatnonzero(true_class == TRUE_CLASSES.index("merged")) + 1
                    centre = result.maps[MAP_NAMES.index("centre")]
                    causes.update(
                        merge_causes(table, sample.labels, result.labels, centre, seed_threshold, merged)
                    )
        true_class, pred_class, area = (np.concatenate(column) for column in zip(*classes, strict=True))
        summary = summarise(true_class, pred_class, area, AREA_BINS[config.objects])
        records.append(
            {"dataset": dataset} | summary | dict(causes) | summarise_dropped(np.concatenate(dropped))
        )
        print(json.dumps({k: v for k, v in records[-1].items() if k != "by_area"}), flush=True)
        for row in records[-1]["by_area"]:
            print("   ", json.dumps(row), flush=True)
    if args.json:
        settings = {"seed_threshold": args.seed_threshold, "seed_depth": args.seed_depth}
        write_json(args.json, {"settings": settings, "datasets": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
