"""Speed and memory of `sac predict` on this machine, with the machine's matmul throughput for scale.

    python benchmarks/speed.py [--model DIR] [--sizes 1000,2000,4000,8000] [--slide 10000]

Reports: end-to-end time for a 1000x1000 H&E image (read, prompts, SAM, mask, write) semantic and with instances,
with the model's own test-time augmentation and with one view and eight;
where the time goes (generator, encoder, prompts, decoder, fusion, post-processing, writing); how time and peak
RSS grow with image area (each size in a fresh process); and peak RSS of a whole-slide run streamed block by block.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from sac.data import default_data_root, load_dataset
from sac.model import SegmentAnyCell
from sac.pipeline import segment_files
from sac.segmenter import Segmenter
from sac.tiling import DEFAULT_OVERLAP, tile_grid


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


IMAGE_MPP = 0.25  # MoNuSeg's 40x pixel size, µm


def load_model(path: str | None) -> Segmenter:
    """The model, told the test image's pixel size as a scanner's file would tell it: the timings are of the
    model, not of ``--mpp auto``'s first pass (which, should its estimate rescale, runs the maps twice)."""
    return Segmenter.load(path, mpp=IMAGE_MPP)


def he_image(size: int) -> np.ndarray:
    """A MoNuSeg test image, mirrored out to ``size`` when larger; synthetic disks when the data is absent."""
    root = default_data_root()
    if root is not None and (root / "monuseg").is_dir():
        base = load_dataset("monuseg", root, "test")[0].image
    else:
        rng = np.random.default_rng(0)
        base = np.full((1000, 1000, 3), (235, 200, 225), np.uint8)
        yy, xx = np.mgrid[:1000, :1000]
        for cy, cx in rng.integers(0, 1000, (400, 2)):
            base[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = (90, 40, 140)
    pad = max(0, size - base.shape[0])
    return np.pad(base, ((0, pad), (0, pad), (0, 0)), mode="symmetric")[:size, :size]


class Timers:
    """Accumulated wall time per model part, from forward hooks; parts nest (SAM's decoder is inside SAM)."""

    def __init__(self, model: SegmentAnyCell):
        self.seconds: dict[str, float] = defaultdict(float)
        parts = {
            "generator": model.generator,
            "encoder": model.sam.vision_encoder,
            "prompt encoder + decoder": model.sam.mask_decoder,
            "fusion head": model.fusion,
        }
        if model.hv_head is not None:
            parts["HV head"] = model.hv_head
        self._starts: dict[str, float] = {}
        for name, module in parts.items():
            module.register_forward_pre_hook(
                lambda *_, n=name: self._starts.__setitem__(n, time.perf_counter())
            )
            module.register_forward_hook(lambda *_, n=name: self._stop(n))
        import sac.model

        original = sac.model.sample_point_prompts

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds["point sampling"] += time.perf_counter() - started

        sac.model.sample_point_prompts = timed

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._starts[name]


def end_to_end(segmenter: Segmenter, image: np.ndarray, instances: bool, repeats: int = 5) -> dict:
    """Median and fastest of ``repeats`` runs, each next to a matmul measurement.

    Shared virtual machines change speed from minute to minute (matmul 29-69 GFLOP/s on the same 2 cores within
    an hour here), so every timing is reported with the throughput measured alongside it.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "he.png"
        Image.fromarray(image).save(path)
        segmenter = segmenter.with_options(instances=instances or None)
        segment_files(segmenter, [path], Path(folder) / "out", progress=False)  # warm-up
        times, gflops = [], []
        for _ in range(repeats):
            gflops.append(matmul_gflops(repeats=2))
            started = time.perf_counter()
            segment_files(segmenter, [path], Path(folder) / "out", progress=False)
            times.append(time.perf_counter() - started)
    return {"median": float(np.median(times)), "fastest": min(times), "gflops": float(np.median(gflops))}


def click_timings(segmenter: Segmenter, image: np.ndarray, clicks: int = 10, repeats: int = 3) -> list[str]:
    """Markdown rows: the time of answering ``clicks`` positive clicks (at nuclei the automatic pass found) on
    top of the automatic pass, in the model's click views and in one."""
    model, instances, rows = segmenter.model, segmenter.with_options(instances="fast"), []
    labels = instances.segment(image).labels
    centres = ndimage.center_of_mass(labels > 0, labels, np.arange(1, clicks + 1))
    points = (np.array(centres)[:, ::-1] + 0.5, None)  # (x, y)
    own = model.config
    for views in [0, *dict.fromkeys([own.click_views, 1])]:  # 0: no clicks
        model.config = dataclasses.replace(own, click_views=max(views, 1))
        try:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                instances.segment(image, points=points if views else None)
                times.append(time.perf_counter() - started)
        finally:
            model.config = own
        what = f"+ {clicks} positive clicks, {views} click view(s)" if views else "alone"
        rows.append(f"| automatic pass (watershed) {what} | {np.median(times):.2f} |")
    return ["| 1000x1000, in memory (median of 3) | seconds |", "|---|---|", *rows]


def scaling_child(model_path: str | None, size: int, instances: bool) -> None:
    """Runs in a fresh process: one image of ``size``^2 end to end; prints JSON with time and peak RSS."""
    segmenter = load_model(model_path).with_options(instances=instances or None)
    image = he_image(size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "he.tif"
        import tifffile

        tifffile.imwrite(path, image)
        del image
        started = time.perf_counter()
        segment_files(segmenter, [path], Path(folder) / "out", progress=False)
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--sizes", default="1000,2000,4000,8000", help="image sides for the scaling table")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--instances", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        scaling_child(args.model, args.child, args.instances)
        return 0
    segmenter = load_model(args.model)
    model = segmenter.model
    gflops = matmul_gflops()
    image = he_image(1000)
    own, one_view = f"the model's default, {segmenter.tta} view(s)", segmenter.with_options(tta=1)
    timed = {
        f"semantic mask ({own})": end_to_end(segmenter, image, instances=False),
        f"with instances (watershed) + labels, CSV, GeoJSON, overlay ({own})": end_to_end(
            segmenter, image, instances=True
        ),
    }
    if segmenter.tta > 1:
        timed["semantic mask, one view (--no-tta)"] = end_to_end(one_view, image, instances=False)
        timed["with instances and every output, one view (--no-tta)"] = end_to_end(
            one_view, image, instances=True
        )
    timed["with instances and every output, --tta (8 views; median of 3)"] = end_to_end(
        segmenter.with_options(tta=8), image, instances=True, repeats=3
    )
    click_lines = click_timings(segmenter, image)
    tiles = len(tile_grid(image.shape[:2], model.config.image_size, DEFAULT_OVERLAP))
    timers = Timers(model)
    with contextlib.redirect_stderr(None):
        started = time.perf_counter()
        maps = one_view.maps(image)
        predict_total = time.perf_counter() - started
    started = time.perf_counter()
    segmenter.instances(maps)
    post = time.perf_counter() - started
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, matmul {gflops:.0f} GFLOP/s (2048^2 float32); {datetime.date.today()}",
        f"Command: python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}",
        "",
        "| 1000x1000 H&E, end to end (read, prompts, SAM, mask, write) | seconds (median of 5) | fastest "
        "| matmul GFLOP/s alongside (median) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {run['median']:.2f} | {run['fastest']:.2f} | {run['gflops']:.0f} |"
            for name, run in timed.items()
        ),
        "",
        *click_lines,
        "",
        f"| where the time goes (1000x1000, {tiles} tiles of {model.config.image_size} px, one view) | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in timers.seconds.items()]
    lines += [
        f"| all of Segmenter.maps (incl. tiling and blending) | {predict_total:.3f} |",
        f"| instance post-processing (watershed) | {post:.3f} |",
        "",
        "| image | megapixels | seconds (semantic) | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for size in [int(s) for s in args.sizes.split(",")]:
        child = ["--child", str(size)] + (["--model", args.model] if args.model else [])
        result = run_child(child)
        lines.append(
            f"| {size}x{size} | {size * size / 1e6:.0f} | {result['seconds']:.1f} | {result['peak_rss_mb']:.0f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
