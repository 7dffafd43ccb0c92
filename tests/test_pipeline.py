"""``sac predict``: the file pipeline, its failure handling and the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import sac.model
import sac.pipeline
from conftest import square_answers, synthetic_nuclei
from sac.cli import main
from sac.io import InputError, read_image
from sac.pipeline import (
    RUN_FILE,
    SUMMARY_FILE,
    FoundInput,
    RunOptions,
    RunRecord,
    find_inputs,
    report_skipped,
    segment_file,
    segment_files,
)
from sac.wsi import SLIDE_MIN_SIDE

GOOD = ("good.png", "deep.tif", "grey.png", "alpha.png")
INSTANCE_OUTPUTS = ("_mask.png", "_labels.tif", "_nuclei.csv", ".geojson", "_overlay.png")


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


def test_segment_files_writes_outputs_and_skips_corrupt(tiny_segmenter, images, tmp_path):
    out = tmp_path / "out"
    failures = segment_files(tiny_segmenter.with_options(instances="fast"), [images], out, progress=False)
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
        np.testing.assert_array_equal(labels > 0, mask > 0)  # written masks and labels agree
    assert not list(out.glob("corrupt*")) and not list(out.glob(".*.tmp*"))
    with open(out / "alpha_nuclei.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert {"mean_red", "mean_green", "mean_blue"} <= set(header) and "mean_alpha" not in header


def test_a_file_of_nan_is_refused_naming_it_and_a_mask_is_questioned(tiny_segmenter, tmp_path):
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    Image.fromarray(((image > 0.5) * 255).astype(np.uint8)).save(tmp_path / "thresholded.png")
    with pytest.warns(UserWarning, match=r"thresholded\.png: the image holds only the values 0 and 255"):
        failures = segment_files(tiny_segmenter, [tmp_path], tmp_path / "out", progress=False)
    assert failures == [(tmp_path / "nan.tif", f"{tmp_path / 'nan.tif'}: image contains NaN or Inf values")]


def test_mask_only_writes_just_masks(tiny_segmenter, images, tmp_path):
    out = tmp_path / "out"
    segment_files(tiny_segmenter, [images / "good.png"], out, progress=False)
    assert sorted(path.name for path in out.iterdir()) == ["good_mask.png", RUN_FILE, SUMMARY_FILE]


def test_summary_counts_objects_only_with_instances_and_always_the_mask_share(
    tiny_segmenter, images, tmp_path
):
    for name, segmenter in (
        ("mask", tiny_segmenter),
        ("labels", tiny_segmenter.with_options(instances=True)),
    ):
        segment_files(segmenter, [images / "good.png"], tmp_path / name, progress=False)
        with open(tmp_path / name / SUMMARY_FILE, newline="") as handle:
            (row,) = csv.DictReader(handle)
        with Image.open(tmp_path / name / "good_mask.png") as png:
            share = (np.array(png) > 0).mean()
        assert float(row["foreground_fraction"]) == pytest.approx(share, abs=1e-6)
        if name == "mask":  # no instances: no count, rather than a count of 0
            assert row["objects"] == row["mean_area_px"] == ""
        else:
            labels = tifffile.imread(tmp_path / name / "good_labels.tif")
            assert int(row["objects"]) == np.unique(labels[labels > 0]).size


def test_an_output_folder_given_as_input_again_is_not_segmented_twice(tiny_segmenter, images, tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    Image.open(images / "good.png").save(folder / "good.png")
    segmenter = tiny_segmenter.with_options(instances=True)
    for _ in range(2):  # the second run finds the first one's outputs beside the image
        segment_files(segmenter, [folder], folder, progress=False)
    with pytest.warns(
        UserWarning, match=r"good_labels.tif and 2 more: named like SAC's outputs, so not segmented"
    ):
        assert [item.path for item in find_inputs([folder])] == [folder / "good.png"]
    assert not list(folder.glob("good_mask_*")) and not list(folder.glob("good_overlay_*"))
    assert find_inputs([folder / "good_mask.png"]) == [
        FoundInput(folder / "good_mask.png", False)
    ]  # named: taken


def test_a_click_outside_any_input_stops_the_run_before_any_work(tiny_segmenter, images, tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image,x,y,label\ngood.png,10,10,1\ndeep.tif,55,10,1\n")  # deep.tif is 50 wide
    run = RunOptions(points_file=clicks)
    with pytest.raises(InputError, match=r"deep.tif: click \(55, 10\) lies outside the 50x60 image"):
        segment_files(tiny_segmenter, [images / "good.png", images / "deep.tif"], tmp_path / "out", run)
    assert not (tmp_path / "out").exists()


def test_outputs_that_need_instances_are_refused_without_them(tiny_segmenter, images, tmp_path):
    for run in (RunOptions(save=["mask", "table"]), RunOptions(expand_cells=3.0)):
        with pytest.raises(InputError, match="needs instances; add --instances"):
            segment_files(tiny_segmenter, [images / "good.png"], tmp_path / "out", run, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--expand-cells"):
        RunOptions(save=["mask", "cells"])


def test_cells_grown_in_pixels_say_so_when_the_pixel_size_is_unknown(
    tiny_segmenter, images, tmp_path, capsys
):
    segmenter = tiny_segmenter.with_options(instances=True, mpp="native")
    segment_file(
        segmenter, FoundInput(images / "good.png", False), tmp_path / "out", run=RunOptions(expand_cells=2.0)
    )
    assert "cells grown by 2 pixels, not µm: the pixel size is unknown" in capsys.readouterr().err
    assert (tmp_path / "out" / "good_cells.tif").is_file()


def test_segment_file_writes_what_the_segmenter_gives(tiny_segmenter, images, tmp_path):
    segmenter = tiny_segmenter.with_options(instances="fast")
    segment_file(segmenter, FoundInput(images / "grey.png", False), tmp_path / "out")
    result = segmenter.segment(read_image(images / "grey.png"))
    with Image.open(tmp_path / "out" / "grey_mask.png") as png:
        np.testing.assert_array_equal(np.array(png) > 0, result.mask)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "grey_labels.tif"), result.labels)
    with pytest.raises(InputError, match=r"corrupt\.png"):
        segment_file(segmenter, FoundInput(images / "corrupt.png", False), tmp_path / "out")


def test_outputs_are_named_for_what_the_model_segments(tiny_checkpoint, images, tmp_path):
    """A gland model's table is <stem>_glands.csv (its QuPath class: test_export)."""
    import dataclasses

    from sac.segmenter import Segmenter

    segmenter = Segmenter.load(tiny_checkpoint, instances="fast")
    segmenter.model.config = dataclasses.replace(segmenter.model.config, objects="glands")
    segment_file(segmenter, FoundInput(images / "good.png", False), tmp_path / "out")
    assert (tmp_path / "out" / "good_glands.csv").is_file()
    assert not (tmp_path / "out" / "good_nuclei.csv").exists()


