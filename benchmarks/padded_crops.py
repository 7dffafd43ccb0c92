"""How much of a training recipe's crops is padding: the share of crops smaller than the crop size (after the
pixel-size resampling and the zoom augmentation), and the share of all crop pixels the padding fills. Before the
twenty-second session the padding's labels were background whatever the mirrored image showed there.

    python benchmarks/padded_crops.py --datasets monuseg,consep,cryonuseg,dsb2018 --mpp 0.25 --max-zoom 2
    python benchmarks/padded_crops.py --datasets glas --mpp 1.24 --max-zoom 1.5
"""

from __future__ import annotations

import argparse

import numpy as np

from sac.data import CropDataset, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", required=True, help="comma-separated dataset names (train splits)")
    parser.add_argument("--mpp", type=float, required=True, help="the model's pixel size")
    parser.add_argument("--max-zoom", type=float, default=2.0)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--crops", type=int, default=4000)
    args = parser.parse_args()
    samples = [sample for name in args.datasets.split(",") for sample in load_dataset(name, None, "train")]
    crops = CropDataset(samples, args.crop, args.crops, target_mpp=args.mpp, max_zoom=args.max_zoom)
    padded, padding = 0, 0.0
    for index in range(
        args.crops
    ):  # the sample and zoom each crop draws, as CropDataset.__getitem__ draws them
        rng = np.random.default_rng([crops.seed, 0, index])
        which = rng.choice(len(samples), p=crops._probabilities)
        zoom = crops._zoom(samples[which], rng)
        height, width = samples[which].labels.shape
        covered = min(args.crop, round(height * zoom)) * min(args.crop, round(width * zoom)) / args.crop**2
        padded += covered < 1
        padding += 1 - covered
    print(
        f"{args.datasets}: {padded / args.crops:.1%} of {args.crops} crops padded; "
        f"padding fills {padding / args.crops:.1%} of all crop pixels"
    )


if __name__ == "__main__":
    main()
