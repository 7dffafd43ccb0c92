"""Where the answer to a click comes from, and where it goes wrong (validation images, never the test splits).

One positive click at a random interior pixel of each true nucleus, no other prompt, as in ``prompts.py``; per
click: whether SAM's own (quarter-resolution) mask holds the click, and the IoU of the click head's mask (the piece
connected to the click, as ``sac.instances`` gives it to a user) at several logit thresholds, by nucleus size.

    python benchmarks/click_diagnostics.py --json benchmarks/results/click_diagnostics.json   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from sac.data import load_dataset
from sac.instances import connected_to_click, tile_answers
from sac.io import atomic_write
from sac.segmenter import Segmenter
from sac.train import split_validation
from speed import matmul_gflops

THRESHOLDS = (-1.0, 0.0, 1.0, 2.0)  # click head logits
SIZES = ((0, 100), (100, 300), (300, None))  # nucleus area in model pixels


def click_records(segmenter: Segmenter, image: np.ndarray, truth: np.ndarray, rng) -> list[dict]:
    ids = np.unique(truth)[1:]
    clicks = np.array([np.argwhere(truth == i)[rng.integers((truth == i).sum())] for i in ids]).reshape(-1, 2)
    size = segmenter.model.config.image_size
    records = []
    for chosen, answer, corner in tile_answers(
        segmenter.model, image, clicks, np.full((len(clicks), 1, 2), -1)
    ):
        logits = answer.logits[:, 0].float().cpu().numpy()
        sam = answer.sam_logits[:, 0].float().cpu().numpy()
        scale = sam.shape[-1] / size
        origins = answer.origins.cpu().numpy() + corner  # each window's top-left corner in the image
        for k, nucleus in enumerate(chosen):
            row, col = clicks[nucleus] - corner  # in the tile
            true = truth == ids[nucleus]
            ious = {}
            for threshold in THRESHOLDS:  # the mask a user gets (sac.instances), at each threshold
                mask = connected_to_click(
                    logits[k] > threshold, origins[k], clicks[nucleus], truth.shape, 0.0
                )
                found = 0 if mask is None else mask.rows.size
                inside = 0 if mask is None else int(true[mask.rows, mask.cols].sum())
                ious[threshold] = inside / (int(true.sum()) + found - inside)
            records.append(
                {
                    "area": int(true.sum()),
                    "sam_holds_click": bool(sam[k, int(row * scale), int(col * scale)] > 0),
                    "iou": ious,
                }
            )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--datasets", default="monuseg,consep,cryonuseg,dsb2018")
    parser.add_argument("--data-root")
    parser.add_argument("--limit", type=int, default=5, help="validation images per dataset")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenter = Segmenter.load(args.model)
    rng = np.random.default_rng(0)
    records = []
    for dataset in args.datasets.split(","):
        held = split_validation(load_dataset(dataset, args.data_root, "train"), 0.1, 0)[1][: args.limit]
        for sample in held:
            if sample.mpp is None or abs(sample.mpp / segmenter.model.config.mpp - 1) < 0.05:  # model's scale
                records += click_records(segmenter, sample.image, sample.labels, rng)
    report = {
        "command": "python benchmarks/click_diagnostics.py " + " ".join(argv or sys.argv[1:]),
        "date": str(datetime.date.today()),
        "matmul_gflops": round(matmul_gflops()),
        "clicks": len(records),
        "sam_mask_holds_click": float(np.mean([r["sam_holds_click"] for r in records])),
        "click_head_iou": {},
    }
    groups = {f"{low}-{high or 'up'} px": (low, high) for low, high in SIZES} | {"all": (0, None)}
    for name, (low, high) in groups.items():
        chosen = [r for r in records if r["area"] >= low and (high is None or r["area"] < high)]
        report["click_head_iou"][name] = {"clicks": len(chosen)} | {
            f"logit>{t:g}": float(np.mean([r["iou"][t] for r in chosen])) if chosen else None
            for t in THRESHOLDS
        }
    print(json.dumps(report, indent=1))
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
