"""Reliability end to end: every kind of input through ``sac predict`` and ``sac evaluate``, and training runs
killed with SIGKILL (at a random moment and in the middle of a checkpoint) that resume to the weights of an
uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file

import sac.model
from conftest import encode_image, synthetic_nuclei, tiny_model
from sac.cli import main
from sac.model import SegmentAnyCell
from sac.pipeline import RUN_FILE, SUMMARY_FILE
from sac.train import LOG_FILE, STATE_FILE, Trainer, read_log
from test_data import _write_folder
from test_train import synthetic_samples, tiny_config

INSTANCE_OUTPUTS = ("_mask.png", "_labels.tif", "_nuclei.csv", ".geojson", "_overlay.png")


def _input_matrix() -> dict[str, tuple[bytes, tuple[int, int] | None]]:
    """Every kind of file a user may feed ``sac predict``: name -> (content, its (H, W), or None if unusable)."""
    rgb, _ = synthetic_nuclei(size=80, count=6)
    grey = rgb[..., 1]
    full = rgb.shape[:2]
    png, tif = encode_image(rgb, ".png"), encode_image(rgb.astype(np.uint16) * 257, ".tif")
    with_nan = np.ones((20, 20), np.float32)
    with_nan[3, 4] = np.nan
    with_inf = np.where(np.isnan(with_nan), np.inf, with_nan)
    return {
        "rgb.png": (png, full),
        "grey.png": (encode_image(grey, ".png"), full),
        "grey-alpha.png": (encode_image(np.dstack([grey, grey]), ".png"), full),
        "rgba.png": (encode_image(np.dstack([rgb, grey]), ".png"), full),
        "palette-gif-named.png": (encode_image(rgb, ".gif"), full),
        "sixteen.png": (encode_image(grey.astype(np.uint16) * 257, ".png"), full),
        "photo.jpg": (encode_image(rgb, ".jpg"), full),
        "png-named.jpg": (png, full),
        "bitmap.bmp": (encode_image(rgb, ".bmp"), full),
        "rgb16.tif": (tif, full),
        "int32.tif": (encode_image(grey.astype(np.int32) * 1000 - 50_000, ".tif"), full),
        "unit-float.tif": (encode_image(grey.astype(np.float32) / 255, ".tif"), full),
        "wide-float.tiff": (encode_image(grey.astype(np.float64) * 3.7e6 - 1e8, ".tiff"), full),
        "channels-first.tif": (
            encode_image(np.moveaxis(rgb[..., :2], -1, 0), ".tif", photometric="minisblack"),
            full,
        ),
        "smaller-than-tile.png": (encode_image(rgb[:20, :30], ".png"), (20, 30)),
        "one-row.png": (encode_image(rgb[:1], ".png"), (1, 80)),
        "one-column.tif": (encode_image(grey[:, :1], ".tif"), (80, 1)),
        "one-pixel.png": (encode_image(rgb[:1, :1], ".png"), (1, 1)),
        "empty.png": (b"", None),
        "truncated.png": (png[: len(png) // 2], None),
        "truncated-tiff.tif": (tif[: len(tif) // 2], None),
        "text.jpg": (b"not an image\n", None),
        "nan.tif": (encode_image(with_nan, ".tif"), None),
        "inf.tif": (encode_image(with_inf, ".tif"), None),
        "six-channels.tif": (
            encode_image(np.zeros((20, 20, 6), np.uint8), ".tif", photometric="minisblack"),
            None,
        ),
    }


def _assert_plain_file_mode(paths: list[Path], folder: Path) -> None:
    """Outputs are as readable as any file the user creates (0o666 less the umask), not owner-only."""
    reference = folder / "plain-file"
    reference.touch()
    expected = stat.S_IMODE(reference.stat().st_mode)
    reference.unlink()
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in paths}
    assert {name: mode for name, mode in modes.items() if mode != oct(expected)} == {}, oct(expected)


def test_predict_over_every_kind_of_input(tiny_checkpoint, tmp_path, capsys):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    matrix = _input_matrix()
    for name, (content, _) in matrix.items():
        (inputs / name).write_bytes(content)
    bad = sorted(name for name, (_, shape) in matrix.items() if shape is None)

    assert main(["predict", str(inputs), "-o", str(out), "--model", str(tiny_checkpoint), "--instances"]) == 1

    # the failures are listed together at the end, one line per file naming the file and its problem
    summary = capsys.readouterr().err.split(f"sac: {len(bad)} of {len(matrix)} images failed:\n")[-1]
    named = [name for line in summary.splitlines() for name in bad if str(inputs / name) in line]
    assert sorted(named) == bad and len(summary.splitlines()) == len(bad)
    for name, (_, shape) in matrix.items():
        stem = Path(name).stem
        if shape is None:
            assert not list(out.glob(f"{stem}*")), name
            continue
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.size[::-1] == shape, name
        assert tifffile.imread(out / f"{stem}_labels.tif").shape == shape, name
        assert all((out / f"{stem}{suffix}").is_file() for suffix in INSTANCE_OUTPUTS), name
    written = sorted(path for path in out.iterdir() if path.name not in (RUN_FILE, SUMMARY_FILE))
    assert len(written) == len(INSTANCE_OUTPUTS) * (len(matrix) - len(bad))
    assert not [path for path in written if path.name.startswith(".") or ".tmp" in path.name]
    _assert_plain_file_mode(written, tmp_path)


def _labelled_folder(root: Path, id_step: int = 1) -> Path:
    """A ``folder`` dataset under ``root`` whose masks number their nuclei ``id_step`` apart."""
    samples = synthetic_samples(2)
    for sample in samples:
        sample.labels *= id_step
    _write_folder(root, samples)
    return root


def _evaluate(checkpoint: Path, data: Path) -> int:
    return main(["evaluate", "--model", str(checkpoint), "--dataset", "folder", "--data-root", str(data)])


def test_evaluate_scores_gappy_labels_like_sequential_ones(tiny_checkpoint, tmp_path, capsys):
    assert _evaluate(tiny_checkpoint, _labelled_folder(tmp_path / "sequential")) == 0
    sequential = capsys.readouterr().out.split("\n", 1)[1]  # the scores, after the header naming the folder
    assert _evaluate(tiny_checkpoint, _labelled_folder(tmp_path / "gappy", id_step=7)) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == sequential and "dice" in sequential


@pytest.mark.parametrize(
    ("mask", "problem"),
    [
        (np.zeros((90, 96), np.uint16), "mask size 90x96 differs from image size 96x96"),
        (np.full((96, 96), -1, np.int16), "mask contains negative labels"),
    ],
)
def test_evaluate_refuses_a_bad_mask_in_one_line(tiny_checkpoint, tmp_path, capsys, mask, problem):
    labelled_folder = _labelled_folder(tmp_path)
    (labelled_folder / "masks" / "s1.png").unlink()
    tifffile.imwrite(labelled_folder / "masks" / "s1.tif", mask)
    assert _evaluate(tiny_checkpoint, labelled_folder) == 2
    [line] = [text for text in capsys.readouterr().err.splitlines() if not text.startswith("sac: warning")]
    assert problem in line and str(labelled_folder / "masks" / "s1.tif") in line
    if "size" in problem:
        assert str(labelled_folder / "images" / "s1.png") in line


# --------------------------------------------------------------------------- interrupted training
def test_checkpoint_interrupted_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    directory = tiny_model().save(tmp_path / "checkpoint")

    def interrupt(path: Path) -> str:  # between writing the new weights and recording their hash
        raise KeyboardInterrupt

    monkeypatch.setattr(sac.model, "sha256sum", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(generator_channels=8).save(directory)
    monkeypatch.undo()
    assert SegmentAnyCell.load(directory).config.generator_channels == 4
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]


MAX_STEPS = 12


def _sac(log: Path, *args: str) -> subprocess.Popen:
    """``sac ARGS`` in a fresh single-threaded interpreter, its progress output appended to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "sac.cli", *args], stdout=subprocess.DEVNULL, stderr=handle, env=env
        )


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float = 0.0) -> None:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` first holds; fails if it ends before."""
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting to interrupt the run"
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"


def _new_state_temporary(run: Path) -> Callable[[], bool]:
    """Whether a temporary ``state.pt`` (written before its rename) has appeared since this call."""
    before = set(os.listdir(run))
    return lambda: any(name.startswith(f".{STATE_FILE}.") and name not in before for name in os.listdir(run))


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    data = tmp_path / "data"
    _write_folder(data, synthetic_samples(4))
    settings = dataclasses.asdict(tiny_config(tmp_path, checkpoint_every=2))
    for flag in ("datasets", "data_root", "out", "max_steps"):
        del settings[flag]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    flags = ["--dataset", "folder", "--data-root", str(data), "--max-steps", str(MAX_STEPS)]
    reference, run, log = tmp_path / "reference", tmp_path / "run", tmp_path / "sac.log"
    assert main(["train", "--config", str(config), *flags, "--out", str(reference)]) == 0

    # (a) at a random moment once the first checkpoint is complete
    process = _sac(log, "train", "--config", str(config), *flags, "--out", str(run))
    delay = np.random.default_rng(7).uniform(0.0, 1.0)
    _kill_when(process, (run / "last" / "config.json").exists, delay)
    SegmentAnyCell.load(run / "last")
    # (b) while the resumed run writes its next checkpoint
    process = _sac(log, "train", "--resume", str(run))
    _kill_when(process, _new_state_temporary(run))
    SegmentAnyCell.load(run / "last")

    assert main(["train", "--resume", str(run)]) == 0, log.read_text()[-2000:]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == MAX_STEPS
    expected, resumed = (load_file(path / "last" / "model.safetensors") for path in (reference, run))
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-5, msg=key)
    steps = [row["step"] for row in read_log(run / LOG_FILE)]
    assert steps == [row["step"] for row in read_log(reference / LOG_FILE)] and len(set(steps)) == len(steps)
    _assert_plain_file_mode([run / STATE_FILE, run / LOG_FILE, run / "last" / "model.safetensors"], tmp_path)


def _state_from(config_overrides: dict, out: Path) -> bytes:
    """The bytes of an untrained run's ``state.pt``, for a model configured with ``config_overrides``."""
    trainer = Trainer(tiny_config(out, **config_overrides), synthetic_samples(2), [])
    trainer.save_state()
    return (out / STATE_FILE).read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "other architecture"])
def test_resume_refuses_a_bad_state_in_one_line(tmp_path, capsys, damage):
    data, run = tmp_path / "data", tmp_path / "run"
    _write_folder(data, synthetic_samples(2))
    config = dataclasses.asdict(tiny_config(run, data_root=str(data)))
    state = _state_from({}, tmp_path / "good")
    damaged = {
        "truncated": state[: len(state) // 2],
        "random bytes": np.random.default_rng(0).bytes(4000),
        "empty": b"",
        "other architecture": _state_from({"generator_channels": 8}, tmp_path / "other"),
    }[damage]
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps(config))
    (run / STATE_FILE).write_bytes(damaged)
    assert main(["train", "--resume", str(run)]) == 2
    [line] = [text for text in capsys.readouterr().err.splitlines() if not text.startswith("sac: warning")]
    assert line.startswith(f"sac: error: {run / STATE_FILE}: cannot resume from this training state (")
