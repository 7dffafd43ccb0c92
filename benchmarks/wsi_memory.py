"""Memory of whole-slide segmentation: it should follow the block size, not the slide's area.

Writes a synthetic H&E-like pyramidal BigTIFF one tile at a time, segments it with ``sac.wsi.segment_slide``
and reports wall time, peak RSS and the RSS as blocks start, ending with a markdown table row.

    python benchmarks/wsi_memory.py                        # 20000 x 20000 px, about 25 min on one core
    python benchmarks/wsi_memory.py --size 6000 --model CHECKPOINT_DIR
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import tifffile
import torch

from sac.io import InputError
from sac.model import SACConfig, SegmentAnyCell
from sac.segmenter import Segmentation, Segmenter
from sac.wsi import object_halo, segment_slide

SLIDE_TILE = 512
CELL = 32  # level-0 pixels a side holding at most one nucleus, so any tile is drawn without its neighbours
BACKGROUND, NUCLEUS = np.array([235, 200, 225]), np.array([90, 40, 140])
SMALLEST_LEVEL = 1024  # the pyramid stops once a level fits in this many pixels a side


def _uniform(cell_y: np.ndarray, cell_x: np.ndarray, salt: int) -> np.ndarray:
    """A reproducible uniform [0, 1) number per cell, from an integer hash rather than a stored table."""
    h = cell_y.astype(np.uint64) * np.uint64(0x9E3779B1) + cell_x.astype(np.uint64) * np.uint64(0x85EBCA77)
    h ^= np.uint64(salt * 0xC2B2AE3D)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        h ^= h >> np.uint64(shift)
        h *= np.uint64(factor)
    return (h >> np.uint64(40)).astype(np.float64) / 2**24


def _tile(y: int, x: int, height: int, width: int, scale: int) -> np.ndarray:
    """RGB pixels of one tile at a level ``scale`` times smaller than level 0: round nuclei on pink."""
    rows = (np.arange(y, y + height) + 0.5) * scale
    cols = (np.arange(x, x + width) + 0.5) * scale
    cell_y, cell_x = (rows // CELL)[:, None], (cols // CELL)[None, :]
    centre_y = cell_y * CELL + 8 + 16 * _uniform(cell_y, cell_x, 1)
    centre_x = cell_x * CELL + 8 + 16 * _uniform(cell_y, cell_x, 2)
    radius = 4 + 4 * _uniform(cell_y, cell_x, 3)
    inside = (rows[:, None] - centre_y) ** 2 + (cols[None, :] - centre_x) ** 2 <= radius**2
    inside &= _uniform(cell_y, cell_x, 4) < 0.6
    noise = np.random.default_rng((scale, y, x)).normal(0, 8, (height, width, 3))
    return np.clip(np.where(inside[..., None], NUCLEUS, BACKGROUND) + noise, 0, 255).astype(np.uint8)


def _tiles(size: int, scale: int) -> Iterator[np.ndarray]:
    for y in range(0, size, SLIDE_TILE):
        for x in range(0, size, SLIDE_TILE):
            yield _tile(y, x, min(SLIDE_TILE, size - y), min(SLIDE_TILE, size - x), scale)


def write_slide(path: Path, size: int) -> int:
    """A JPEG-compressed pyramidal BigTIFF of ``size`` pixels a side at 0.25 µm/px, as scanners write; returns its
    levels."""
    scales = [1]
    while -(-size // scales[-1]) > SMALLEST_LEVEL:
        scales.append(scales[-1] * 2)
    options = {
        "tile": (SLIDE_TILE, SLIDE_TILE),
        "dtype": np.uint8,
        "photometric": "rgb",
        "compression": "jpeg",
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, scale in enumerate(scales):
            side = -(-size // scale)
            # level 0 records its pixel size (0.25 µm/px, the model's), as a scanner's file does
            extra = (
                {"subifds": len(scales) - 1, "resolution": (4e4, 4e4), "resolutionunit": "CENTIMETER"}
                if level == 0
                else {"subfiletype": 1}
            )
            tif.write(_tiles(side, scale), shape=(side, side, 3), **options, **extra)
    return len(scales)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process so far; Linux reports kilobytes, macOS bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class RecordingSegmenter(Segmenter):
    """A Segmenter that notes the RSS as each block starts."""

    rss: list[float]

    def segment(self, image: np.ndarray, points=None) -> Segmentation:
        self.rss.append(rss_mb())
        return super().segment(image, points)

    def with_options(self, **changes) -> RecordingSegmenter:
        derived = super().with_options(**changes)
        derived.rss = self.rss  # segment_slide's own settings (pixel size, channel) record into the same list
        return derived


def load_model(path: str | None) -> tuple[SegmentAnyCell, str]:
    """The given checkpoint, else the shipped model, else an untrained tiny one (same memory and speed)."""
    try:
        return SegmentAnyCell.load(path).prepare_for_inference(), path or "shipped"
    except InputError:
        if path is not None:
            raise
    torch.manual_seed(0)  # an untrained model's output, and so the nuclei count and time, depend on its init
    return SegmentAnyCell(SACConfig()).prepare_for_inference(), "untrained tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="slide side in pixels (default: 20000)")
    parser.add_argument("--block", type=int, default=2048, help="segment_slide block (default: 2048)")
    parser.add_argument(
        "--halo", type=int, help="segment_slide halo (default: the model's, sac.wsi.object_halo)"
    )
    parser.add_argument("--model", help="checkpoint folder (default: shipped, else an untrained tiny model)")
    parser.add_argument("--workdir", help="keep the slide and outputs here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        slide = workdir / f"synthetic_{args.size}.tif"
        start = time.perf_counter()
        levels = write_slide(slide, args.size)
        print(
            f"wrote {slide} ({levels} levels, {slide.stat().st_size / 2**20:.0f} MB) in "
            f"{time.perf_counter() - start:.0f} s, RSS {rss_mb():.0f} MB"
        )

        model, model_name = load_model(args.model)
        recorder = RecordingSegmenter(model, instances="fast")
        recorder.rss = []
        rss_before = rss_mb()
        start = time.perf_counter()
        halo = object_halo(model.config) if args.halo is None else args.halo
        summary = segment_slide(recorder, slide, workdir / "out", block=args.block, halo=halo)
        wall = time.perf_counter() - start

    samples = recorder.rss
    picks = sorted({round(i * (len(samples) - 1) / 4) for i in range(5)})
    by_block = ", ".join(f"block {i + 1}: {samples[i]:.0f}" for i in picks)
    whole_image_gb = args.size**2 * (3 + 4 * 4) / 2**30  # RGB + three maps + blending weights, float32
    print(f"{summary['nuclei']} nuclei in {summary['blocks']} blocks, {wall:.0f} s")
    print(f"RSS before: {rss_before:.0f} MB, peak: {peak_rss_mb():.0f} MB; at {by_block} (MB)")
    print(f"(predicting the whole image at once would hold about {whole_image_gb:.1f} GB of maps)")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    print("\n| date | machine | slide | block/halo | model | time | peak RSS | RSS first → last block |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {datetime.date.today()} | {machine} | {args.size}² px | {args.block}/{halo} | {model_name} "
        f"| {wall:.0f} s | {peak_rss_mb():.0f} MB | {samples[0]:.0f} → {samples[-1]:.0f} MB |"
    )


if __name__ == "__main__":
    main()
