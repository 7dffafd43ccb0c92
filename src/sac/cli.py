"""The ``sac`` command: ``weights``, ``train``, ``predict``, ``evaluate``."""

from __future__ import annotations

import argparse
import sys

from sac.io import InputError
from sac.tiling import DEFAULT_OVERLAP


def _weights(args: argparse.Namespace) -> int:
    from sac.weights import fetch_checkpoint

    print(fetch_checkpoint(args.name))
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from sac.train import TrainConfig, resume, train

    if args.resume:
        result = resume(args.resume, args.max_steps)
    else:
        settings: dict = {}
        if args.config:
            try:
                with open(args.config) as handle:
                    settings = json.load(handle)
            except (OSError, json.JSONDecodeError) as error:
                raise InputError(f"{args.config}: cannot read training config ({error})") from None
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if set(settings) - known:
            raise InputError(f"{args.config}: unknown keys {sorted(set(settings) - known)}")
        flags = {k: v for k, v in vars(args).items() if k in known and v is not None}
        if isinstance(flags.get("datasets"), str):
            flags["datasets"] = flags["datasets"].split(",")
        result = train(TrainConfig(**{**settings, **flags}))
    print(json.dumps(result))
    return 0


def _add_train_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune SAC (generator + encoder LoRA + decoder) on a dataset",
        description="Flags override values from --config; --resume continues an interrupted run.",
    )
    parser.add_argument("--config", help="JSON file with TrainConfig fields")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_argument(
        "--dataset", dest="datasets", help="monuseg, dsb2018, glas or folder; several joined by commas"
    )
    parser.add_argument("--data-root", help="datasets folder (default: $SAC_DATA or ../shared/data)")
    parser.add_argument(
        "--backbone", help="preset (tiny, small, vit_b, ...), official .pth, folder or hub id"
    )
    parser.add_argument("--encoder-mode", choices=["frozen", "lora", "full"])
    parser.add_argument("--image-size", type=int, help="SAM input size = training crop size")
    parser.add_argument("--lora-rank", type=int)
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="start from a SAC checkpoint folder, or 'default' for the shipped model (its architecture is kept)",
    )
    parser.add_argument("--num-points", type=int, help="positive and negative points per image, each")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="run folder (checkpoints, log.csv, curve.png)")
    parser.set_defaults(run=_train)


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The model and tiling options ``predict`` and ``evaluate`` share, so both run a model the same way."""
    parser.add_argument("--model", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--tile", type=int, help="tile size in pixels (default: the model's input size)")
    parser.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help=f"tile overlap in pixels (default: {DEFAULT_OVERLAP})",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="nuclei probability cut-off")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|mps", help="default: auto")


def _load_model(path: str | None, device: str):
    """The checkpoint at ``path`` (else the shipped model) on ``device``, with LoRA merged for speed."""
    from sac.inference import resolve_device
    from sac.model import CONFIG_FILE, SegmentAnyCell, default_model_path

    if path is None and not (default_model_path() / CONFIG_FILE).is_file():
        raise InputError(
            f"{default_model_path()}: no model ships with this sac installation yet; "
            "pass --model CHECKPOINT_DIR (a folder written by sac train)"
        )
    return SegmentAnyCell.load(path, device=resolve_device(device)).prepare_for_inference()


def _predict(args: argparse.Namespace) -> int:
    from sac.inference import predict_files
    from sac.wsi import segment_slides, split_slides

    # before loading the model, so a mistyped path fails at once
    images, slides = split_slides(args.inputs, force=args.wsi)
    paths = images + slides
    options = {
        "instances": args.instances or False,
        "points_file": args.points,
        "tile": args.tile,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "threshold": args.threshold,
    }
    if args.workers is not None or args.dask is not None:
        from sac.distributed import predict_many

        failures = predict_many(
            args.model,
            paths,
            args.output,
            workers=args.workers,
            scheduler=args.dask,
            device=args.device,
            wsi=args.wsi,
            level=args.level,
            **options,
        )
    else:
        model = _load_model(args.model, args.device)
        failures = predict_files(model, images, args.output, **options) if images else []
        failures += segment_slides(model, slides, args.output, level=args.level, **options)
    if failures:
        # listed again at the end, where they cannot scroll away behind a long batch's progress output
        print(f"sac: {len(failures)} of {len(paths)} images failed:", file=sys.stderr)
        for _, message in failures:
            print(f"sac:   {message}", file=sys.stderr)
        return 1
    print(f"segmented {len(paths)} images into {args.output}")
    return 0


def _add_predict_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="segment images: masks, and with --instances label TIFFs, CSV tables, GeoJSON and overlays",
        description="Put --instances after the inputs (or write --instances=sam), since its value is optional.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the outputs")
    parser.add_argument("--points", metavar="FILE", help="manual prompts: CSV x,y,label or JSON")
    parser.add_argument(
        "--instances",
        nargs="?",
        const="fast",
        metavar="fast|sam",
        help="also separate nuclei: fast (watershed, the default) or sam (one SAM prompt per nucleus)",
    )
    _add_inference_options(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default: 4)")
    parser.add_argument(
        "--wsi",
        action="store_true",
        help="stream every input as a whole-slide image (automatic for SVS and TIFFs over 8192 px a side)",
    )
    parser.add_argument("--level", type=int, default=0, help="slide pyramid level (default: 0, full size)")
    parser.add_argument("--workers", type=int, metavar="N", help="run on N local dask worker processes")
    parser.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="run on a dask.distributed cluster")
    parser.set_defaults(run=_predict)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from sac.data import load_dataset
    from sac.evaluate import evaluate_model
    from sac.io import atomic_write

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    samples = load_dataset(args.dataset, args.data_root, args.split)[: args.limit]
    model = _load_model(args.model, args.device)
    result = evaluate_model(
        model,
        samples,
        instances=args.instances,
        tile=args.tile,
        overlap=args.overlap,
        threshold=args.threshold,
    )
    for key, value in result["summary"].items():
        print(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")
    if args.json:
        report = {
            "model": args.model or "shipped",
            "dataset": args.dataset,
            "split": args.split,
            "instances": args.instances,
            **result,
        }
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0


def _add_evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="score a model on a labelled dataset (Dice, AJI, PQ, F1)")
    parser.add_argument("--dataset", required=True, help="monuseg, dsb2018, glas or folder")
    parser.add_argument("--data-root", help="datasets folder (default: $SAC_DATA or ../shared/data)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--instances", default="fast", metavar="fast|sam", help="default: fast")
    parser.add_argument("--json", metavar="OUT", help="also write the summary and per-image metrics here")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    _add_inference_options(parser)
    parser.set_defaults(run=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sac", description="Segment Any Cell: automatic nuclei segmentation with SAM"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    weights = commands.add_parser("weights", help="official SAM checkpoints")
    weights_commands = weights.add_subparsers(dest="action", required=True)
    fetch = weights_commands.add_parser(
        "fetch", help="download an official checkpoint to the cache (sha256-checked)"
    )
    fetch.add_argument("name", choices=["vit_b", "vit_l", "vit_h"])
    fetch.set_defaults(run=_weights)
    _add_train_parser(commands)
    _add_predict_parser(commands)
    _add_evaluate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputError as error:
        print(f"sac: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
