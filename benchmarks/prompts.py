"""Do prompts do real work? Single clicks, corrections, SAM instance mode and the paper's point ablation.

On the test splits of MoNuSeg and DSB 2018 (never used in training or model selection):
- single click: mean IoU of SAM's mask for one positive click at a random interior pixel of each ground-truth
  nucleus (no other prompt);
- correction: of the ground-truth nuclei the automatic result misses (IoU < 0.5 with every predicted nucleus), the
  share one positive click at the nucleus centre recovers (IoU >= 0.5), through the same code a user's click takes
  (``sac.instances.apply_clicks``); of the false positives (IoU < 0.5 with every true nucleus), the share one
  negative click removes; and for a sample of clicks, the share of the pixels farther than 32 px from the click
  that change (the target), and the share of the changed pixels that lie that far;
- SAM instance mode against the watershed (AJI, PQ);
- the paper's ablation: K generated positive + K negative points (K = 1, 3, 8, 16) and K + 0, at inference.

Clicks are answered as a user's are: at the scale the automatic pass chose for the image (an image without a
recorded pixel size, as DSB's, is rescaled by ``--mpp auto``'s estimate), and their answers brought back to the
image's own pixels.

    python benchmarks/prompts.py --json benchmarks/results/prompts.json     # the shipped model, ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from sac.data import load_dataset
from sac.evaluate import evaluate_model
from sac.instances import NucleusMask, apply_clicks, click_negatives, segment_at_points
from sac.io import write_json
from sac.metrics import evaluate_image, summarize
from sac.points import click_pixels, peak_pixels
from sac.scale import at_model_scale, resample_pixels, scale_points
from sac.segmenter import Segmentation, Segmenter
from speed import matmul_gflops

LOCALITY_RADIUS = 32  # px: a click should change nothing farther than this
LOCALITY_CLICKS = 10  # clicks per image whose effect on the whole label image is measured


def iou_table(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(T + 1, P + 1) IoU of every true object with every predicted one (row/column 0: background)."""
    pairs = np.bincount(
        truth.ravel().astype(np.int64) * (predicted.max() + 1) + predicted.ravel(),
        minlength=(truth.max() + 1) * (predicted.max() + 1),
    ).reshape(truth.max() + 1, predicted.max() + 1)
    union = pairs.sum(1, keepdims=True) + pairs.sum(0, keepdims=True) - pairs
    return pairs / np.maximum(union, 1)


