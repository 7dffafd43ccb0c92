"""The model shipped inside the package: present, verified, and it segments nuclei out of the box."""

import json

import numpy as np
import pytest

from sac.cli import main
from sac.data import default_data_root, load_dataset
from sac.metrics import dice
from sac.model import SegmentAnyCell, model_path
from sac.segmenter import Segmenter


def test_shipped_model_loads_with_its_card():
    folder = model_path()
    model = SegmentAnyCell.load()
    assert (folder / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    assert "CC BY-NC-SA" in (folder / "MODEL_CARD.md").read_text()
    data = json.loads((folder / "training_data.json").read_text())
    assert data["trained_on"] and not set(data["trained_on"]) & set(data["validated_on"])
    assert model.meta["versions"]["sac"]


@pytest.mark.data
def test_shipped_model_segments_a_monuseg_test_image(tmp_path):
    root = default_data_root()
    if root is None or not (root / "monuseg").is_dir():
        pytest.skip("MoNuSeg not found in $SAC_DATA or ../shared/data")
    sample = load_dataset("monuseg", root, "test")[0]
    crop = sample.image[:384, :384]
    mask = Segmenter.load().predict(crop)
    # a regression guard far below the measured quality (benchmarks/RESULTS.md), not a quality claim
    assert dice(mask, sample.labels[:384, :384]) > 0.6
    from PIL import Image

    Image.fromarray(crop).save(tmp_path / "crop.png")
    assert main(["predict", str(tmp_path / "crop.png"), "-o", str(tmp_path / "out")]) == 0
    written = np.array(Image.open(tmp_path / "out" / "crop_mask.png"))
    assert set(np.unique(written)) <= {0, 255}