def test_duplicate_stems_rejected_before_any_output(tiny_segmenter, images, tmp_path):
    tifffile.imwrite(images / "good.tif", read_image(images / "good.png"))
    with pytest.raises(InputError, match="same file name stem"):
        find_inputs([images])
    with pytest.raises(InputError, match="same file name stem"):
        segment_files(tiny_segmenter, [images], tmp_path / "out", progress=False)
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
def test_bad_options_rejected_before_any_output(tiny_segmenter, images, tmp_path, options, message):
    # options are checked when the segmenter is made, so no file is ever touched with a bad one
    with pytest.raises(InputError, match=message):
        segment_files(tiny_segmenter.with_options(**options), [images / "good.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_slide_only_settings_and_outputs_slides_lack_are_refused(tiny_segmenter, images, tmp_path):
    with pytest.raises(InputError, match="pyramid level applies to slides"):
        segment_files(tiny_segmenter, [images / "good.png"], tmp_path / "out", RunOptions(level=1))
    run = RunOptions(slides=True, save=["mask", "labels"])
    with pytest.raises(InputError, match="slides are written as labels and geojson only, not mask"):
        segment_files(tiny_segmenter, [images / "good.png"], tmp_path / "out", run)
    assert not (tmp_path / "out").exists()


def test_a_given_pixel_size_that_overrides_the_files_is_said(tiny_segmenter, tmp_path, capsys):
    rgb, _ = synthetic_nuclei(size=64, count=5)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path, rgb, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER"
    )
    segment_file(tiny_segmenter.with_options(mpp=0.5), FoundInput(path, False), tmp_path / "out")
    assert "(the file records 0.25 µm/px)" in capsys.readouterr().err
    segment_file(tiny_segmenter, FoundInput(path, False), tmp_path / "out")
    assert "the file records" not in capsys.readouterr().err


def test_find_inputs_by_size_suffix_and_force(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "wide.tif", np.zeros((16, SLIDE_MIN_SIDE + 1), np.uint8), tile=(16, 1024))
    tifffile.imwrite(folder / "small.tif", np.zeros((16, 16), np.uint8))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "tile.png")
    svs = tmp_path / "scan.svs"
    tifffile.imwrite(svs, np.zeros((16, 16), np.uint8))
    found = find_inputs([folder, svs, folder / "tile.png"])  # a file named twice is segmented once
    assert [(item.path.name, item.slide) for item in found] == [
        ("small.tif", False),
        ("tile.png", False),
        ("wide.tif", True),
        ("scan.svs", True),
    ]
    assert find_inputs([folder], slides=True) == [FoundInput(path, True) for path in sorted(folder.iterdir())]
    scans = tmp_path / "scans"  # a folder of SVS slides, as a scanner leaves them
    scans.mkdir()
    svs.rename(scans / "scan.svs")
    (scans / "notes.txt").write_text("case 12")
    assert find_inputs([scans]) == [FoundInput(scans / "scan.svs", True)]
    with pytest.raises(InputError, match="missing"):
        find_inputs([tmp_path / "missing"])


