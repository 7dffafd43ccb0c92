"""Magnification: the MoNuSeg test set at 1x, 0.75x and 0.5x scale (a 40x scan seen as 30x and 20x; ``--scales``
adds others, e.g. 0.25 for 10x), segmented with the pixel size given, estimated (``auto``, no pixel size known) and
ignored (``native``).

Images are downscaled with area averaging, masks with nearest neighbour. Targets: with the pixel size given, AJI
at 0.5x at least 0.97 of the 1x AJI; with ``auto``, at least 0.93.

    python benchmarks/magnification.py --json benchmarks/results/magnification.json   # ~10 min on 2 cores
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

import torch

from sac.data import load_dataset, rescale_sample
from sac.evaluate import evaluate_model
from sac.io import write_json
from sac.segmenter import Segmenter
from speed import matmul_gflops

SCALES = (1.0, 0.75, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--data-root")
    parser.add_argument("--limit", type=int, help="only the first N test images")
    parser.add_argument(
        "--scales", default=",".join(map(str, SCALES)), help="comma-separated; 1 for the ratio column"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenter = Segmenter.load(args.model, instances="fast")
    samples = load_dataset("monuseg", args.data_root, "test")[: args.limit]
    rows = []
    for scale in (float(value) for value in args.scales.split(",")):
        scaled = [rescale_sample(sample, scale) for sample in samples]
        unknown = [dataclasses.replace(sample, mpp=None) for sample in scaled]
        for setting, chosen, data in (
            ("given", segmenter.with_options(mpp=scaled[0].mpp), scaled),
            ("auto", segmenter, unknown),
            ("native", segmenter.with_options(mpp="native"), unknown),
        ):
            started = time.perf_counter()
            summary = evaluate_model(chosen, data, progress=False)["summary"]
            seconds = (time.perf_counter() - started) / len(data)
            rows.append(
                {"scale": scale, "mpp": setting, "seconds_per_image": round(seconds, 2)}
                | {key: summary[key] for key in ("dice", "aji", "pq")}
            )
            print(json.dumps(rows[-1]), flush=True)
    base = {row["mpp"]: row["aji"] for row in rows if row["scale"] == 1}
    lines = [
        f"MoNuSeg test ({len(samples)} images), {datetime.date.today()}, {platform.machine()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, matmul {matmul_gflops():.0f} GFLOP/s)",
        "",
        "| scale | pixel size | Dice | AJI | PQ | AJI / 1x AJI | s per image |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = [f"{r['aji'] / base[r['mpp']]:.3f}" if base else "" for r in rows]
    lines += [
        f"| {r['scale']:g}x | {r['mpp']} | {r['dice']:.3f} | {r['aji']:.3f} | {r['pq']:.3f} | {ratio} | "
        f"{r['seconds_per_image']:.1f} |"
        for r, ratio in zip(rows, ratios, strict=True)
    ]
    print("\n".join(lines))
    if args.json:
        write_json(args.json, {"rows": rows, "table": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
