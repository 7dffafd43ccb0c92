"""Whole-slide streaming: lazy slide access, seam-free block stitching, slide outputs and the slide CLI."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage

from conftest import synthetic_nuclei
from sac.cli import main
from sac.instances import instances_from_maps
from sac.io import InputError, read_pixel_size, to_rgb_uint8
from sac.model import SACConfig
from sac.options import SegmentOptions
from sac.pipeline import RUN_FILE, SUMMARY_FILE, RunOptions, segment_files
from sac.segmenter import Segmenter
from sac.wsi import _claim, open_slide, segment_slide


class FakeModel:
    """A model's attributes without its network; like a model, hashed by identity and weakly referenced (the
    segmenter keeps a lock per live model)."""

    def __init__(self, **attributes) -> None:
        self.__dict__.update(attributes)


class LocalSegmenter(Segmenter):
    """Maps that depend only on a few pixels around each pixel, so a block with enough halo sees what the
    whole image sees: probability is darkness, the centre map a smoothed distance to the background.

    No network: of its model, ``segment`` needs only the configuration (without a pixel size, so images are
    segmented at their own scale) and the device (in fast instance mode).
    """

    def __init__(self, options: SegmentOptions | None = None, **settings) -> None:
        config = SACConfig(image_size=64, min_size=3.0, seed_threshold=0.4, seed_depth=0.0)
        model = FakeModel(config=config, pixel_mean=torch.zeros(1))
        super().__init__(model, options, **settings)  # type: ignore[arg-type]

    def with_options(self, **changes) -> LocalSegmenter:
        return LocalSegmenter(dataclasses.replace(self.options, **changes))

    def maps(
        self, image: np.ndarray, points=None, generate_points: bool = True, hv: bool = True
    ) -> np.ndarray:
        darkness = 1 - to_rgb_uint8(image).mean(axis=2) / 255
        centre = ndimage.gaussian_filter(ndimage.distance_transform_edt(darkness >= 0.5) / 3, 1)
        return np.stack([darkness, darkness, np.clip(centre, 0, 1), darkness]).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` split the same pixels into the same nuclei, whatever their ids."""
    assert np.array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert pairs.shape[1] == np.unique(a[a > 0]).size == np.unique(b[b > 0]).size


@pytest.fixture
def slide(tmp_path) -> tuple[Path, np.ndarray]:
    """A two-level pyramidal BigTIFF of synthetic nuclei and its full-resolution pixels."""
    image, _ = synthetic_nuclei(size=200, count=40, seed=3)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path, image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_stitched_blocks_match_whole_image(tmp_path, dtype):
    image, _ = synthetic_nuclei(size=640, count=240, seed=1)
    image[352:, 352:] = 220  # blank blocks: stretching each block on its own would fail there
    if dtype == np.uint16:
        image = image.astype(np.uint16) * 200 + 1000
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb")
    block = 256
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_slide(
            LocalSegmenter(), path, tmp_path / "out", block=block, halo=32, progress=False
        )
    assert not [w for w in caught if "the image holds" in str(w.message)]  # a blank block is no mask given

    maps = LocalSegmenter().maps(image)
    whole = instances_from_maps(maps[0], maps[2])
    stitched = tifffile.imread(summary["labels"])
    same_partition(whole, stitched)
    assert stitched.dtype == np.uint32 and stitched.max() == summary["nuclei"] == whole.max()
    assert np.array_equal(np.unique(stitched), np.arange(summary["nuclei"] + 1))
    assert summary["blocks"] == 9
    borders = np.arange(block, 640, block)
    crossing = np.union1d(
        np.intersect1d(whole[borders - 1], whole[borders]),
        np.intersect1d(whole[:, borders - 1], whole[:, borders]),
    )
    assert crossing[crossing > 0].size >= 5  # the test covers nuclei cut by block borders

    features = json.loads(summary["geojson"].read_text())["features"]
    ids = sorted(feature["properties"]["id"] for feature in features)
    assert ids == list(range(1, summary["nuclei"] + 1))
    areas = {f["properties"]["id"]: f["properties"]["measurements"]["area"] for f in features}
    assert all(areas[i] == count for i, count in enumerate(np.bincount(stitched.ravel())) if i)


def test_open_slide_reads_regions_and_levels(slide):
    path, image = slide
    with open_slide(path) as level0:
        assert level0.shape == image.shape
        assert np.array_equal(level0[50:70, 10:140], image[50:70, 10:140])
    with open_slide(path, level=1) as level1:
        assert level1.shape == (100, 100, 3)
    with pytest.raises(InputError, match="no pyramid level 2; available levels: 0, 1"):
        open_slide(path, level=2)


