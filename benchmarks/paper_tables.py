"""The paper's comparison (Na et al. 2024, tables 1-3) rerun with one command.

Trains each variant for the same number of steps on the training split, then scores it on the test split:
SAM zero-shot (grid points, no training), decoder-only fine-tuning (SAM-FT, encoder frozen), the generator alone
(a U-Net), SAC, and ablations over the number of point pairs, negative points and LoRA rank.

    python benchmarks/paper_tables.py --datasets monuseg,dsb2018 --steps 300 --out runs/paper_tables

With ``--backbone tiny`` (default) every SAM is trained from scratch: no pretrained SAM weights are involved, so
"zero-shot" is an untrained network and only the relative ordering of fine-tuned variants is informative. Pass
``--backbone /path/sam_vit_b_01ec64.pth`` for the paper's setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sac.backbone import is_random
from sac.data import load_dataset, rescale_sample
from sac.instances import instances_from_maps
from sac.io import atomic_write, write_json
from sac.metrics import evaluate_image, summarize
from sac.model import MAP_NAMES, SACConfig, SegmentAnyCell
from sac.segmenter import Segmenter
from sac.train import TrainConfig, Trainer, load_training_data


@dataclasses.dataclass
class Variant:
    """One row: how to train (None: no training) and which map to score."""

    name: str
    train: dict | None
    map_name: str = "nuclei"
    grid_points: bool = False


# The pixel size a dataset's models work at, where it is not its own: GlaS at half resolution, so glands fit the view.
WORKING_MPP = {"glas": 1.24}


def variants(backbone: str, points: int, ablations: bool = True) -> list[Variant]:
    adapted = "full" if is_random(backbone) else "lora"
    sac = {"encoder_mode": adapted, "num_points": points}
    rows = [
        Variant("SAM zero-shot (grid points, no training)", None, "sam", grid_points=True),
        Variant(
            "SAM-FT (decoder only, encoder frozen)", {"encoder_mode": "frozen", "num_points": points}, "sam"
        ),
        Variant("U-Net (SAC's prompt generator alone)", sac, "generator"),
        Variant("SAC, SAM mask only (no fusion head)", sac, "sam"),
        Variant(f"SAC ({adapted} encoder, {points}+{points} points)", sac),
    ]
    if not ablations:
        return rows
    rows += [
        Variant(f"ablation: {k}+{k} points", {**sac, "num_points": k}) for k in (1, 3, 16) if k != points
    ]
    rows.append(Variant(f"ablation: {points}+0 points (no negatives)", {**sac, "num_negative": 0}))
    rows += [
        Variant(f"ablation: LoRA rank {r}", {"encoder_mode": "lora", "lora_rank": r, "num_points": points})
        for r in (1, 4, 16)
    ]
    return rows


def at_working_scale(samples: list, dataset: str) -> list:
    """Test samples resampled to the pixel size the dataset's models work at (unchanged for nuclei sets)."""
    if dataset not in WORKING_MPP:
        return samples
    return [rescale_sample(s, s.mpp / WORKING_MPP[dataset]) for s in samples]


