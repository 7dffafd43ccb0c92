"""The ``sac`` command: ``weights``, ``train``, ``predict``, ``evaluate``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from sac.io import InputError
from sac.options import SegmentOptions

DEFAULTS = SegmentOptions()


def _shipped_defaults(name: str, used_with: str | None = None) -> str:
    """A setting of each shipped model (``nuclei 0.2, glands 0.15``), so ``--help`` states the models' own
    values without loading torch; with ``used_with``, only of the models where that part is switched on."""
    values = [
        (model, config.get(name))
        for model, config in _shipped_configs().items()
        if used_with is None or config.get(used_with)
    ]
    return ", ".join(f"{model} {value:g}" for model, value in values if value is not None)


@functools.cache
def _shipped_configs() -> dict[str, dict]:
    """Each shipped model's configuration, read once from its config.json (the parser asks for several)."""
    models = sorted(Path(__file__).parent.joinpath("models").glob("*/config.json"))
    return {path.parent.name: json.loads(path.read_text())["model"] for path in models}


def _weights(args: argparse.Namespace) -> int:
    from sac.download import fetch_checkpoint

    print(fetch_checkpoint(args.name))
    return 0


def _train(args: argparse.Namespace) -> int:
    from sac.train import TrainConfig, resume, train

    if args.resume:
        ignored = [
            flag
            for flag in (*TRAIN_FLAGS, "config")
            if flag != "max_steps" and vars(args).get(flag) is not None
        ]
        if ignored:
            flags = ", ".join(
                "--" + flag.replace("_", "-").replace("datasets", "dataset") for flag in ignored
            )
            print(f"sac: --resume continues the run as it was configured; ignoring {flags}", file=sys.stderr)
        run_dir, start = args.resume, lambda: resume(args.resume, args.max_steps)
    else:
        settings: dict = {}
        if args.config:
            try:
                with open(args.config) as handle:
                    settings = json.load(handle)
            except (OSError, json.JSONDecodeError) as error:
                raise InputError(f"{args.config}: cannot read training config ({error})") from None
        TrainConfig.from_dict(settings, str(args.config))  # the file's own mistakes, named as its own
        flags = {k: v for k, v in vars(args).items() if k in TRAIN_FLAGS and v is not None}
        if isinstance(flags.get("datasets"), str):
            flags["datasets"] = flags["datasets"].split(",")
        config = TrainConfig.from_dict({**settings, **flags}, "command line")
        run_dir, start = config.out, lambda: train(config)
    try:
        result = start()
    except KeyboardInterrupt:  # the run keeps its last checkpoint: say how to go on instead of a traceback
        print(
            f"sac train: interrupted; `sac train --resume {run_dir}` continues from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    print(json.dumps(result))
    return 0


# sac train flags that set TrainConfig (or, for the model's, its SACConfig) fields of the same name
TRAIN_FLAGS = (
    "datasets",
    "data_root",
    "backbone",
    "encoder_mode",
    "image_size",
    "lora_rank",
    "init",
    "num_points",
    "mpp",
    "batch_size",
    "epochs",
    "max_steps",
    "lr",
    "seed",
    "train_only",
    "out",
)


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
        "--dataset",
        dest="datasets",
        help="folder (--data-root DIR) or datasets under the data folder (monuseg, dsb2018, consep, cryonuseg, "
        "glas); several joined by commas",
    )
    parser.add_argument("--data-root", help="datasets folder; none: $SAC_DATA, else ../shared/data")
    parser.add_argument(
        "--backbone", help="preset (tiny, small, vit_b, ...), official .pth, folder or hub id"
    )
    parser.add_argument(
        "--encoder-mode",
        choices=["frozen", "lora", "full"],
        help="how the SAM encoder trains: LoRA adapters (the paper), frozen (decoder-only) or every weight",
    )
    parser.add_argument("--image-size", type=int, help="SAM input size = training crop size")
    parser.add_argument("--lora-rank", type=int, help="rank of the LoRA update B·A")
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="start from a shipped model (nuclei, glands) or a SAC checkpoint folder (its architecture is kept)",
    )
    parser.add_argument("--num-points", type=int, help="positive and negative points per image, each")
    parser.add_argument(
        "--mpp",
        type=float,
        help="pixel size (µm/px) the trained model works at, to which training images are resampled (their own "
        "pixel sizes come from the dataset)",
    )
    parser.add_argument("--batch-size", type=int, help="training crops per optimiser step")
    parser.add_argument("--epochs", type=int, help="passes over the training images")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--lr", type=float, help="peak learning rate (lower by default with --init)")
    parser.add_argument("--seed", type=int, help="random seed; it also draws the validation split")
    parser.add_argument(
        "--train-only",
        type=lambda text: text.split(","),
        metavar="PART[,PART]",
        help="train only these parts of the model (e.g. click_head: better answers to clicks, every automatic "
        "output unchanged); default: all",
    )
    parser.add_argument(
        "-o", "--output", "--out", dest="out", help="run folder (checkpoints, log.csv, curve.png)"
    )
    parser.set_defaults(run=_train)


