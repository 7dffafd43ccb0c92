"""GlaS scores by grade (benign, malignant): is testB hard because its glands are malignant, or for another reason?

    python benchmarks/glands_by_grade.py --model F0,F1,F2 --val-fraction 0.34 --limit 100 \\
        --test benchmarks/results/glas_test.json --json benchmarks/results/glands_by_grade.json

Groups by the grade in GlaS's provenance.csv (1) the held-out training images of cross-validation folds, each scored
by the fold model that never trained on it (the settings of the model folders, as ``paired.py`` runs them), and
(2) the per-image rows of a ``sac evaluate --dataset glas --split test --json`` file, per test part. Reads the test
file only: nothing here is chosen on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from postprocessing import image_metrics, validation_arguments, validation_sets
from sac.data import default_data_root
from sac.io import write_json
from sac.segmenter import Segmenter

METRICS = ("object_f1", "object_dice", "dice")


def grades(data_root: str | None) -> dict[str, str]:
    """Image id -> "benign" or "malignant", from GlaS's provenance.csv."""
    root = Path(data_root) if data_root else default_data_root()
    if root is None:
        raise SystemExit("GlaS not found: give --data-root or set SAC_DATA")
    with open(root / "glas" / "provenance.csv", newline="") as handle:
        return {row["id"]: row["grade"] for row in csv.DictReader(handle)}


def grouped(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of each metric over the rows of each group."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return {
        name: {"images": len(members)} | {key: float(np.mean([m[key] for m in members])) for key in METRICS}
        for name, members in sorted(groups.items())
    }


def held_out_rows(args: argparse.Namespace, grade: dict[str, str]) -> list[dict]:
    rows = []
    for model, held in validation_sets(args, "glas"):
        segmenter = Segmenter.load(model, instances="fast")
        for sample in held:
            metrics = image_metrics(
                "glas", sample.labels, segmenter.segment(sample.image, mpp=sample.mpp).labels
            )
            rows.append({"group": f"train held out, {grade[sample.name]}"} | {k: metrics[k] for k in METRICS})
    return rows


def test_rows(path: Path, grade: dict[str, str]) -> list[dict]:
    rows = []
    for row in json.loads(path.read_text())["per_image"]:
        part = row["name"].split("_")[0]  # testA_1 -> testA
        rows.append({"group": f"{part}, {grade[row['name']]}"} | {k: row[k] for k in METRICS})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_arguments(parser)
    parser.set_defaults(datasets="glas")
    parser.add_argument("--test", type=Path, help="a sac evaluate --json file of the GlaS test split")
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.datasets != "glas":
        parser.error("--datasets: only GlaS records grades; leave it at glas")
    grade = grades(args.data_root)
    rows = (held_out_rows(args, grade) if args.model else []) + (
        test_rows(args.test, grade) if args.test else []
    )
    if not rows:
        raise SystemExit("nothing to score: give --model (fold models) and/or --test")
    table = grouped(rows)
    print("| images | n | object F1 | object Dice | pixel Dice |\n|---|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['images']} | " + " | ".join(f"{row[key]:.3f}" for key in METRICS) + " |")
    if args.json:
        write_json(
            args.json, {"model": args.model, "test": str(args.test) if args.test else None, "groups": table}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