def unmatched(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(missed, false): the true nuclei that no predicted object matches at IoU 0.5, and the predicted objects
    that match no true nucleus: what the correction clicks aim at."""
    table = iou_table(truth, predicted)[1:, 1:]
    return tuple(np.flatnonzero(table.max(axis=axis, initial=0) < 0.5) + 1 for axis in (1, 0))


def centres(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, 2) (row, column) of each object's most interior pixel."""
    depth = ndimage.distance_transform_edt(labels > 0)
    return np.stack(np.unravel_index(peak_pixels(depth, labels, ids), labels.shape), 1).reshape(-1, 2)


def interior_clicks(truth: np.ndarray, ids: np.ndarray, rng) -> np.ndarray:
    """(N, 2) (row, column): a random pixel inside each of the nuclei ``ids``."""
    return np.array([np.argwhere(truth == i)[rng.integers((truth == i).sum())] for i in ids]).reshape(-1, 2)


class ClickView(NamedTuple):
    """An image as a user's clicks on it are answered: at the automatic pass's zoom
    (:func:`sac.scale.at_model_scale`), with the automatic labels and centre map there."""

    image: np.ndarray
    labels: np.ndarray | None
    centre: np.ndarray | None
    zoom: float
    shape: tuple[int, int]  # the image's own

    @classmethod
    def of(cls, image: np.ndarray, auto: Segmentation) -> ClickView:
        seen, labels, centre, _ = at_model_scale(auto.zoom, image, auto.labels, auto.maps[2])
        return cls(seen, labels, centre, auto.zoom, image.shape[:2])

    def clicks(self, rows_cols: np.ndarray) -> np.ndarray:
        """(row, column) pixels of the image -> the view's, as ``apply_clicks`` moves an (x, y) click there."""
        return click_pixels(scale_points(np.asarray(rows_cols)[:, ::-1], self.zoom), self.image.shape[:2])

    def back(self, answer: NucleusMask | None) -> tuple[np.ndarray, np.ndarray]:
        """An answer's pixels in the image, as ``apply_clicks`` paints them."""
        if answer is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return resample_pixels(answer.rows, answer.cols, self.image.shape[:2], self.shape)


def answer_ious(model, view: ClickView, truth: np.ndarray, ids, clicks, negatives) -> list[float]:
    """IoU with its true nucleus (``ids``) of SAM's answer to each click, 0 where it gives none; ``clicks`` and
    ``negatives`` are pixels of the ``view``, where they are answered."""
    ious = []
    for nucleus, answer in zip(ids, segment_at_points(model, view.image, clicks, negatives), strict=True):
        true = truth == nucleus
        rows, cols = view.back(answer)
        inside = int(true[rows, cols].sum())
        ious.append(inside / (int(true.sum()) + rows.size - inside))
    return ious


def single_click_ious(segmenter: Segmenter, view: ClickView, truth: np.ndarray, rng) -> list[float]:
    ids = np.unique(truth)[1:]
    clicks = view.clicks(interior_clicks(truth, ids, rng))
    return answer_ious(segmenter.model, view, truth, ids, clicks, np.full((len(clicks), 1, 2), -1))


def corrections(segmenter: Segmenter, image: np.ndarray, truth: np.ndarray, auto: Segmentation, rng) -> dict:
    """Missed nuclei recovered by a positive click, false positives removed by a negative one, and locality;
    clicks are answered as ``Segmenter.segment(image, points=...)`` answers them, on the automatic result
    ``auto`` at its zoom."""
    labels, centre = auto.labels, auto.maps[2]
    missed, false = unmatched(truth, labels)
    model = segmenter.model
    view = ClickView.of(image, auto)
    missed_centres = centres(truth, missed)
    clicks = view.clicks(missed_centres)
    negatives = click_negatives(view.labels, clicks, np.zeros((0, 2), np.int64), model.config, view.centre)
    recovered = sum(iou >= 0.5 for iou in answer_ious(model, view, truth, missed, clicks, negatives))
    removed, far, changed, distant = 0, 0, 0, 0
    false_clicks = centres(labels, false)
    chosen = set(
        rng.choice(
            len(missed) + len(false), size=min(LOCALITY_CLICKS, len(missed) + len(false)), replace=False
        ).tolist()
    )

    def clicked(positive, negative) -> np.ndarray:
        return apply_clicks(model, image, labels, positive, negative, centre, auto.zoom)

    for index, (row, col) in enumerate(false_clicks):
        after = clicked(None, np.array([[col, row]]))
        removed += not (after[labels == false[index]] > 0).any()
        if len(missed) + index in chosen:
            far, changed, distant = _locality(labels, after, (row, col), far, changed, distant)
    for index, (row, col) in enumerate(missed_centres):
        if index in chosen:
            after = clicked(np.array([[col, row]]), None)
            far, changed, distant = _locality(labels, after, (row, col), far, changed, distant)
    return {
        "missed": len(missed),
        "recovered": int(recovered),
        "false_positives": len(false),
        "removed": int(removed),
        "changed_pixels": changed,
        "changed_far": far,
        "far_pixels": distant,
    }


def _locality(
    before: np.ndarray, after: np.ndarray, click, far: int, changed: int, distant: int
) -> tuple[int, int, int]:
    """Accumulate changed pixels (foreground), those of them farther than the radius, and all pixels that far."""
    rows, cols = np.nonzero((before > 0) != (after > 0))
    distance = np.hypot(rows - click[0], cols - click[1])
    yy, xx = np.ogrid[: before.shape[0], : before.shape[1]]
    far_pixels = int(((yy - click[0]) ** 2 + (xx - click[1]) ** 2 > LOCALITY_RADIUS**2).sum())
    return far + int((distance > LOCALITY_RADIUS).sum()), changed + len(rows), distant + far_pixels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--datasets", default="monuseg,dsb2018")
    parser.add_argument("--data-root")
    parser.add_argument("--limit", type=int, help="only the first N test images of each dataset")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: clicks,instances,ablation")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    segmenter = Segmenter.load(args.model)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {
        "command": "python benchmarks/prompts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "matmul_gflops": round(matmul_gflops()),
        "model": args.model or "shipped",
    }
    for dataset in args.datasets.split(","):
        samples = load_dataset(dataset, args.data_root, "test")[: args.limit]
        result: dict = {"images": len(samples)}
        started = time.perf_counter()
        if "clicks" not in skip:
            rng = np.random.default_rng(0)
            ious, totals = [], {}
            for sample in samples:
                auto = segmenter.with_options(instances="fast").segment(sample.image, mpp=sample.mpp)
                ious += single_click_ious(segmenter, ClickView.of(sample.image, auto), sample.labels, rng)
                for key, value in corrections(segmenter, sample.image, sample.labels, auto, rng).items():
                    totals[key] = totals.get(key, 0) + value
            result["single_click_iou"] = float(np.mean(ious))
            result["single_clicks"] = len(ious)
            result["corrections"] = totals
            result["recovered_share"] = totals["recovered"] / max(1, totals["missed"])
            result["removed_share"] = totals["removed"] / max(1, totals["false_positives"])
            result["far_pixels_changed"] = totals["changed_far"] / max(1, totals["far_pixels"])
            result["far_change_share"] = totals["changed_far"] / max(1, totals["changed_pixels"])
        if "instances" not in skip:
            for mode in ("fast", "sam"):
                summary = evaluate_model(segmenter.with_options(instances=mode), samples, progress=False)[
                    "summary"
                ]
                result[f"instances_{mode}"] = {k: summary[k] for k in ("dice", "aji", "pq", "f1")}
        if "ablation" not in skip:
            base = segmenter.model.config
            result["ablation"] = {}
            for positive, negative in [(1, 1), (3, 3), (8, 8), (16, 16), (8, 0), (16, 0)]:
                segmenter.model.config = dataclasses.replace(
                    base, num_positive=positive, num_negative=negative
                )
                per_image = [evaluate_image(s.labels, segmenter.predict(s.image, mpp=s.mpp)) for s in samples]
                result["ablation"][f"{positive}+{negative}"] = summarize(per_image)["dice"]
            segmenter.model.config = base
        result["seconds"] = round(time.perf_counter() - started)
        report[dataset] = result
        print(json.dumps({dataset: result}, indent=1), flush=True)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
