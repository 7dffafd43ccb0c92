"""``predict_many`` on dask.distributed: the same bytes as a single-process run, one model load per worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import sac.distributed
from conftest import synthetic_nuclei
from sac.cli import main
from sac.distributed import predict_many
from sac.io import InputError
from sac.options import SegmentOptions
from sac.pipeline import RUN_FILE, SUMMARY_FILE, RunOptions, segment_files
from sac.segmenter import Segmenter

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture
def images(tmp_path) -> Path:
    """Four small images, one of them a TIFF, and a corrupt file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        Image.fromarray(synthetic_nuclei(size=72, count=6, seed=seed)[0]).save(folder / f"img{seed}.png")
    tifffile.imwrite(folder / "img3.tif", synthetic_nuclei(size=80, count=6, seed=3)[0])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.fixture
def one_thread():
    """Workers run torch on one thread; the reference run must too for bit-identical floating point."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_worker_processes_match_single_process_bytes(
    tiny_checkpoint, tiny_segmenter, images, tmp_path, one_thread, capsys
):
    options = SegmentOptions(instances="fast")
    local = segment_files(
        tiny_segmenter.with_options(instances="fast"), [images], tmp_path / "local", progress=False
    )
    failures = predict_many(
        tiny_checkpoint, [images], tmp_path / "dask", options, workers=2, device="cpu", progress=True
    )
    scale_lines = [line for line in capsys.readouterr().err.splitlines() if "scale" in line]
    assert len(scale_lines) == 4 and all(line.startswith("sac: ") for line in scale_lines)  # one per image
    assert [path for path, _ in failures] == [path for path, _ in local] == [images / "corrupt.png"]
    assert "corrupt.png" in failures[0][1]
    written = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(written) == 4 * 5 + 2 and written == sorted(p.name for p in (tmp_path / "dask").iterdir())
    for name in set(written) - {RUN_FILE}:
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    local_run, dask_run = (json.loads((tmp_path / run / RUN_FILE).read_text()) for run in ("local", "dask"))
    for key in (
        "model",
        "options",
        "images",
        "failures",
    ):  # the same run, told the same way (not date, command)
        assert local_run[key] == dask_run[key], key


def test_scheduler_address_and_one_model_load_per_worker(tiny_checkpoint, images, tmp_path, monkeypatch):
    loads = []
    real_load = Segmenter.load

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(Segmenter, "load", counting_load)
    monkeypatch.setattr(sac.distributed, "_SEGMENTERS", {})
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, synthetic_nuclei(size=90, count=8)[0], tile=(32, 32))
    inputs = [images / "img0.png", images / "img1.png", slide]
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        options = SegmentOptions()  # a mask only, except for slides
        run = dict(scheduler=address, progress=False)
        assert predict_many(tiny_checkpoint, inputs, tmp_path / "out", options, **run) == []
        masks = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").glob("*_mask.png")}
        resumed = predict_many(
            tiny_checkpoint, inputs, tmp_path / "out", options, RunOptions(resume=True), **run
        )
        assert resumed == [] and len(masks) == 3  # every image was finished: none segmented again
        assert masks == {path: path.stat().st_mtime_ns for path in (tmp_path / "out").glob("*_mask.png")}
        monkeypatch.setattr("sac.wsi.SLIDE_MIN_SIDE", 64)  # the TIFF now counts as a slide
        assert predict_many(tiny_checkpoint, [slide], tmp_path / "wsi", options, **run) == []
    assert len(loads) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img0_mask.png",
        "img1_mask.png",
        RUN_FILE,
        SUMMARY_FILE,
        "slide_mask.png",
    ]
    assert sorted(p.name for p in (tmp_path / "wsi").iterdir()) == [
        RUN_FILE,
        SUMMARY_FILE,
        "slide.geojson",
        "slide_labels.tif",
    ]
    assert tifffile.imread(tmp_path / "wsi" / "slide_labels.tif").dtype == np.uint32


def test_bad_arguments(tiny_checkpoint, images, tmp_path):
    options = SegmentOptions()
    with pytest.raises(InputError, match="not both"):
        predict_many(tiny_checkpoint, [images], tmp_path, options, workers=2, scheduler="tcp://localhost:1")
    with pytest.raises(InputError, match="at least 1"):
        predict_many(tiny_checkpoint, [images], tmp_path, options, workers=0)
    with pytest.raises(InputError, match="not a SAC checkpoint"):
        predict_many(tmp_path, [images], tmp_path, options, workers=1)
    points = tmp_path / "points.csv"  # clicks are matched to the inputs before any cluster starts
    points.write_text("x,y,label,image\n1,2,1,elsewhere.png\n")
    with pytest.raises(InputError, match="not among the inputs"):
        predict_many(tiny_checkpoint, [images], tmp_path, options, RunOptions(points_file=points), workers=1)


def test_cli_rejects_workers_with_scheduler(tiny_checkpoint, images, tmp_path, capsys):
    argv = ["predict", str(images), "-o", str(tmp_path), "--model", str(tiny_checkpoint)]
    assert main([*argv, "--workers", "2", "--dask", "tcp://localhost:1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*argv, "--workers", "2", "--batch-size", "0"]) == 2  # options fail before any cluster starts
    assert "batch size" in capsys.readouterr().err
