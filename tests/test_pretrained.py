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


def test_shipped_model_answers_clicks_where_they_land_and_nowhere_else():
    """On the bundled H&E sample: a positive click on a nucleus the automatic result misses adds a new object
    there, on that nucleus (how much of it is recovered is measured by benchmarks/prompts.py), a negative click on
    a detected nucleus removes it, and no pixel farther than 32 px from the click changes."""
    from scipy import ndimage

    from sac.data import sample, sample_labels

    image, truth = sample("he"), sample_labels("he")
    segmenter = Segmenter.load(instances="fast")
    before = segmenter.predict(image)
    yy, xx = np.indices(before.shape)
    # the largest true nucleus the automatic result leaves (almost) empty, clicked at its most interior pixel
    covered = ndimage.mean(before > 0, truth, np.arange(1, truth.max() + 1))
    missed = 1 + max(
        (i for i in range(truth.max()) if covered[i] < 0.2),
        key=lambda i: (truth == i + 1).sum(),
        default=None,
    )
    depth = ndimage.distance_transform_edt(truth == missed)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    after = segmenter.predict(image, points=(np.array([[x, y]]), None))
    added = after == after[y, x]
    assert after[y, x] > before.max() and (added & (truth == missed)).sum() > 0.5 * added.sum()
    far = np.hypot(yy - y, xx - x) > 32
    np.testing.assert_array_equal(after[far] > 0, before[far] > 0)
    # the size filter applies to the automatic result, never to what the user clicked
    only_click = segmenter.predict(image, points=(np.array([[x, y]]), None), min_size=1e4)
    assert only_click.max() == 1 and only_click[y, x] == 1
    # a negative click on a detected nucleus removes it, and only it
    target = before[before.shape[0] // 2, before.shape[1] // 2] or before.max()
    ty, tx = np.argwhere(before == target)[0]
    removed = segmenter.predict(image, points=(None, np.array([[tx, ty]])))
    assert not removed[before == target].any()
    np.testing.assert_array_equal(removed[before != target] > 0, before[before != target] > 0)
    # a positive click on a detected nucleus (the largest) re-outlines it; its old rim is no object of its own
    largest = np.argmax(np.bincount(before.ravel())[1:]) + 1
    cy, cx = np.unravel_index(np.argmax(ndimage.distance_transform_edt(before == largest)), before.shape)
    outlined = segmenter.predict(image, points=(np.array([[cx, cy]]), None))
    ids = np.unique(outlined)[1:]
    pieces = [ndimage.label(outlined == i)[1] for i in ids]
    assert outlined[cy, cx] > before.max() and pieces == [1] * len(ids)
    assert abs(len(ids) - int(before.max())) <= 1
    far = np.hypot(yy - cy, xx - cx) > 32  # objects away from the click keep their ids
    np.testing.assert_array_equal(outlined[far], before[far])


def test_shipped_gland_model_loads_with_its_card_and_post_processing():
    folder = model_path("glands")
    model = SegmentAnyCell.load("glands")
    assert (folder / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    assert "GlaS" in (folder / "MODEL_CARD.md").read_text()
    assert model.config.mpp == pytest.approx(1.4) and model.config.min_size == 1000 and model.config.tta
    assert not model.config.estimate_scale  # no pixel size: native scale and a warning
    assert model.config.seed_depth == 0  # split seeds cut glands into pieces (validation)
    assert model.config.objects == "glands"  # <stem>_glands.csv, QuPath class Gland
    data = json.loads((folder / "training_data.json").read_text())
    assert all(name.startswith("train_") for name in data["trained_on"] + data["validated_on"])
