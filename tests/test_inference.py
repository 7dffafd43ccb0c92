"""``sac predict``: the file pipeline, its failure handling and the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import sac.model
from conftest import synthetic_nuclei
from sac.cli import main
from sac.inference import predict_files, resolve_device, segment_image
from sac.io import InputError, read_image
from sac.model import SACConfig, SegmentAnyCell

GOOD = ("good.png", "deep.tif", "grey.png", "alpha.png")
INSTANCE_OUTPUTS = ("_mask.png", "_labels.tif", "_nuclei.csv", ".geojson", "_overlay.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = SACConfig(backbone="tiny", image_size=64, generator_channels=4, generator_depth=2)
    return SegmentAnyCell(config).save(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(checkpoint) -> SegmentAnyCell:
    return SegmentAnyCell.load(checkpoint).prepare_for_inference()


@pytest.fixture
def images(tmp_path) -> Path:
    """Four readable images of different kinds and one corrupt file."""
    folder = tmp_path / "images"
    folder.mkdir()
    rgb, _ = synthetic_nuclei(size=64, count=5)
    Image.fromarray(rgb).save(folder / "good.png")
    tifffile.imwrite(folder / "deep.tif", rgb[:60, :50, 0].astype(np.uint16) * 257)
    Image.fromarray(rgb[..., 1]).save(folder / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(folder / "alpha.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_predict_files_writes_outputs_and_skips_corrupt(model, images, tmp_path):
    out = tmp_path / "out"
    failures = predict_files(model, [images], out, instances="fast", progress=False)
    assert [path.name for path, _ in failures] == ["corrupt.png"]
    assert "corrupt.png" in failures[0][1] and "\n" not in failures[0][1]
    for name in GOOD:
        stem, shape = Path(name).stem, read_image(images / name).shape[:2]
        for suffix in INSTANCE_OUTPUTS:
            assert (out / f"{stem}{suffix}").is_file()
        with Image.open(out / f"{stem}_mask.png") as png:
            mask = np.array(png)
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.shape == mask.shape
    assert not list(out.glob("corrupt*")) and not list(out.glob(".*.tmp*"))


def test_mask_only_writes_just_masks(model, images, tmp_path):
    out = tmp_path / "out"
    predict_files(model, [images / "good.png"], out, progress=False)
    assert sorted(path.name for path in out.iterdir()) == ["good_mask.png"]


def test_segment_image_labels_match_mask_shape(model):
    image, _ = synthetic_nuclei(size=64, count=4)
    mask, labels = segment_image(model, image[:50], instances="sam")
    assert mask.dtype == bool and labels.dtype == np.int32 and labels.shape == mask.shape == (50, 64)


def test_duplicate_stems_rejected_before_any_output(model, images, tmp_path):
    tifffile.imwrite(images / "good.tif", read_image(images / "good.png"))
    with pytest.raises(InputError, match="same file name stem"):
        predict_files(model, [images], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"instances": "slow"}, "instance mode"),
        ({"threshold": 2.0}, "threshold"),
        ({"overlap": 64}, "overlap"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_options_rejected_before_any_output(model, images, tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        predict_files(model, [images / "good.png"], tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            resolve_device("cuda")


def test_cli_reports_failures_with_exit_code_1(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    inputs = [str(images / "corrupt.png"), str(images / "good.png")]
    assert main(["predict", *inputs, "-o", str(out), "--model", str(checkpoint), "--instances"]) == 1
    assert "1 of 2 images failed" in capsys.readouterr().err
    assert (out / "good_labels.tif").is_file()


def test_cli_points_and_sam_instances(checkpoint, images, tmp_path, capsys):
    points = tmp_path / "points.csv"
    with points.open("w", newline="") as handle:
        csv.writer(handle).writerows([["x", "y", "label"], [20, 30, 1], [5, 5, 0]])
    out = tmp_path / "out"
    argv = ["predict", str(images / "good.png"), "-o", str(out), "--model", str(checkpoint)]
    assert main([*argv, "--points", str(points), "--instances=sam"]) == 0
    assert all((out / f"good{suffix}").is_file() for suffix in INSTANCE_OUTPUTS)
    assert "segmented 1 images" in capsys.readouterr().out


def test_cli_input_errors_exit_2(checkpoint, images, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    assert main(["predict", str(tmp_path / "missing.png"), "-o", out, "--model", str(checkpoint)]) == 2
    assert "missing.png" in capsys.readouterr().err
    monkeypatch.setattr(sac.model, "default_model_path", lambda: tmp_path / "no-shipped-model")
    assert main(["predict", str(images / "good.png"), "-o", out]) == 2
    assert "no model ships" in capsys.readouterr().err
