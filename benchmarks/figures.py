"""README figures: the shipped nuclei model on a MoNuSeg test crop, the gland model on the GlaS test image of median
pixel Dice (a typical result, not the best; ground truth left, SAC right), and the training curves of the runs that
made them.

python benchmarks/figures.py [--run runs/nuclei] [--glands-run runs/glands] [--out benchmarks/figures]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sac.data import load_dataset
from sac.export import overlay
from sac.metrics import dice
from sac.segmenter import Segmenter


def side_by_side(segmenter: Segmenter, sample, crop: tuple[slice, slice], path: Path) -> str:
    image, truth = sample.image[crop], sample.labels[crop]
    labels = segmenter.predict(image, mpp=sample.mpp)
    Image.fromarray(np.concatenate([overlay(image, truth), overlay(image, labels)], axis=1)).save(path)
    return (
        f"{sample.name}: left ground truth ({len(np.unique(truth)) - 1} objects), right SAC ({labels.max()})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/nuclei"))
    parser.add_argument("--glands-run", type=Path, default=Path("runs/glands"))
    parser.add_argument("--data-root")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/figures"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    nuclei = load_dataset("monuseg", args.data_root, "test")[0]
    print(
        side_by_side(
            Segmenter.load(instances="fast"), nuclei, np.s_[:400, :400], args.out / "monuseg_overlay.png"
        )
    )
    glands = Segmenter.load("glands", instances="fast")
    samples = load_dataset("glas", args.data_root, "test")
    scores = [dice(glands.predict(s.image, mpp=s.mpp), s.labels) for s in samples]
    typical = samples[int(np.argsort(scores)[len(scores) // 2])]
    print(side_by_side(glands, typical, np.s_[:, :], args.out / "glas_overlay.png"))
    for run, name in ((args.run, "training_curve.png"), (args.glands_run, "glands_training_curve.png")):
        if (run / "curve.png").is_file():
            shutil.copyfile(run / "curve.png", args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