def _add_pack_parser(commands) -> None:
    parser = commands.add_parser(
        "pack",
        help="pack datasets' training splits into one zip, to train on another machine",
        description="The zip holds the shared data layout (images as JPEG, labels as 16-bit PNG, pixel sizes); "
        "sac train --data-root FILE.zip reads it. Test splits are never packed.",
    )
    parser.add_argument("--dataset", dest="datasets", required=True, help="datasets, joined by commas")
    parser.add_argument("--data-root", help="datasets folder; none: $SAC_DATA, else ../shared/data")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.zip")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the packed images")
    parser.set_defaults(run=_pack)


def _pack(args: argparse.Namespace) -> int:
    from sac.data import PACK_LIMIT_MIB, pack_datasets
    from sac.io import check_output_file

    if not args.output.endswith(".zip"):
        raise InputError(f"{args.output}: the packed data is a zip; name it FILE.zip")
    if not 1 <= args.quality <= 100:
        raise InputError(f"--quality {args.quality}: expected 1-100")
    check_output_file(args.output)
    size = pack_datasets(args.datasets.split(","), args.output, args.data_root, args.quality) / 2**20
    print(f"{args.output}: {size:.1f} MiB")
    if size > PACK_LIMIT_MIB:
        print(f"sac: warning: above {PACK_LIMIT_MIB} MiB; a lower --quality packs smaller", file=sys.stderr)
    return 0


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The model and segmentation options ``predict`` and ``evaluate`` share, so both run a model the same way."""
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="a shipped model: nuclei (the default; H&E and fluorescence nuclei) or glands (colon H&E glands), "
        "or a checkpoint folder written by sac train",
    )
    parser.add_argument(
        "--mpp",
        default=DEFAULTS.mpp,
        metavar="UM|auto|native",
        help="the images' pixel size in µm (e.g. 0.25 at 40x, 0.5 at 20x); auto: the file's record, "
        "else estimated from the nuclei; native: never resample",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=DEFAULTS.overlap,
        help="tile overlap in pixels",
    )
    parser.add_argument(
        "--threshold", type=float, default=DEFAULTS.threshold, help="nuclei probability cut-off"
    )
    parser.add_argument(
        "--seed-threshold",
        type=float,
        help="watershed seeds from the centre map: higher splits touching nuclei more, lower merges more "
        f"(default: the model's; {_shipped_defaults('seed_threshold')})",
    )
    parser.add_argument(
        "--seed-depth",
        type=float,
        help="split a seed between two centre-map peaks whose valley is this deep below the lower one; 0: never "
        f"(default: the model's; {_shipped_defaults('seed_depth')})",
    )
    parser.add_argument(
        "--hv-weight",
        type=float,
        help="for a model with horizontal/vertical maps: how far the boundaries they show between touching "
        "nuclei lower the centre map before seeds are cut; 0: not used (default: the model's; "
        f"{_shipped_defaults('hv_weight', used_with='hv_maps')})",
    )
    parser.add_argument(
        "--min-size",
        type=float,
        help="drop objects smaller than this, µm² (pixel size unknown: the estimated one, else the model's; "
        f"default: the model's; {_shipped_defaults('min_size')})",
    )
    parser.add_argument("--max-size", type=float, help="drop nuclei larger than this, µm²")
    parser.add_argument(
        "--exclude-edges", action="store_true", help="drop nuclei that touch the image border"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="tiles per forward pass")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|mps", help="where the model runs")
    views = parser.add_mutually_exclusive_group()
    views.add_argument(
        "--tta",
        nargs="?",
        const=8,
        action=_OptionalValueAction,
        metavar="VIEWS",
        help="average the maps over this many views of the image, each as costly as one: 2 (with its mirror), "
        "4 or 8 (every flip and quarter turn; the flag alone); default: the model's",
    )
    views.add_argument("--no-tta", dest="tta", action="store_const", const=1, help="one view: no averaging")


def _segment_options(args: argparse.Namespace) -> SegmentOptions:
    """The one SegmentOptions of a ``predict`` or ``evaluate`` command, checked before any model work."""
    return SegmentOptions(
        instances=args.instances or None,
        threshold=args.threshold,
        seed_threshold=args.seed_threshold,
        seed_depth=args.seed_depth,
        hv_weight=args.hv_weight,
        min_size=args.min_size,
        max_size=args.max_size,
        exclude_edges=args.exclude_edges,
        channel=getattr(args, "channel", None),
        tta=args.tta,
        mpp=args.mpp,
        overlap=args.overlap,
        batch_size=args.batch_size,
        progress=True,
    )


def _load_segmenter(args: argparse.Namespace, options):
    """The checkpoint at ``--model`` (else the shipped model) on ``--device``, with LoRA merged for speed."""
    from sac.model import CONFIG_FILE, SHIPPED_MODELS, model_path
    from sac.segmenter import Segmenter

    shipped = args.model is None or args.model in SHIPPED_MODELS
    if shipped and not (model_path(args.model) / CONFIG_FILE).is_file():
        raise InputError(
            f"{model_path(args.model)}: the {args.model or 'default'} model does not ship with this sac "
            "installation; pass --model CHECKPOINT_DIR (a folder written by sac train)"
        )
    return Segmenter.load(args.model, args.device, options=options)


def _predict(args: argparse.Namespace) -> int:
    from sac.io import check_output_dir

    options = _segment_options(args)
    args.inputs = [*getattr(args, "stray_inputs", []), *args.inputs]
    if args.sample:
        from sac.data import sample_path

        args.inputs = [*args.inputs, *(sample_path(name) for name in args.sample)]
    if not args.inputs:
        raise InputError("no input: give image files or folders, or --sample he|fluo")
    # the commonest mistakes, a mistyped input or output, fail before torch and the model's libraries load
    missing = [str(item) for item in args.inputs if not Path(item).exists()]
    if missing:
        raise InputError(f"{', '.join(missing)}: no such file or folder")
    check_output_dir(args.output)
    from sac.pipeline import RunOptions, check_run, segment_files
    from sac.progress import on_terminal

    run = RunOptions(
        points_file=args.points,
        slides=args.wsi,
        level=args.level,
        recursive=args.recursive,
        save=None if args.save is None else [name.strip() for name in args.save.split(",") if name.strip()],
        expand_cells=args.expand_cells,
        resume=args.resume,
    )
    # before loading the model, so a mistyped path or an unwritable output fails at once
    count = len(check_run(args.inputs, args.output, run, options))
    try:
        if args.workers is not None or args.dask is not None:
            from sac.distributed import predict_many

            failures = predict_many(
                args.model, args.inputs, args.output, options, run, args.workers, args.dask, args.device
            )
        else:
            failures = segment_files(_load_segmenter(args, options), args.inputs, args.output, run)
    except KeyboardInterrupt:
        new_line = "\n" if on_terminal() else ""  # below a progress bar drawn in place
        print(
            f"{new_line}sac predict: interrupted; the same command with --resume segments the images it did not "
            "finish (a slide from its last finished block)",
            file=sys.stderr,
        )
        return 130
    if failures:
        # listed again at the end, where they cannot scroll away behind a long batch's progress output
        print(f"sac: {len(failures)} of {count} image{'s' * (count != 1)} failed:", file=sys.stderr)
        for _, message in failures:
            print(f"sac:   {message}", file=sys.stderr)
        return 1
    print(f"segmented {count} image{'s' * (count != 1)} into {args.output}")
    return 0


class _OptionalValueAction(argparse.Action):
    """A flag whose value may be left out (``--instances [fast|sam]``, ``--tta [VIEWS]``): a value that names an
    existing file or folder is an input that happened to follow the flag (``sac predict --tta img.png -o out``).
    Other values, typos included, go to SegmentOptions, which checks them."""

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, str) and Path(values).exists():  # argparse gives const when no value follows
            namespace.stray_inputs = [*getattr(namespace, "stray_inputs", []), values]
            values = self.const
        setattr(namespace, self.dest, values)


def _add_predict_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="segment images: masks, and with --instances label TIFFs, CSV tables, GeoJSON and overlays",
        description="Segment image files, folders and slides; see README.md for the outputs.",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    parser.add_argument(
        "--sample",
        action="append",
        choices=["he", "fluo"],
        help="segment a sample image bundled with sac (H&E or fluorescence); may be repeated",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the outputs")
    parser.add_argument(
        "--points",
        metavar="FILE|DIR",
        help="clicks: CSV x,y,label[,image], JSON, napari's points CSV, QuPath's points GeoJSON or Fiji's point "
        "selections (.roi, ROI Manager .zip), or a folder of <image stem>.csv|json|geojson|roi|zip; a positive "
        "click (1) adds "
        "the nucleus under it, a negative click (0) removes the object under it; slides: level-0 pixels",
    )
    parser.add_argument(
        "--instances",
        nargs="?",
        const="fast",
        action=_OptionalValueAction,
        metavar="fast|sam",
        help="also separate nuclei: fast (watershed, when no mode is given) or sam (one SAM prompt per nucleus)",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also take images in subfolders of folders; their outputs go to the same subfolders of -o",
    )
    parser.add_argument(
        "--save",
        metavar="LIST",
        help="outputs to write, comma-separated from mask, prob (float16 probability TIFF), labels, table, "
        "geojson, overlay, cells (with --expand-cells); default: mask, and with --instances labels, table, "
        "geojson, overlay; all but mask and prob need --instances",
    )
    parser.add_argument(
        "--expand-cells",
        type=float,
        metavar="DISTANCE",
        help="also cell objects: nuclei grown by DISTANCE (µm when the pixel size is known, else px) into "
        "_cells.tif and QuPath cells in the GeoJSON",
    )
    parser.add_argument(
        "--channel", help="the channel to segment, by index or OME channel name (e.g. 1 or DAPI); see README"
    )
    _add_inference_options(parser)
    parser.add_argument(
        "--wsi",
        action="store_true",
        help="stream every input as a whole-slide image (automatic for SVS and TIFFs over 8192 px a side)",
    )
    parser.add_argument(
        "--level",
        type=int,
        help="slide pyramid level (default: the level closest to the model's pixel size, else 0)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same -o: the images it finished (listed in its sac_summary.csv) "
        "are not segmented again, and an unfinished slide goes on from its last finished block; refused if the "
        "model or a setting changed",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="run on N local dask worker processes")
    parser.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="run on a dask.distributed cluster")
    parser.set_defaults(run=_predict)


def _evaluate(args: argparse.Namespace) -> int:
    from sac.data import load_dataset
    from sac.evaluate import evaluate_model
    from sac.io import check_output_file, write_json
    from sac.model import model_record
    from sac.pipeline import provenance

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    options = _segment_options(args)
    if args.json:
        check_output_file(args.json)
    samples = load_dataset(args.dataset, args.data_root, args.split)[: args.limit]
    segmenter = _load_segmenter(args, options)
    glands = segmenter.model.config.objects == "glands"  # a folder of glands is scored as GlaS is
    print(
        f"sac evaluate: model {args.model or 'nuclei (shipped)'} (weights sha256 "
        f"{segmenter.model.meta['weights_sha256'][:12]}), dataset {args.dataset}"
        f"{f' ({args.data_root})' if args.dataset == 'folder' else f', split {args.split}'}, "
        f"{len(samples)} image{'s' * (len(samples) != 1)}, instances {options.instances}, pixel size {options.mpp}, "
        f"TTA {f'{segmenter.tta} views' if segmenter.tta > 1 else 'off'}"
    )
    result = evaluate_model(segmenter, samples, glands=glands)
    for name, summary in [("all", result["summary"]), *result.get("parts", {}).items()]:
        if "parts" in result:
            print(f"-- {name}")
        for key, value in summary.items():
            print(f"{key:<24} {value:.4f}" if isinstance(value, float) else f"{key:<24} {value}")
    print(GLAND_METRICS_LEGEND if glands else METRICS_LEGEND)
    if args.json:
        report = {
            "model": args.model or "shipped",
            "dataset": args.dataset,
            "data_root": args.data_root,
            "split": args.split,
            "instances": options.instances,
            "tta": segmenter.tta,
            "run": provenance(model_record(segmenter.model), options),
            **result,
        }
        write_json(args.json, report)
    return 0


METRICS_LEGEND = """\
Dice, IoU: of the predicted labels' foreground with the ground truth's, mean per image (pooled_*: over all pixels).
AJI: aggregated Jaccard index of the instances. Precision, recall and F1 count a prediction as matching a true
nucleus at IoU 0.5 or more; DQ (detection quality) is the same F1 with IoU above 0.5 (PQ's rule), SQ (segmentation
quality) the mean IoU of DQ's matched pairs, and PQ = DQ x SQ (panoptic quality)."""
GLAND_METRICS_LEGEND = """\
Dice, IoU: of the predicted labels' foreground with the ground truth's, mean per image. GlaS challenge metrics
(Sirinukunwattana et al. 2017): a predicted gland is a true positive when it covers more than half of the true gland
it overlaps most; object precision, recall and F1 count those. Object Dice and object Hausdorff (pixels) pair each
gland, on both sides, with its largest-overlap partner, weighted by its area. object_*: mean of the images' values;
pooled_object_*: as the challenge computes them, every gland of the set counting once (the published figures).
aji, dq/sq/pq, precision/recall/f1: the nuclei metrics (one-to-one matches at IoU 0.5), for comparison only."""


