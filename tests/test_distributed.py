"""``predict_many`` on dask.distributed: the same bytes as a single-process run, one model load per worker."""

from __future__ import annotations

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
from sac.inference import predict_files
from sac.io import InputError
from sac.model import SACConfig, SegmentAnyCell

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = SACConfig(backbone="tiny", image_size=64, generator_channels=4, generator_depth=2)
    return SegmentAnyCell(config).save(tmp_path_factory.mktemp("model"))


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


def test_two_worker_processes_match_single_process_bytes(checkpoint, images, tmp_path, one_thread):
    model = SegmentAnyCell.load(checkpoint).prepare_for_inference()
    local = predict_files(model, [images], tmp_path / "local", instances="fast", progress=False)
    failures = predict_many(
        checkpoint, [images], tmp_path / "dask", workers=2, device="cpu", instances="fast", progress=False
    )
    assert [path for path, _ in failures] == [path for path, _ in local] == [images / "corrupt.png"]
    assert "corrupt.png" in failures[0][1]
    written = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(written) == 4 * 5 and written == sorted(p.name for p in (tmp_path / "dask").iterdir())
    for name in written:
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_scheduler_address_and_one_model_load_per_worker(checkpoint, images, tmp_path, monkeypatch):
    loads = []
    real_load = SegmentAnyCell.load

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(SegmentAnyCell, "load", counting_load)
    monkeypatch.setattr(sac.distributed, "_MODELS", {})
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, synthetic_nuclei(size=90, count=8)[0], tile=(32, 32))
    inputs = [images / "img0.png", images / "img1.png", slide]
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert predict_many(checkpoint, inputs, tmp_path / "out", scheduler=address, progress=False) == []
        monkeypatch.setattr("sac.wsi.SLIDE_MIN_SIDE", 64)  # the TIFF now counts as a slide
        assert predict_many(checkpoint, [slide], tmp_path / "wsi", scheduler=address, progress=False) == []
    assert len(loads) == 1
    assert (tmp_path / "out" / "slide_mask.png").is_file()
    assert sorted(p.name for p in (tmp_path / "wsi").iterdir()) == ["slide.geojson", "slide_labels.tif"]
    assert tifffile.imread(tmp_path / "wsi" / "slide_labels.tif").dtype == np.uint32


def test_bad_arguments(checkpoint, images, tmp_path):
    with pytest.raises(InputError, match="not both"):
        predict_many(checkpoint, [images], tmp_path, workers=2, scheduler="tcp://localhost:1")
    with pytest.raises(InputError, match="at least 1"):
        predict_many(checkpoint, [images], tmp_path, workers=0)
    with pytest.raises(InputError, match="not a SAC checkpoint"):
        predict_many(tmp_path, [images], tmp_path, workers=1)


def test_cli_rejects_workers_with_scheduler(checkpoint, images, tmp_path, capsys):
    argv = ["predict", str(images), "-o", str(tmp_path), "--model", str(checkpoint)]
    assert main([*argv, "--workers", "2", "--dask", "tcp://localhost:1"]) == 2
    assert "not both" in capsys.readouterr().err