def test_open_slide_planar_and_bad_files(tmp_path, slide):
    _, image = slide
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    with open_slide(planar) as opened:
        assert opened.shape == image.shape
        assert np.array_equal(opened[5:9, 100:107], image[5:9, 100:107])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match=r"garbage\.tif: cannot read as a TIFF slide"):
        open_slide(garbage)
    with pytest.raises(InputError, match="file not found"):
        open_slide(tmp_path / "missing.tif")


def test_segment_slide_with_model_writes_tiled_bigtiff_and_geojson(tiny_segmenter, slide, tmp_path):
    path, _ = slide
    assert tiny_segmenter.options.instances is None  # slides get instances all the same
    summary = segment_slide(tiny_segmenter, path, tmp_path / "out", level=1, halo=16, progress=False)
    assert summary["shape"] == (100, 100) and summary["blocks"] == 1 and summary["level"] == 1
    with tifffile.TiffFile(summary["labels"]) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.tilelength == page.tilewidth == 256
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        labels = page.asarray()
    assert labels.shape == (100, 100) and labels.dtype == np.uint32
    features = json.loads(summary["geojson"].read_text())["features"]
    assert len(features) == summary["nuclei"] == np.unique(labels[labels > 0]).size
    assert sorted(tmp_path.joinpath("out").iterdir()) == [summary["geojson"], summary["labels"]]


def test_slide_outputs_carry_confidence_area_and_only_a_known_pixel_size(slide, tmp_path, monkeypatch):
    path, _ = slide
    monkeypatch.setattr("sac.wsi._estimate_pixel_size", lambda *args: 0.5)  # as if estimated from the centre
    summary = segment_slide(LocalSegmenter(), path, tmp_path / "out", level=0, halo=16, progress=False)
    assert summary["mpp"] is None and read_pixel_size(summary["labels"]) is None  # an estimate is not written
    labels = tifffile.imread(summary["labels"])
    assert summary["area_px"] == np.count_nonzero(labels)
    features = json.loads(summary["geojson"].read_text())["features"]
    assert features and all(0 <= f["properties"]["measurements"]["confidence"] <= 1 for f in features)
    # areas in level-0 pixels, as the outlines: level 1 is half the size a side
    coarse = segment_slide(LocalSegmenter(), path, tmp_path / "level1", level=1, halo=16, progress=False)
    features = json.loads(coarse["geojson"].read_text())["features"]
    areas = sum(feature["properties"]["measurements"]["area"] for feature in features)
    assert features and areas == 4 * np.count_nonzero(tifffile.imread(coarse["labels"]))
    given = segment_slide(LocalSegmenter(mpp=0.5), path, tmp_path / "given", level=0, progress=False)
    assert given["mpp"] == 0.5 and read_pixel_size(given["labels"])[0] == pytest.approx(0.5)


def test_sam_mode_is_kept_and_none_becomes_fast(tiny_segmenter, slide, tmp_path, monkeypatch):
    path, _ = slide
    modes = []
    segment = Segmenter.segment

    def recording(self, image, points=None):
        modes.append(self.options.instances)
        return segment(self, image, points)

    monkeypatch.setattr(Segmenter, "segment", recording)
    native = tiny_segmenter.with_options(mpp="native")  # no first pass to estimate the pixel size
    sam = native.with_options(instances="sam")
    summary = segment_slide(sam, path, tmp_path / "sam", level=1, progress=False)
    segment_slide(native, path, tmp_path / "fast", level=1, progress=False)
    assert modes == ["sam"] * summary["blocks"] + ["fast"] * summary["blocks"]


def test_bad_options_and_points_rejected_before_reading(slide, tmp_path):
    path, _ = slide
    with pytest.raises(InputError, match="halo"):
        segment_slide(LocalSegmenter(), path, tmp_path / "out", halo=-1)
    with pytest.raises(InputError, match="block must be positive"):
        segment_slide(LocalSegmenter(), path, tmp_path / "out", block=0)
    with pytest.raises(InputError, match="instance mode"):
        LocalSegmenter(instances="exact")
    with pytest.raises(InputError, match="not among the inputs"):
        (tmp_path / "points.csv").write_text("x,y,label,image\n5,5,1,other.tif\n")
        run = RunOptions(points_file=tmp_path / "points.csv", slides=True)
        segment_files(LocalSegmenter(), [path], tmp_path / "out", run)
    # clicks are in level-0 pixels: the 200x200 slide's, though the file's second level is 100x100
    with pytest.raises(InputError, match=r"slide.tif: click \(150, 250\) lies outside the 200x200 image"):
        segment_slide(LocalSegmenter(), path, tmp_path / "out", level=1, clicks=([[150, 250]], None))
    assert not (tmp_path / "out").exists()