def test_report_skipped_names_the_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "a.png"
    assert report_skipped(path, InputError("bad pixels\nmore detail")) == (path, f"{path}: bad pixels")
    assert report_skipped(path, InputError(f"{path}: truncated")) == (path, f"{path}: truncated")
    assert capsys.readouterr().err.splitlines() == [
        f"sac: skipped {path}: bad pixels",
        f"sac: skipped {path}: truncated",
    ]


def test_points_file_is_read_and_matched_to_the_inputs_before_any_image(tiny_segmenter, images, tmp_path):
    out, points = tmp_path / "out", tmp_path / "points.csv"

    def run(inputs):
        return segment_files(tiny_segmenter, inputs, out, RunOptions(points_file=points), progress=False)

    with pytest.raises(InputError, match=r"points\.csv"):
        run([images])  # missing
    points.write_text("x,y,label,image\n1,2,1,good.png\n3,4,0,other.png\n")
    with pytest.raises(InputError, match=r"clicks for other\.png, which is not among the inputs"):
        run([images / "good.png"])
    points.write_text("x,y,label\n1,2,1\n")
    with pytest.raises(InputError, match="clicks without image names but 2 inputs"):
        run([images / "good.png", images / "grey.png"])
    assert not out.exists()
    assert run([images / "good.png"]) == []  # clicks without names are for the one input


