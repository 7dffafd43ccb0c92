"""README figures: the shipped model's nuclei on a MoNuSeg test crop, and the default run's training curve.

python benchmarks/figures.py [--run runs/default] [--out benchmarks/figures]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from sac.data import load_dataset
from sac.export import overlay
from sac.segmenter import Segmenter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--data-root")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/figures"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sample = load_dataset("monuseg", args.data_root, "test")[0]
    crop, truth = sample.image[:400, :400], sample.labels[:400, :400]
    labels = Segmenter.load().predict(crop, instances=True)
    from PIL import Image

    side_by_side = np.concatenate([overlay(crop, truth), overlay(crop, labels)], axis=1)
    Image.fromarray(side_by_side).save(args.out / "monuseg_overlay.png")
    shutil.copyfile(args.run / "curve.png", args.out / "training_curve.png")
    print(
        f"{sample.name}: left ground truth ({len(np.unique(truth)) - 1} nuclei), right SAC ({labels.max()} nuclei)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