def test_segment_files_skips_bad_slides(slide, tmp_path):
    path, _ = slide
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 truncated")
    failures = segment_files(
        LocalSegmenter(), [broken, path], tmp_path / "out", RunOptions(slides=True), False
    )
    assert [failed for failed, _ in failures] == [broken]
    assert failures[0][1].startswith(str(broken)) and "\n" not in failures[0][1]
    assert (tmp_path / "out" / "slide_labels.tif").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        RUN_FILE,
        SUMMARY_FILE,
        "slide.geojson",
        "slide_labels.tif",
    ]


def test_cli_predict_slide(tiny_checkpoint, slide, tmp_path, capsys):
    path, _ = slide
    out = tmp_path / "out"
    argv = ["predict", str(path), "-o", str(out), "--model", str(tiny_checkpoint), "--wsi"]
    assert main([*argv, "--level", "1"]) == 0
    assert "segmented 1 image " in capsys.readouterr().out
    assert tifffile.imread(out / "slide_labels.tif").shape == (100, 100)
    assert (out / "slide.geojson").is_file()
    assert main([*argv, "--level", "4"]) == 2  # refused before any work
    assert "available levels: 0, 1" in capsys.readouterr().err
    assert main([*argv, "--level", "1", "--expand-cells", "3"]) == 2  # slides get no cells: said, not ignored
    assert "not cells (--expand-cells)" in capsys.readouterr().err


@pytest.mark.parametrize("channel", [1, "DAPI"])
def test_a_slide_reads_the_chosen_channel(tmp_path, channel):
    image, _ = synthetic_nuclei(size=200, count=40, seed=3)
    nuclei = image.mean(axis=2).astype(np.uint8)
    path = (
        tmp_path / "two.ome.tif"
    )  # channel 0 empty, the nuclei in channel 1, named as a microscope names them
    tifffile.imwrite(
        path,
        np.stack([np.full_like(nuclei, 255), nuclei]),
        tile=(64, 64),
        metadata={"axes": "CYX", "Channel": {"Name": ["empty", "DAPI"]}},
    )
    segmenter = LocalSegmenter(mpp="native", channel=channel)
    summary = segment_slide(segmenter, path, tmp_path / "out", block=64, progress=False)
    expected = LocalSegmenter(mpp="native", instances="fast").segment(nuclei).labels
    same_partition(expected, tifffile.imread(summary["labels"]))
    assert summary["nuclei"] == expected.max() > 10

    with pytest.warns(UserWarning, match=r"2 channels \(empty, DAPI\) and no --channel: using channel 0"):
        summary = segment_slide(LocalSegmenter(mpp="native"), path, tmp_path / "first", progress=False)
    assert summary["nuclei"] == 0
    with pytest.raises(InputError, match="no channel named 'GFP'; channels: empty, DAPI"):
        segment_slide(LocalSegmenter(mpp="native", channel="GFP"), path, tmp_path / "bad", progress=False)


def test_slide_geojson_marks_the_nuclei_clicks_added(slide, tmp_path, monkeypatch):
    path, image = slide
    segment = LocalSegmenter.segment

    def clicking(self, image, points=None):  # as the click head would: the nucleus under a click is added
        result = segment(self, image)
        if points is None:
            return result
        ids = {int(result.labels[int(y), int(x)]) for x, y in points[0]} - {0}
        return result._replace(clicked=tuple(sorted(ids)))

    monkeypatch.setattr(LocalSegmenter, "segment", clicking)
    whole = LocalSegmenter(mpp="native", instances="fast").segment(image).labels
    y, x = (round(c) for c in ndimage.center_of_mass(whole == whole[whole > 0][0]))
    summary = segment_slide(
        LocalSegmenter(mpp="native"),
        path,
        tmp_path / "out",
        block=64,
        clicks=([[x + 0.5, y + 0.5]], None),
        progress=False,
    )
    stitched = tifffile.imread(summary["labels"])
    features = json.loads(summary["geojson"].read_text())["features"]
    clicked = {f["properties"]["id"]: f["properties"]["measurements"]["clicked"] for f in features}
    assert len(clicked) == summary["nuclei"] > 10  # every block's nuclei say so, not only the clicked block's
    assert {i for i, mark in clicked.items() if mark} == {int(stitched[y, x])}