def test_cli_reports_failures_with_exit_code_1(tiny_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    inputs = [str(images / "corrupt.png"), str(images / "good.png")]
    assert main(["predict", *inputs, "-o", str(out), "--model", str(tiny_checkpoint), "--instances"]) == 1
    assert "1 of 2 images failed" in capsys.readouterr().err
    assert (out / "good_labels.tif").is_file()


def test_cli_points_and_sam_instances(tiny_checkpoint, images, tmp_path, capsys):
    points = tmp_path / "points.csv"
    with points.open("w", newline="") as handle:
        csv.writer(handle).writerows([["x", "y", "label"], [20, 30, 1], [5, 5, 0]])
    out = tmp_path / "out"
    argv = ["predict", str(images / "good.png"), "-o", str(out), "--model", str(tiny_checkpoint)]
    assert main([*argv, "--points", str(points), "--instances=sam"]) == 0
    assert all((out / f"good{suffix}").is_file() for suffix in INSTANCE_OUTPUTS)
    assert "segmented 1 image " in capsys.readouterr().out


def test_cli_input_errors_exit_2(tiny_checkpoint, images, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    assert main(["predict", str(tmp_path / "missing.png"), "-o", out, "--model", str(tiny_checkpoint)]) == 2
    assert "missing.png" in capsys.readouterr().err
    argv = ["predict", str(images / "good.png"), "-o", out, "--model", str(tiny_checkpoint)]
    assert main([*argv, "--threshold", "1.5"]) == 2
    assert "threshold must be in [0, 1]" in capsys.readouterr().err
    assert main([*argv, "--instances=slow"]) == 2
    assert "unknown instance mode" in capsys.readouterr().err
    assert not Path(out).exists()
    monkeypatch.setattr(sac.model, "model_path", lambda model=None: tmp_path / "no-shipped-model")
    assert main(["predict", str(images / "good.png"), "-o", out]) == 2
    assert "does not ship with this sac installation" in capsys.readouterr().err


def test_run_options_are_checked_once():
    assert RunOptions(save=["mask", "prob"]).save == ("mask", "prob")
    with pytest.raises(InputError, match="outputs masks: choose from mask, prob"):
        RunOptions(save=["masks"])
    with pytest.raises(InputError, match="cell expansion"):
        RunOptions(expand_cells=-1)
    with pytest.raises(InputError, match="pyramid level"):
        RunOptions(level=-2)


def _summary_images(out: Path) -> list[str]:
    with open(out / SUMMARY_FILE, newline="") as handle:
        return [row["image"] for row in csv.DictReader(handle)]


def test_an_interrupted_batch_records_what_it_finished_and_resume_does_the_rest(
    tiny_segmenter, images, tmp_path, monkeypatch
):
    out, segmented = tmp_path / "out", []
    real_segment_file = sac.pipeline.segment_file

    def interrupted_at_the_third(segmenter, item, *args, **kwargs):
        if len(segmented) == 2:
            assert _summary_images(out) == sorted(segmented)  # what a killed run leaves (flushed every row)
            raise KeyboardInterrupt  # Ctrl-C
        row = real_segment_file(segmenter, item, *args, **kwargs)
        segmented.append(item.name)  # after its outputs: a corrupt file raises and is not counted
        return row

    monkeypatch.setattr(sac.pipeline, "segment_file", interrupted_at_the_third)
    monkeypatch.setattr(RunRecord, "FLUSH_SECONDS", 0.0)
    segmenter = tiny_segmenter.with_options(instances=True)
    with pytest.raises(KeyboardInterrupt):
        segment_files(segmenter, [images], out, progress=False)
    record = json.loads((out / RUN_FILE).read_text())
    assert not record["finished"] and record["images"] == 2
    assert _summary_images(out) == sorted(segmented)
    monkeypatch.setattr(sac.pipeline, "segment_file", real_segment_file)
    first_outputs = {name: (out / f"{Path(name).stem}_labels.tif").stat().st_mtime_ns for name in segmented}

    failures = segment_files(segmenter, [images], out, RunOptions(resume=True), progress=False)
    assert [path.name for path, _ in failures] == ["corrupt.png"]  # failures are retried, not kept
    assert _summary_images(out) == sorted(GOOD)
    record = json.loads((out / RUN_FILE).read_text())
    assert record["finished"] and record["images"] == len(GOOD)
    for name, written in first_outputs.items():  # the finished images were not segmented again
        assert (out / f"{Path(name).stem}_labels.tif").stat().st_mtime_ns == written
    # without --resume, a run starts over and its summary holds its own images only
    segment_files(segmenter, [images / "good.png"], out, progress=False)
    assert _summary_images(out) == ["good.png"]


def test_resume_refuses_another_model_or_settings_but_not_a_batch_size(tiny_segmenter, images, tmp_path):
    out = tmp_path / "out"
    segment_files(tiny_segmenter, [images / "good.png"], out, progress=False)
    resume = RunOptions(resume=True)
    with pytest.raises(InputError, match=r"sac_run.json: the earlier run differs \(threshold 0.5 -> 0.6\)"):
        segment_files(tiny_segmenter.with_options(threshold=0.6), [images], out, resume, progress=False)
    with pytest.raises(InputError, match=r"differs \(seed_threshold the model's -> 0.3\)"):
        segment_files(tiny_segmenter.with_options(seed_threshold=0.3), [images], out, resume, progress=False)
    with pytest.raises(InputError, match=r"differs \(instances None -> fast\)"):
        segment_files(tiny_segmenter.with_options(instances=True), [images], out, resume, progress=False)
    with pytest.raises(InputError, match=r"differs \(save None -> \['mask', 'prob'\]\)"):
        segment_files(tiny_segmenter, [images], out, RunOptions(save=["mask", "prob"], resume=True))
    assert _summary_images(out) == ["good.png"]  # a refused run leaves the record as it was
    segment_files(tiny_segmenter.with_options(batch_size=1), [images], out, resume, progress=False)
    assert _summary_images(out) == sorted(GOOD)
    retrained = tiny_segmenter.model.meta | {"weights_sha256": "0" * 64}
    tiny_segmenter.model.meta, original = retrained, tiny_segmenter.model.meta
    try:
        with pytest.raises(InputError, match=r"differs \(the model\)"):
            segment_files(tiny_segmenter, [images], out, resume, progress=False)
    finally:
        tiny_segmenter.model.meta = original


def test_cli_resume_after_ctrl_c(tiny_checkpoint, images, tmp_path, monkeypatch, capsys):
    argv = ["predict", str(images), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint)]
    real_segment_file = sac.pipeline.segment_file

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sac.pipeline, "segment_file", interrupted)
    assert main(argv) == 130
    assert "the same command with --resume segments the images it did not finish" in capsys.readouterr().err
    monkeypatch.setattr(sac.pipeline, "segment_file", real_segment_file)
    assert main([*argv, "--resume"]) == 1  # the corrupt file
    assert "0 of 5 images were finished by the earlier run" not in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 1
    assert "4 of 5 images were finished by the earlier run" in capsys.readouterr().err
    assert main([*argv, "--resume", "--threshold", "0.7"]) == 2
    assert "threshold 0.5 -> 0.7" in capsys.readouterr().err


