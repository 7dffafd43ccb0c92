"""``sac evaluate``: metrics of a model on a labelled dataset, printed and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_nuclei
from sac.cli import main
from sac.data import load_dataset
from sac.evaluate import evaluate_model
from sac.io import InputError
from sac.metrics import METRICS
from sac.model import SACConfig, SegmentAnyCell


@pytest.fixture(scope="module")
def model() -> SegmentAnyCell:
    return SegmentAnyCell(SACConfig(image_size=64, generator_channels=4, generator_depth=2)).eval()


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A ``folder`` dataset of two synthetic images with 16-bit instance masks."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for seed, size in enumerate((64, 72)):
        image, labels = synthetic_nuclei(size=size, count=5, seed=seed)
        Image.fromarray(image).save(tmp_path / "images" / f"sample{seed}.png")
        Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "masks" / f"sample{seed}.png")
    return tmp_path


def test_evaluate_model_metrics_in_unit_range(model, dataset):
    result = evaluate_model(model, load_dataset("folder", dataset), progress=False)
    assert [entry["name"] for entry in result["per_image"]] == ["sample0", "sample1"]
    assert result["summary"]["n_images"] == 2
    for entry in [result["summary"], *result["per_image"]]:
        assert all(0.0 <= entry[key] <= 1.0 for key in METRICS)


def test_evaluate_model_rejects_bad_requests(model, dataset):
    with pytest.raises(InputError, match="no samples"):
        evaluate_model(model, [], progress=False)
    with pytest.raises(InputError, match="instance labels"):
        evaluate_model(model, load_dataset("folder", dataset), instances=False, progress=False)


def test_cli_evaluate_writes_json(model, dataset, tmp_path, capsys):
    checkpoint = model.save(tmp_path / "model")
    report = tmp_path / "report" / "metrics.json"
    argv = ["evaluate", "--model", str(checkpoint), "--dataset", "folder", "--data-root", str(dataset)]
    assert main([*argv, "--json", str(report), "--limit", "1"]) == 0
    assert "aji" in capsys.readouterr().out
    written = json.loads(report.read_text())
    assert written["summary"]["n_images"] == 1 and written["dataset"] == "folder"
    assert main([*argv, "--limit", "0"]) == 2
