"""``sac evaluate``: metrics of a model on a labelled dataset, printed and written as JSON."""

from __future__ import annotations

import json
import shutil
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


def test_evaluate_model_metrics_in_unit_range(tiny_segmenter, dataset):
    result = evaluate_model(tiny_segmenter, load_dataset("folder", dataset), progress=False)
    assert [entry["name"] for entry in result["per_image"]] == ["sample0", "sample1"]
    assert result["summary"]["n_images"] == 2
    for entry in [result["summary"], *result["per_image"]]:
        assert all(0.0 <= entry[key] <= 1.0 for key in METRICS)


def test_gland_figures_are_per_image_means_and_pooled_as_the_challenge_counts(tiny_segmenter, dataset):
    result = evaluate_model(tiny_segmenter, load_dataset("folder", dataset), progress=False, glands=True)
    rows, summary = result["per_image"], result["summary"]
    assert summary["object_f1"] == pytest.approx(np.mean([row["object_f1"] for row in rows]))
    true_positives = sum(row["true_positives"] for row in rows)
    objects = sum(row["n_true"] + row["n_pred"] for row in rows)
    assert summary["pooled_object_f1"] == pytest.approx(2 * true_positives / objects)


def test_evaluate_model_rejects_bad_requests(tiny_segmenter, dataset):
    with pytest.raises(InputError, match="no samples"):
        evaluate_model(tiny_segmenter, [], progress=False)
    # scores need instance labels: a segmenter without an instance mode is evaluated in fast mode
    samples = load_dataset("folder", dataset)
    fast = evaluate_model(tiny_segmenter.with_options(instances="fast"), samples, progress=False)
    assert evaluate_model(tiny_segmenter, samples, progress=False) == fast


def test_evaluate_model_uses_the_segmenters_options(tiny_segmenter, dataset):
    samples = load_dataset("folder", dataset)[:1]
    lenient, strict = (
        evaluate_model(tiny_segmenter.with_options(threshold=threshold), samples, progress=False)
        for threshold in (0.0, 1.0)
    )
    assert lenient["per_image"][0]["fg_total"] > strict["per_image"][0]["fg_total"]


def test_cli_evaluate_writes_json(tiny_checkpoint, dataset, tmp_path, capsys):
    report = tmp_path / "report" / "metrics.json"
    argv = ["evaluate", "--model", str(tiny_checkpoint), "--dataset", "folder", "--data-root", str(dataset)]
    assert main([*argv, "--json", str(report), "--limit", "1"]) == 0
    assert "aji" in capsys.readouterr().out
    written = json.loads(report.read_text())
    assert written["summary"]["n_images"] == 1 and written["dataset"] == "folder"
    assert written["instances"] == "fast" and written["data_root"] == str(dataset)
    sha = json.loads((tiny_checkpoint / "config.json").read_text())["weights_sha256"]
    assert (
        written["run"]["model"]["weights_sha256"] == sha and written["run"]["options"]["instances"] == "fast"
    )
    assert main([*argv, "--limit", "0"]) == 2
    assert main([*argv, "--instances", "exact"]) == 2
    assert "unknown instance mode" in capsys.readouterr().err


def test_cli_evaluate_scores_a_gland_model_as_glas_on_any_dataset(tiny_checkpoint, dataset, tmp_path, capsys):
    glands = tmp_path / "glands-model"
    shutil.copytree(tiny_checkpoint, glands)
    config = json.loads((glands / "config.json").read_text())
    config["model"]["objects"] = "glands"
    (glands / "config.json").write_text(json.dumps(config))
    argv = ["evaluate", "--dataset", "folder", "--data-root", str(dataset), "--limit", "1"]
    assert main([*argv, "--model", str(glands)]) == 0
    assert "pooled_object_f1" in capsys.readouterr().out  # a user's folder of glands, scored as GlaS is
    assert main([*argv, "--model", str(tiny_checkpoint)]) == 0
    assert "object_f1" not in capsys.readouterr().out
