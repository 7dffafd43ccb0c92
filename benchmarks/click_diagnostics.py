"""Where the answer to a click comes from, and where it goes wrong (validation images, never the test splits).

One positive click at a random interior pixel of each true nucleus, no other prompt, as in ``prompts.py``; per
click: whether SAM's own (quarter-resolution) mask holds the click, and the IoU of the click head's mask (the piece
connected to the click, as ``sac.instances`` gives it to a user) at several logit thresholds, by nucleus size.
And for the nuclei the automatic pass misses, how a positive click at the centre fails, as ``prompts.py`` clicks:
no answer, too big (over 1.6x the nucleus), too small (under 0.6x), or off (the right size, the wrong pixels); and
whether the click lands on an automatic object (a merge) or on background. And, as a user gets them (with the
automatic pass's negatives, ``sac.instances.click_negatives``): the share of missed nuclei a click at a random
interior pixel recovers, and the mean IoU of the answer to a click at a random interior pixel of every nucleus,
which shows what a rule for negatives costs the clicks that did not need it. Clicks are answered as in
``prompts.py``: at the scale the automatic pass chose for each image; sizes are areas at the model's scale.

    python benchmarks/click_diagnostics.py --json benchmarks/results/click_diagnostics.json   # ~3 min on one thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from postprocessing import validation_arguments, validation_images
from prompts import ClickView, answer_ious, centres, interior_clicks, unmatched
from sac.instances import click_negatives, connected_to_click, segment_at_points, tile_answers
from sac.io import write_json
from sac.segmenter import Segmenter
from speed import matmul_gflops

THRESHOLDS = (-1.0, 0.0, 1.0, 2.0)  # click head logits
SIZES = ((0, 100), (100, 300), (300, None))  # nucleus area in model pixels
SIZE_RATIOS = (0.6, 1.6)  # an answer's area over its nucleus's: below, "small"; above, "big"


def user_negatives(segmenter: Segmenter, view: ClickView, clicks: np.ndarray, merges: bool) -> np.ndarray:
    """The negatives the segmenter adds to clicks (pixels of the ``view``) on its automatic result;
    ``merges=False``: none (the clicks alone, for comparison)."""
    centre = view.centre if merges else None
    return click_negatives(view.labels, clicks, np.zeros((0, 2), np.int64), segmenter.model.config, centre)


def click_records(segmenter: Segmenter, view: ClickView, truth: np.ndarray, clicks: np.ndarray) -> list[dict]:
    """Per click (pixels of the ``view``, one per true nucleus): SAM's own answer and the click head's."""
    ids = np.unique(truth)[1:]
    size = segmenter.model.config.image_size
    records = []
    for chosen, answer, corner in tile_answers(
        segmenter.model, view.image, clicks, np.full((len(clicks), 1, 2), -1)
    ):
        logits = answer.logits[:, 0].float().cpu().numpy()
        sam = answer.sam_logits[:, 0].float().cpu().numpy()
        scale = sam.shape[-1] / size
        origins = answer.origins.cpu().numpy() + corner  # each window's top-left corner in the view
        for k, nucleus in enumerate(chosen):
            row, col = clicks[nucleus] - corner  # in the tile
            true = truth == ids[nucleus]
            ious = {}
            for threshold in THRESHOLDS:  # the mask a user gets (sac.instances), at each threshold
                rows, cols = view.back(
                    connected_to_click(
                        logits[k] > threshold, origins[k], clicks[nucleus], view.image.shape, 0.0
                    )
                )
                inside = int(true[rows, cols].sum())
                ious[threshold] = inside / (int(true.sum()) + rows.size - inside)
            records.append(
                {
                    "area": int(true.sum() * view.zoom**2),  # at the model's scale
                    "sam_holds_click": bool(sam[k, int(row * scale), int(col * scale)] > 0),
                    "iou": ious,
                }
            )
    return records


def missed_outcomes(
    segmenter: Segmenter, view: ClickView, truth, missed: np.ndarray, merges: bool
) -> list[dict]:
    """How one positive click at the centre of each nucleus the automatic pass missed is answered."""
    clicks = view.clicks(centres(truth, missed))
    negatives = user_negatives(segmenter, view, clicks, merges)
    records = []
    for nucleus, answer, (row, col) in zip(
        missed, segment_at_points(segmenter.model, view.image, clicks, negatives), clicks, strict=True
    ):
        true = truth == nucleus
        area = int(true.sum())
        rows, cols = view.back(answer)
        if answer is None:
            outcome = "none"
        else:
            inside = int(true[rows, cols].sum())
            ratio = rows.size / area
            outcome = (
                "recovered"
                if inside / (area + rows.size - inside) >= 0.5
                else "small"
                if ratio < SIZE_RATIOS[0]
                else "big"
                if ratio > SIZE_RATIOS[1]
                else "off"
            )
        records.append(
            {"area": int(area * view.zoom**2), "on_object": bool(view.labels[row, col]), "outcome": outcome}
        )
    return records


def _shares(records: list[dict]) -> dict:
    outcomes = ("recovered", "big", "small", "off", "none")
    return {"clicks": len(records)} | {
        name: float(np.mean([r["outcome"] == name for r in records])) if records else None
        for name in outcomes
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.set_defaults(limit=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--without-automatic-negatives",
        action="store_true",
        help="a user's clicks get no negatives at the other nuclei of a clicked object (the clicks alone)",
    )
    args = parser.parse_args(argv)
    segmenter = Segmenter.load(args.model)
    rng, missed_rng = np.random.default_rng(0), np.random.default_rng(1)
    merges = not args.without_automatic_negatives
    records, outcomes, user_ious, missed_ious = [], [], [], []
    for dataset in args.datasets.split(","):
        for sample in validation_images(args, dataset):
            image, truth = sample.image, sample.labels
            auto = segmenter.with_options(instances="fast").segment(image, mpp=sample.mpp)
            view = ClickView.of(image, auto)
            ids = np.unique(truth)[1:]
            clicks = view.clicks(interior_clicks(truth, ids, rng))
            records += click_records(segmenter, view, truth, clicks)
            negatives = user_negatives(segmenter, view, clicks, merges)
            user_ious += answer_ious(segmenter.model, view, truth, ids, clicks, negatives)
            missed = unmatched(truth, auto.labels)[0]
            outcomes += missed_outcomes(segmenter, view, truth, missed, merges)
            lost_clicks = view.clicks(interior_clicks(truth, missed, missed_rng))
            lost_negatives = user_negatives(segmenter, view, lost_clicks, merges)
            missed_ious += answer_ious(segmenter.model, view, truth, missed, lost_clicks, lost_negatives)
    report = {
        "command": "python benchmarks/click_diagnostics.py " + " ".join(argv or sys.argv[1:]),
        "date": str(datetime.date.today()),
        "matmul_gflops": round(matmul_gflops()),
        "clicks": len(records),
        "sam_mask_holds_click": float(np.mean([r["sam_holds_click"] for r in records])),
        "click_head_iou": {},
        "user_click_iou": float(np.mean(user_ious)),
        "missed_recovered_by_interior_click": float(np.mean(np.array(missed_ious) >= 0.5)),
    }
    groups = {f"{low}-{high or 'up'} px": (low, high) for low, high in SIZES} | {"all": (0, None)}
    for name, (low, high) in groups.items():
        chosen = [r for r in records if r["area"] >= low and (high is None or r["area"] < high)]
        report["click_head_iou"][name] = {"clicks": len(chosen)} | {
            f"logit>{t:g}": float(np.mean([r["iou"][t] for r in chosen])) if chosen else None
            for t in THRESHOLDS
        }
    report["missed_nuclei"] = {"all": _shares(outcomes)}
    report["missed_nuclei"] |= {
        "click on an automatic object": _shares([r for r in outcomes if r["on_object"]]),
        "click on background": _shares([r for r in outcomes if not r["on_object"]]),
    }
    report["missed_nuclei"] |= {
        f"{low}-{high or 'up'} px": _shares(
            [r for r in outcomes if r["area"] >= low and (high is None or r["area"] < high)]
        )
        for low, high in SIZES
    }
    print(json.dumps(report, indent=1))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