def _add_evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="score a model on a labelled dataset (Dice, AJI, PQ, F1)")
    parser.add_argument(
        "--dataset",
        required=True,
        help="samples (the bundled images), folder (--data-root DIR), or a dataset under the data folder: "
        "monuseg, dsb2018, consep, cryonuseg, glas",
    )
    parser.add_argument("--data-root", help="datasets folder; none: $SAC_DATA, else ../shared/data")
    parser.add_argument("--split", default="test", help="dataset split")
    parser.add_argument(
        "--instances",
        nargs="?",
        const="fast",
        default="fast",
        action=_OptionalValueAction,
        metavar="fast|sam",
        help="instance mode: fast (watershed, also when no mode is given) or sam (one SAM prompt per nucleus)",
    )
    parser.add_argument(
        "-o",
        "--output",
        "--json",
        dest="json",
        metavar="FILE.json",
        help="also write the summary and per-image metrics here",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    _add_inference_options(parser)
    parser.set_defaults(run=_evaluate)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default in --help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from sac import __version__

    parser = _SubParser(prog="sac", description="Segment Any Cell: automatic nuclei segmentation with SAM")
    parser.add_argument("--version", action="version", version=f"sac {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_SubParser)

    weights = commands.add_parser("weights", help="official SAM checkpoints")
    weights_commands = weights.add_subparsers(dest="action", required=True, parser_class=_SubParser)
    fetch = weights_commands.add_parser(
        "fetch", help="download an official checkpoint to the cache (sha256-checked)"
    )
    fetch.add_argument("name", choices=["vit_b", "vit_l", "vit_h"])
    fetch.set_defaults(run=_weights)
    _add_train_parser(commands)
    _add_pack_parser(commands)
    _add_predict_parser(commands)
    _add_evaluate_parser(commands)
    return parser


class _SubParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A mistyped option in one line, like every other bad input (argparse prints its whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    import warnings

    from tqdm import tqdm

    from sac.progress import on_terminal

    # one line each; on a line of its own when a progress bar is being redrawn in place
    warnings.formatwarning = lambda message, *_: (
        ("\n" if getattr(tqdm, "_instances", None) and on_terminal() else "") + f"sac: warning: {message}\n"
    )
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputError as error:
        print(f"sac: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so nothing half-written is left
        print("\nsac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