def test_the_halo_follows_the_models_objects(tmp_path):
    from sac.wsi import HALO, object_halo

    assert object_halo(SACConfig()) == HALO  # no typical size recorded
    assert object_halo(SACConfig(nucleus_area=248.0)) == 71  # the nuclei model's median nucleus
    assert object_halo(SACConfig(nucleus_area=2293.5)) == 216  # the gland model's median gland

    # objects 60 px across on blocks of 48: a nuclei-sized halo cuts them, the objects' own keeps them whole
    image = np.full((240, 240, 3), 230, np.uint8)
    yy, xx = np.mgrid[:240, :240]
    for y, x in ((50, 50), (60, 170), (170, 110), (185, 200)):
        image[(yy - y) ** 2 + (xx - x) ** 2 < 30**2] = 40
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(64, 64))
    segmenter = LocalSegmenter(mpp="native")
    segmenter.model.config = dataclasses.replace(segmenter.model.config, nucleus_area=np.pi * 30**2)
    whole = LocalSegmenter(mpp="native", instances="fast").segment(image).labels
    summary = segment_slide(segmenter, path, tmp_path / "out", block=48, progress=False)
    same_partition(whole, tifffile.imread(summary["labels"]))
    cut = segment_slide(segmenter, path, tmp_path / "cut", block=48, halo=8, progress=False)
    assert cut["nuclei"] != whole.max()


def test_a_block_keeps_a_trimmed_nucleus_but_not_a_sliver():
    store = zarr.create_array(store={}, shape=(8, 8), dtype="uint32", fill_value=0)
    store[:, :3] = 7  # an earlier block's nucleus
    labels = np.zeros((8, 8), np.int32)
    labels[0:4, 2:6] = 1  # a quarter of it already claimed: trimmed, kept
    labels[4:8, 0:4] = 2  # three quarters claimed: the earlier block's, dropped
    kept = _claim(store, (slice(0, 8), slice(0, 8)), labels, np.array([False, True, True]), first_id=8)
    assert np.unique(kept).tolist() == [0, 8] and (kept == 8).sum() == 12
    assert (store[:, :3] == 7).all() and (store[4:, 3] == 0).all()


def test_a_rerun_removes_what_a_killed_run_left(slide, tmp_path):
    path, _ = slide
    out = tmp_path / "out"
    (out / ".slide.sac-slide").mkdir(parents=True)  # a killed run's scratch folder
    (out / ".slide.sac-slide" / "progress.json").write_text("{}")
    leftovers = [
        out / ".slide_labels.tif.0123456789ab.tmp.tif",
        out / ".slide.geojson.0123456789ab.tmp.geojson",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"")
    unrelated = [out / ".other.sac-slide", out / "notes.txt"]  # another slide's, and the user's own
    unrelated[0].mkdir()
    unrelated[1].write_text("mine")
    segment_slide(LocalSegmenter(mpp="native"), path, out, progress=False)
    assert not (out / ".slide.sac-slide").exists() and not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in unrelated) and (out / "slide_labels.tif").is_file()


class Interrupted(Exception):
    """Stands for Ctrl-C or a kill part-way through a slide."""


class Interruptions:
    """Stops the next slide run after :meth:`arm` in its ``block``-th block (from 1): before segmenting it
    (``segment``), after its labels are in the store (``labels``), or after its features are on disk but before
    its record (``record``). ``segmented`` counts the blocks the runs segment."""

    def __init__(self, monkeypatch, block: int, where: str) -> None:
        from sac import wsi

        self.block, self.where, self.armed, self.segmented = block, where, False, []
        segment, add, write = LocalSegmenter.segment, wsi.BlockLog.add, wsi.write_json

        def counting_segment(segmenter, image, points=None):
            self.segmented.append(image.shape)
            self._stop("segment", len(self.segmented))
            return segment(segmenter, image, points)

        def failing_add(log, features, area):
            self._stop("labels", log.done + 1)
            return add(log, features, area)

        def failing_record(path, data, default=None):
            self._stop("record", data["done"])
            return write(path, data, default)

        monkeypatch.setattr(LocalSegmenter, "segment", counting_segment)
        monkeypatch.setattr(wsi.BlockLog, "add", failing_add)
        monkeypatch.setattr(wsi, "write_json", failing_record)

    def arm(self) -> None:
        self.armed, self.segmented[:] = True, []

    def _stop(self, where: str, count: int) -> None:
        if self.armed and where == self.where and count == self.block:
            self.armed = False
            raise Interrupted