def test_nuclei_added_by_clicks_are_marked_in_the_table_and_geojson(
    tiny_segmenter, images, tmp_path, monkeypatch
):
    square_answers(monkeypatch)  # SAM answers a click with the 7x7 square around it
    points = tmp_path / "points.csv"
    points.write_text("x,y,label\n30.5,30.5,1\n")
    out = tmp_path / "out"
    segmenter = tiny_segmenter.with_options(instances=True)
    segment_files(segmenter, [images / "good.png"], out, RunOptions(points_file=points), progress=False)
    labels = tifffile.imread(out / "good_labels.tif")
    with open(out / "good_nuclei.csv", newline="") as handle:
        clicked = {int(row["id"]): int(row["clicked"]) for row in csv.DictReader(handle)}
    assert clicked[int(labels[30, 30])] == 1 and sum(clicked.values()) == 1
    features = json.loads((out / "good.geojson").read_text())["features"]
    marks = {f["properties"]["id"]: f["properties"]["measurements"]["clicked"] for f in features}
    assert marks == clicked
    segment_files(segmenter, [images / "good.png"], tmp_path / "plain", progress=False)
    with open(tmp_path / "plain" / "good_nuclei.csv", newline="") as handle:
        assert "clicked" not in next(csv.reader(handle))  # without clicks, no such column