def grid_prompts(shape: tuple[int, int], spacing: int) -> tuple[np.ndarray, None]:
    """Positive points on a regular grid: SAM's prompt-free 'segment everything' baseline."""
    ys, xs = np.mgrid[spacing // 2 : shape[0] : spacing, spacing // 2 : shape[1] : spacing]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32), None


def score(model: SegmentAnyCell, samples, variant: Variant) -> dict:
    channel = MAP_NAMES.index(variant.map_name)
    per_image = []
    for sample in samples:
        points = (
            grid_prompts(sample.image.shape[:2], model.config.image_size // 4)
            if variant.grid_points
            else None
        )
        maps = Segmenter(model).maps(sample.image, points=points, generate_points=not variant.grid_points)
        probability = maps[channel]
        labels = instances_from_maps(probability, maps[MAP_NAMES.index("centre")])
        metrics = evaluate_image(sample.labels, labels)
        semantic = evaluate_image(sample.labels, probability >= 0.5)
        metrics.update({k: semantic[k] for k in ("dice", "iou", "fg_intersection", "fg_total", "fg_union")})
        per_image.append(metrics)
    return summarize(per_image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="monuseg,dsb2018")
    parser.add_argument("--data-root")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--limit", type=int, help="score only the first N test images of each dataset")
    parser.add_argument("--only", help="comma-separated substrings: run only matching rows")
    parser.add_argument("--out", default="runs/paper_tables")
    parser.add_argument(
        "--model", help="instead of training: score this checkpoint's final, generator-only and SAM-only maps"
    )
    args = parser.parse_args(argv)
    if args.model:
        return score_checkpoint(args, argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    datasets = args.datasets.split(",")
    tests = {
        name: at_working_scale(load_dataset(name, args.data_root, "test")[: args.limit], name)
        for name in datasets
    }

    def rows_for(dataset: str) -> list[Variant]:  # the ablations are the paper's nuclei experiments
        chosen = variants(args.backbone, args.points, ablations=dataset not in WORKING_MPP)
        return [v for v in chosen if not args.only or any(s in v.name for s in args.only.split(","))]

    trained: dict[str, SegmentAnyCell] = {}
    results = []
    for dataset in datasets:
        for variant in rows_for(dataset):
            key = f"{dataset}:{json.dumps(variant.train, sort_keys=True)}"
            if key not in trained:
                trained[key] = build(variant, dataset, args, out / f"{dataset}-{len(trained)}")
            started = time.perf_counter()
            summary = score(trained[key], tests[dataset], variant)
            results.append({"dataset": dataset, "method": variant.name, **summary})
            print(
                f"{dataset:8s} {variant.name:50s} Dice {summary['dice']:.3f} AJI {summary['aji']:.3f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    write_tables(out, results, args, argv if argv is not None else sys.argv[1:])
    return 0


def score_checkpoint(args, argv: list[str]) -> int:
    """Which part of a trained model carries its quality: the fused output, the generator, or SAM's mask."""
    model = SegmentAnyCell.load(args.model).prepare_for_inference()
    results = []
    for dataset in args.datasets.split(","):
        samples = at_working_scale(load_dataset(dataset, args.data_root, "test")[: args.limit], dataset)
        for map_name, label in [
            ("nuclei", "SAC output"),
            ("generator", "generator alone"),
            ("sam", "SAM mask"),
        ]:
            summary = score(model, samples, Variant(f"{args.model}: {label}", None, map_name))
            results.append({"dataset": dataset, "method": f"{label} (`{args.model}`)", **summary})
            print(f"{dataset:8s} {label:20s} Dice {summary['dice']:.3f} AJI {summary['aji']:.3f}", flush=True)
    args.backbone, args.image_size, args.steps = model.config.backbone, model.config.image_size, 0
    write_tables(Path(args.out), results, args, argv)
    return 0


def build(variant: Variant, dataset: str, args, run_dir: Path) -> SegmentAnyCell:
    if variant.train is None:
        return SegmentAnyCell(SACConfig(backbone=args.backbone, image_size=args.image_size)).eval()
    config = TrainConfig.from_dict(
        {
            "datasets": [dataset],
            "data_root": args.data_root,
            "out": str(run_dir),
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "max_val_images": 0,
            "checkpoint_every": 10**9,
            "mpp": WORKING_MPP.get(dataset),
            **variant.train,
        }
    )
    trainer = Trainer(config, *load_training_data(config))
    trainer.run(progress=False)
    return trainer.model.eval()


def write_tables(out: Path, results: list[dict], args, argv: list[str]) -> None:
    lines = [
        f"Generated {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.platform()}) by:",
        "",
        f"    python benchmarks/paper_tables.py {shlex.join(argv)}",
        "",
        f"Backbone `{args.backbone}` at {args.image_size} px, {args.steps} training steps of batch {args.batch_size} "
        "per trained row; metrics on the test split"
        + (f" (first {args.limit} images of each)" if args.limit else "")
        + " (Dice/IoU: per-image mean of the semantic mask; AJI and PQ from watershed instances)."
        + (" No pretrained SAM weights were used." if is_random(args.backbone) else ""),
        "",
        "| dataset | method | Dice | IoU | AJI | PQ | F1@0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['dice']:.3f} | {r['iou']:.3f} | {r['aji']:.3f} | "
            f"{r['pq']:.3f} | {r['f1']:.3f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "paper_tables.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(out / "paper_tables.json", results)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