@pytest.mark.parametrize("where", ["segment", "labels", "record"])
def test_an_interrupted_slide_resumes_at_its_first_unfinished_block(slide, tmp_path, monkeypatch, where):
    path, _ = slide
    whole = segment_slide(LocalSegmenter(mpp="native"), path, tmp_path / "whole", block=64, progress=False)
    out = tmp_path / "out"
    stops = Interruptions(monkeypatch, 6, where)
    stops.arm()
    with pytest.raises(Interrupted):
        segment_slide(LocalSegmenter(mpp="native"), path, out, block=64, progress=False)
    assert len(stops.segmented) == 6 and (out / ".slide.sac-slide").is_dir()
    assert not (out / "slide_labels.tif").exists() and not (out / "slide.geojson").exists()

    stops.segmented.clear()
    summary = segment_slide(LocalSegmenter(mpp="native"), path, out, block=64, progress=False, resume=True)
    # the interrupted block is segmented again, the five before it are not
    assert len(stops.segmented) == whole["blocks"] - 5
    assert np.array_equal(tifffile.imread(summary["labels"]), tifffile.imread(whole["labels"]))
    assert json.loads(summary["geojson"].read_text()) == json.loads(whole["geojson"].read_text())
    assert (summary["nuclei"], summary["area_px"]) == (whole["nuclei"], whole["area_px"])
    assert not (out / ".slide.sac-slide").exists()


def test_a_slide_starts_over_without_resume_or_with_other_settings(slide, tmp_path, monkeypatch):
    path, _ = slide
    out = tmp_path / "out"
    stops = Interruptions(monkeypatch, 3, "segment")
    stops.arm()
    with pytest.raises(Interrupted):
        segment_slide(LocalSegmenter(mpp="native"), path, out, block=64, progress=False)
    stops.segmented.clear()
    other = LocalSegmenter(mpp="native", seed_threshold=0.6)
    summary = segment_slide(other, path, out, block=64, progress=False, resume=True)
    assert len(stops.segmented) == summary["blocks"]  # the earlier blocks were made with other seeds
    fresh = segment_slide(other, path, tmp_path / "fresh", block=64, progress=False)
    assert np.array_equal(tifffile.imread(summary["labels"]), tifffile.imread(fresh["labels"]))

    stops.arm()
    with pytest.raises(Interrupted):
        segment_slide(LocalSegmenter(mpp="native"), path, out, block=64, progress=False)
    stops.segmented.clear()
    segment_slide(LocalSegmenter(mpp="native"), path, out, block=64, progress=False)
    assert len(stops.segmented) == summary["blocks"]  # no resume: from the first block


def test_predict_resume_continues_an_interrupted_slide(slide, tmp_path, monkeypatch):
    from functools import partial

    from sac import pipeline

    path, _ = slide
    monkeypatch.setattr(pipeline, "segment_slide", partial(segment_slide, block=64))  # 16 blocks
    stops = Interruptions(monkeypatch, 6, "segment")
    stops.arm()
    with pytest.raises(Interrupted):
        segment_files(LocalSegmenter(mpp="native"), [path], tmp_path / "out", RunOptions(slides=True), False)
    stops.segmented.clear()
    segment_files(
        LocalSegmenter(mpp="native"), [path], tmp_path / "out", RunOptions(slides=True, resume=True), False
    )
    assert len(stops.segmented) == 16 - 5
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text())["finished"] is True


def test_what_every_block_would_warn_is_said_once(slide, tmp_path, monkeypatch):
    path, _ = slide
    segment = LocalSegmenter.segment

    def warning(self, image, points=None):  # as a coarse level's enlargement warning comes from every block
        warnings.warn("enlarges the image 8.0x", UserWarning, stacklevel=2)
        return segment(self, image, points)

    monkeypatch.setattr(LocalSegmenter, "segment", warning)
    with pytest.warns(UserWarning, match="enlarges the image") as caught:
        summary = segment_slide(
            LocalSegmenter(mpp="native"), path, tmp_path / "out", block=64, progress=False
        )
    assert summary["blocks"] > 1 and len(caught) == 1
