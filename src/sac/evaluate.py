"""Scoring a model on a labelled dataset with the metrics nuclei papers report."""

from __future__ import annotations

import numpy as np

from sac.data import NucleiSample
from sac.io import InputError
from sac.metrics import GLAND_COUNTS, evaluate_image, gland_counts, pool_glands, summarize
from sac.progress import progress_bar
from sac.segmenter import Segmenter

GLAND_KEYS = ("object_f1", "object_precision", "object_recall", "object_dice", "object_hausdorff")


def evaluate_model(
    segmenter: Segmenter, samples: list[NucleiSample], progress: bool = True, glands: bool = False
) -> dict:
    """``{"summary": ..., "per_image": [{"name": ..., <metrics>}]}`` for ``samples``.

    Every metric scores the instance labels (the segmenter's instance mode; ``fast`` when it has none); Dice
    and IoU their foreground, which is the mask ``sac predict`` writes. A sample's known pixel size plays the
    part of a file's record. ``glands`` adds the GlaS challenge's object F1, Dice and Hausdorff, as per-image
    means and as the challenge defines them (``pooled_*``: every object of the set counts once), and summaries
    per test part (``testA``/``testB``: the part of the name before ``_``).
    """
    if not samples:
        raise InputError("no samples to evaluate")
    if segmenter.options.instances is None:
        segmenter = segmenter.with_options(instances="fast")
    per_image = []
    for sample in progress_bar(samples, progress, desc="sac evaluate", unit="image"):
        labels = segmenter.segment(sample.image, mpp=sample.mpp).labels
        # Dice and IoU score labels > 0, which is the mask segment() gives: what is written is what is scored
        row = {"name": sample.name, **evaluate_image(sample.labels, labels)}
        if glands:
            counts = gland_counts(sample.labels, labels)
            row.update(pool_glands([counts]) | counts)  # one image pooled: its own scores
        per_image.append(row)
    result = {"summary": summarize_evaluation(per_image, glands), "per_image": per_image}
    parts = sorted({row["name"].split("_")[0] for row in per_image})
    if glands and len(parts) > 1:
        result["parts"] = {
            part: summarize_evaluation(
                [row for row in per_image if row["name"].split("_")[0] == part], glands
            )
            for part in parts
        }
    return result


def summarize_evaluation(per_image: list[dict], glands: bool) -> dict:
    """Per-image means of :func:`evaluate_model`'s rows; for ``glands`` also the GlaS object metrics' means and
    their values pooled over the set as the challenge computes them (``pooled_object_f1``...)."""
    summary = summarize(per_image)
    if glands:
        summary.update({key: float(np.mean([row[key] for row in per_image])) for key in GLAND_KEYS})
        pooled = pool_glands([{key: row[key] for key in GLAND_COUNTS} for row in per_image])
        summary.update({f"pooled_{key}": value for key, value in pooled.items()})
    return summary
