"""Shared fixtures: tiny SAM configurations and models, and synthetic nuclei images, so tests run in seconds on a
CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sac.backbone import sam_config
from sac.model import SACConfig, SegmentAnyCell
from sac.segmenter import Segmenter

# The smallest SAC that runs end to end: the "tiny" backbone at 64 px with a two-level, four-channel generator.
TINY_MODEL = dict(backbone="tiny", image_size=64, generator_channels=4, generator_depth=2)


def tiny_sam_config(image_size: int = 64):
    """A SAM small enough for unit tests (two encoder layers, one of them global)."""
    return sam_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        global_attn_indexes=(1,),
        image_size=image_size,
        window_size=2,
        output_channels=32,
        decoder_mlp_dim=64,
    )


def tiny_model(**overrides: Any) -> SegmentAnyCell:
    """A freshly initialised tiny SAC (in training mode); ``overrides`` change its SACConfig fields."""
    return SegmentAnyCell(SACConfig(**{**TINY_MODEL, **overrides}))


def synthetic_nuclei(size: int = 96, count: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB image with dark purple disks and its instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for index in range(1, count + 1):
        cy, cx = rng.integers(6, size - 6, 2)
        radius = rng.integers(3, 7)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = index
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (235, 200, 225)
    image[labels > 0] = (90, 40, 140)
    noise = rng.normal(0, 8, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), labels


def square_answers(monkeypatch, half: int = 3) -> list[int]:
    """Make SAM answer every positive click with the square of ``2 * half + 1`` pixels around it, so click tests
    do not depend on a tiny model's outlines; returns the list of how many clicks each call was asked."""
    import sac.instances
    from sac.instances import NucleusMask

    asked: list[int] = []

    def segment_at_points(model, image, clicks, negatives, batch_size=64):
        asked.append(len(clicks))
        answers = []
        for row, col in clicks:
            box = np.zeros(image.shape[:2], bool)
            box[max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1] = True
            answers.append(NucleusMask(0.9, *np.nonzero(box)))
        return answers

    monkeypatch.setattr(sac.instances, "segment_at_points", segment_at_points)
    return asked


def encode_image(array: np.ndarray, suffix: str, **options: Any) -> bytes:
    """The bytes of ``array`` saved as ``suffix`` (TIFF by tifffile, other formats by Pillow) with ``options``."""
    buffer = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(buffer, array, **options)
    else:
        Image.fromarray(array).save(buffer, format=Image.registered_extensions()[suffix], **options)
    return buffer.getvalue()


# One thread: the models in tests are tiny, and a second thread only contends with whatever else runs.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny model, the same weights in every test session whatever test builds it first."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = tiny_model()
    return model.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_checkpoint) -> Segmenter:
    """``tiny_checkpoint`` loaded on the CPU with default options (a mask only); shared, so never mutate it:
    derive variants with ``with_options``."""
    return Segmenter.load(tiny_checkpoint)


def write_clicks(path: Path, positive: list, negative: list) -> None:
    """A clicks file as a user writes one: CSV (x, y, label) or JSON ({"positive": ..., "negative": ...})."""
    if path.suffix == ".json":
        path.write_text(
            json.dumps({"positive": [list(p) for p in positive], "negative": [list(p) for p in negative]})
        )
    else:
        rows = [*(f"{x!r},{y!r},1" for x, y in positive), *(f"{x!r},{y!r},0" for x, y in negative)]
        path.write_text("\n".join(["x,y,label", *rows]) + "\n")
