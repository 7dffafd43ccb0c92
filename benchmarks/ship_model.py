"""Copy a trained checkpoint into the package as a shipped model, with its model card and data list.

    python benchmarks/ship_model.py runs/nuclei/best                 # the default model, sac/models/nuclei
    python benchmarks/ship_model.py runs/glands/best --name glands   # sac/models/glands
    python benchmarks/ship_model.py runs/f0/best --name glands --mpp 1.4 --out runs/f0_1.4   # as shipped, elsewhere

Writes src/sac/models/<name>/{model.safetensors, config.json, training_data.json, MODEL_CARD.md}; the checkpoint
is loaded first (sha256 and architecture checks) so a broken one is never shipped. The median nucleus area that
``--mpp auto`` compares with is measured on the shipped model's own outlines of its training images, with the
settings it ships with (the annotations' median when none of them records a pixel size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from sac.data import median_nucleus_area
from sac.export import OBJECT_CLASSES
from sac.model import CONFIG_FILE, SHIPPED_MODELS, WEIGHTS_FILE, SACConfig, SegmentAnyCell, model_path
from sac.options import TTA_VIEWS, tta_views
from sac.train import TrainConfig, load_training_data, outlined_nucleus_area

MAX_BYTES = 25 * 1024 * 1024
LICENCES = {
    "monuseg": "MoNuSeg 2018 (CC BY-NC-SA 4.0; Kumar et al., IEEE TMI 2017 and 2019)",
    "cryonuseg": "CryoNuSeg (CC BY-NC-SA 4.0; Mahbod et al., Computers in Biology and Medicine 2021)",
    "consep": "CoNSeP (Graham et al., HoVer-Net, Medical Image Analysis 2019; cite on use)",
    "dsb2018": "the Kaggle Data Science Bowl 2018 stage 1 training set (CC0, Broad Institute; Caicedo et al. 2019)",
    "glas": "GlaS (research use only, no commercial use; Sirinukunwattana et al., Medical Image Analysis 2017)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint folder inside a training run (e.g. RUN/best)"
    )
    parser.add_argument("--name", default="nuclei", choices=list(SHIPPED_MODELS))
    parser.add_argument("--command", default="", help="the training command, for the model card")
    parser.add_argument(
        "--init-note", help="where the weights started, for the model card (default: the run's --init)"
    )
    parser.add_argument(
        "--min-size", type=float, help="post-processing chosen on validation (postprocessing.py)"
    )
    parser.add_argument("--seed-threshold", type=float, help="post-processing chosen on validation")
    parser.add_argument("--seed-depth", type=float, help="post-processing chosen on validation")
    parser.add_argument("--hv-weight", type=float, help="post-processing chosen on validation")
    parser.add_argument(
        "--click-views",
        type=int,
        choices=TTA_VIEWS,
        help="views a click's answer is averaged over (validation)",
    )
    parser.add_argument(
        "--objects",
        choices=list(OBJECT_CLASSES),
        help="what the model segments (names its table, QuPath class)",
    )
    parser.add_argument(
        "--tta",
        nargs="?",
        type=int,
        const=8,
        choices=TTA_VIEWS,
        help="views test-time augmentation averages by default (the flag alone: 8; validation)",
    )
    parser.add_argument(
        "--estimate-scale",
        action=argparse.BooleanOptionalAction,
        help="whether --mpp auto may estimate a pixel size from object sizes (glands: no)",
    )
    parser.add_argument(
        "--mpp", type=float, help="the pixel size the model runs at, if not its training one (validation)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the model here instead of the package (e.g. a cross-validation fold run as it would ship)",
    )
    args = parser.parse_args(argv)
    model = SegmentAnyCell.load(args.checkpoint)
    weights = args.checkpoint / WEIGHTS_FILE
    if weights.stat().st_size > MAX_BYTES:
        raise SystemExit(
            f"{weights}: {weights.stat().st_size / 2**20:.1f} MB exceeds the 25 MB package budget"
        )
    run = args.checkpoint.parent
    train_config = json.loads((run / "train_config.json").read_text())
    config = TrainConfig.from_dict(train_config, new_run=False)
    train, val = load_training_data(config)
    target = args.out or model_path(args.name)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / WEIGHTS_FILE)
    meta = json.loads((args.checkpoint / CONFIG_FILE).read_text())
    if args.mpp is not None:
        meta["model"] = dataclasses.asdict(SACConfig.from_dict(meta["model"]).at_scale(args.mpp))
    for key in (
        "min_size",
        "seed_threshold",
        "seed_depth",
        "hv_weight",
        "click_views",
        "tta",
        "estimate_scale",
        "objects",
    ):
        if getattr(args, key) is not None:
            meta["model"][key] = getattr(args, key)
    (target / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    # the reference --mpp auto compares with: the objects this model reports with the settings it ships with (a run
    # measured them with its training settings: a gland run with the nuclei post-processing counts fragments)
    area = outlined_nucleus_area(SegmentAnyCell.load(target), train)
    meta["model"]["nucleus_area"] = (
        area if area is not None else median_nucleus_area(train, meta["model"]["mpp"])
    )
    (target / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    data = {
        "train_config": train_config,
        "trained_on": [s.name for s in train],
        "validated_on": [s.name for s in val],
    }
    (target / "training_data.json").write_text(json.dumps(data, indent=1))
    views = tta_views(meta["model"].get("tta", False))
    card = [
        f"# Segment Any Cell `{args.name}` model: {SHIPPED_MODELS[args.name]}",
        "",
        f"Backbone preset `{model.config.backbone}` (no pretrained SAM weights: trained here, from scratch or from "
        f"another SAC model trained here), encoder mode `{model.config.encoder_mode}`, input "
        f"{model.config.image_size} px at {meta['model']['mpp']:g} µm/px"
        + (
            f" (trained at {model.config.mpp:g} µm/px with zoom augmentation; the working scale was chosen on "
            "validation images)"
            if meta["model"]["mpp"] != model.config.mpp
            else ""
        )
        + f", {model.config.num_positive}+"
        f"{model.config.num_negative} generated point prompts, click head {model.config.click_head_width} channels "
        f"wide on a {model.config.instance_window} px window"
        + (" (it reads the image and the HV maps)" if model.config.click_head_sees_image else "")
        + (" with a third, residual level" if model.config.click_head_deeper else "")
        + (
            f", its answers averaged over {meta['model']['click_views']} views"
            if meta["model"].get("click_views", 1) > 1
            else ""
        )
        + ";"
        f" post-processing (chosen on validation images, benchmarks/postprocessing.py): objects under "
        f"{meta['model'].get('min_size', 3.0):g} µm² dropped, watershed seeds at "
        f"{meta['model'].get('seed_threshold', 0.4):g}"
        + (
            f", split between centre-map peaks {meta['model']['seed_depth']:g} above the valley between them"
            if meta["model"].get("seed_depth")
            else ""
        )
        + (
            f", the centre map lowered {meta['model']['hv_weight']:g} times the boundaries the horizontal and "
            "vertical maps show"
            if meta["model"].get("hv_maps") and meta["model"].get("hv_weight")
            else ""
        )
        + (f"; maps averaged over {views} views (TTA)." if views > 1 else "."),
        f"Datasets: {', '.join(config.datasets)} (training splits only; {len(train)} images for training, "
        f"{len(val)} held out for validation; the test splits were never used). Initialised from: "
        + (args.init_note or f"`{config.init or 'random'}`")
        + ".",
        f"Command: `{args.command}`" if args.command else "",
        f"Checkpoint metrics: `{json.dumps(model.meta['metrics'])}`"
        + (
            " (best_val_score: the run's best validation Dice + one-click IoU)"
            if "best_val_score" in model.meta["metrics"]
            else ""
        )
        + "; test-set results: benchmarks/RESULTS.md.",
        "",
        "## Licence of the weights",
        "",
        "Trained on " + "; ".join(LICENCES[name] for name in config.datasets if name in LICENCES) + ".",
        "As a work derived from data under CC BY-NC-SA 4.0"
        + (" and GlaS's research-only terms" if "glas" in config.datasets else "")
        + ", the weights are for non-commercial research use and are distributed under CC BY-NC-SA 4.0; the code"
        " of Segment Any Cell is under its own licence."
        if {"monuseg", "cryonuseg", "glas"} & set(config.datasets)
        else "The code of Segment Any Cell is under its own licence.",
        "",
    ]
    (target / "MODEL_CARD.md").write_text("\n".join(card))
    SegmentAnyCell.load(target)
    print(f"shipped {args.checkpoint} -> {target} ({weights.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
