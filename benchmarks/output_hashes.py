"""sha256 of every file ``sac predict --instances`` writes, to prove a refactor changed no output byte.

Runs the installed ``sac`` command on the 14 MoNuSeg test images and on a 4000x4000 tiled TIFF (a 4x4 mosaic of
those images) forced through slide mode, then records or compares the hash of every output file.

    python benchmarks/output_hashes.py --save before.json          # on the old code
    python benchmarks/output_hashes.py --compare before.json       # on the new code: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from sac.data import default_data_root
from sac.io import read_image

MOSAIC_SIDE = 4


def write_mosaic(images: list[Path], path: Path) -> None:
    """The first 16 images in a 4x4 grid, as a tiled, zlib-compressed TIFF (what a slide scanner writes)."""
    rows = [
        np.concatenate([read_image(p) for p in images[r * MOSAIC_SIDE : (r + 1) * MOSAIC_SIDE]], axis=1)
        for r in range(MOSAIC_SIDE)
    ]
    tifffile.imwrite(
        path, np.concatenate(rows, axis=0), tile=(512, 512), compression="zlib", photometric="rgb"
    )


def output_hashes(extra: list[str]) -> dict[str, str]:
    root = default_data_root()
    if root is None:
        sys.exit("no data folder: set SAC_DATA")
    images = sorted((root / "monuseg" / "test" / "images").iterdir())
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        mosaic = work / "mosaic.tif"
        write_mosaic((images * 2)[: MOSAIC_SIDE**2], mosaic)
        commands = [
            [
                sys.executable,
                "-m",
                "sac.cli",
                "predict",
                *map(str, images),
                "-o",
                str(work / "images"),
                "--instances",
                *extra,
            ],
            [
                sys.executable,
                "-m",
                "sac.cli",
                "predict",
                str(mosaic),
                "-o",
                str(work / "slide"),
                "--wsi",
                "--instances",
                *extra,
            ],
        ]
        for command in commands:
            subprocess.run(command, check=True)
        return {
            str(path.relative_to(work)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(work.rglob("*"))
            if path.is_file() and path != mosaic
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write the hashes here")
    group.add_argument("--compare", type=Path, help="compare with hashes saved earlier")
    parser.add_argument("extra", nargs="*", help="more sac predict options, after --")
    args = parser.parse_args()
    hashes = output_hashes(args.extra)
    if args.save:
        args.save.write_text(json.dumps(hashes, indent=1))
        print(f"{len(hashes)} output files hashed into {args.save}")
        return 0
    before = json.loads(args.compare.read_text())
    differ = sorted(name for name in before.keys() | hashes.keys() if before.get(name) != hashes.get(name))
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(hashes)} files, {len(differ)} differ from {args.compare}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
