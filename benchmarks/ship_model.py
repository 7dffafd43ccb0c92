"""Copy a trained checkpoint into the package as the default model, with its model card.

    python benchmarks/ship_model.py runs/default/best [--results benchmarks/RESULTS.md]

Writes src/sac/pretrained/{model.safetensors, config.json, training_data.json, MODEL_CARD.md}; the checkpoint is
loaded first (sha256 and architecture checks) so a broken one is never shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sac.model import CONFIG_FILE, WEIGHTS_FILE, SegmentAnyCell, default_model_path
from sac.train import TrainConfig, load_training_data

MAX_BYTES = 25 * 1024 * 1024
LICENCE = """The weights were trained on MoNuSeg 2018 (CC BY-NC-SA 4.0: non-commercial, share-alike, attribution;
Kumar et al., IEEE TMI 2017 and 2019) and on the Kaggle Data Science Bowl 2018 stage 1 training set (CC0, Broad
Institute). As a work derived from MoNuSeg, the shipped weights are distributed under CC BY-NC-SA 4.0; the code of
Segment Any Cell is under its own licence."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint folder inside a training run (e.g. RUN/best)"
    )
    args = parser.parse_args(argv)
    model = SegmentAnyCell.load(args.checkpoint)
    weights = args.checkpoint / WEIGHTS_FILE
    if weights.stat().st_size > MAX_BYTES:
        raise SystemExit(
            f"{weights}: {weights.stat().st_size / 2**20:.1f} MB exceeds the 25 MB package budget"
        )
    run = args.checkpoint.parent
    config = TrainConfig(**json.loads((run / "train_config.json").read_text()))
    train, val = load_training_data(config)
    target = default_model_path()
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copyfile(args.checkpoint / name, target / name)
    data = {
        "train_config": json.loads((run / "train_config.json").read_text()),
        "trained_on": [s.name for s in train],
        "validated_on": [s.name for s in val],
    }
    (target / "training_data.json").write_text(json.dumps(data, indent=1))
    card = [
        "# Segment Any Cell default model",
        "",
        f"Backbone preset `{model.config.backbone}` trained from scratch (no pretrained SAM weights), encoder mode "
        f"`{model.config.encoder_mode}`, input {model.config.image_size} px, "
        f"{model.config.num_positive}+{model.config.num_negative} auto-generated point prompts.",
        f"Datasets: {', '.join(config.datasets)} (training splits only; {len(train)} images for training, "
        f"{len(val)} held out for validation; the test splits were never used). Command: `benchmarks/train_default.sh`.",
        f"Checkpoint metrics: `{json.dumps(model.meta['metrics'])}`; test-set results: benchmarks/RESULTS.md.",
        "",
        "## Licence of the weights",
        "",
        LICENCE,
        "",
    ]
    (target / "MODEL_CARD.md").write_text("\n".join(card))
    SegmentAnyCell.load(target)
    print(f"shipped {args.checkpoint} -> {target} ({weights.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
