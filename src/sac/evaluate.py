"""Scoring a model on a labelled dataset with the metrics nuclei papers report."""

from __future__ import annotations

import torch
from tqdm import tqdm

from sac.data import NucleiSample
from sac.inference import instance_mode, segment_image
from sac.io import InputError
from sac.metrics import evaluate_image, summarize
from sac.tiling import DEFAULT_OVERLAP

# Taken from the semantic mask, so Dice/IoU measure the probability map, not the instance post-processing.
SEMANTIC_KEYS = ("dice", "iou", "fg_intersection", "fg_total", "fg_union")


def evaluate_model(
    model: torch.nn.Module,
    samples: list[NucleiSample],
    instances: str = "fast",
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = True,
    threshold: float = 0.5,
) -> dict:
    """``{"summary": ..., "per_image": [{"name": ..., <metrics>}]}`` for ``samples``.

    Dice and IoU come from the thresholded probability; AJI, PQ and F1 from the ``instances`` labels.
    """
    if not samples:
        raise InputError("no samples to evaluate")
    if instance_mode(instances) is None:
        raise InputError("evaluation needs instance labels: instances must be fast or sam")
    per_image = []
    for sample in tqdm(samples, desc="sac evaluate", unit="image", disable=not progress):
        mask, labels = segment_image(
            model, sample.image, instances=instances, threshold=threshold, tile=tile, overlap=overlap
        )
        metrics = evaluate_image(sample.labels, labels)
        semantic = evaluate_image(sample.labels, mask)
        per_image.append({"name": sample.name, **metrics, **{key: semantic[key] for key in SEMANTIC_KEYS}})
    return {"summary": summarize(per_image), "per_image": per_image}
