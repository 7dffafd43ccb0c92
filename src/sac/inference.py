"""The file pipeline behind ``sac predict``: images in; masks, label TIFFs, tables, GeoJSON and overlays out.

A batch keeps going past unreadable images: each is reported and returned as a failure, so one corrupt file
does not cost the rest of a night's run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sac.export import write_geojson, write_labels_tif, write_mask_png, write_nuclei_csv, write_overlay
from sac.instances import instances_from_maps, refine_instances_with_sam
from sac.io import InputError, list_images, read_image, to_rgb_uint8
from sac.prompts import read_points_file
from sac.tiling import DEFAULT_OVERLAP, tile_starts

DEVICES = ("auto", "cpu", "cuda", "mps")
INSTANCE_MODES = ("fast", "sam")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``auto|cpu|cuda|mps``; ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        return torch.device(next(kind for kind, present in available.items() if present))
    if name not in available:
        raise InputError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    if not available[name]:
        raise InputError(f"device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def instance_mode(instances: bool | str) -> str | None:
    """Normalise the ``instances`` option: ``None`` for a mask only, else ``"fast"`` or ``"sam"``."""
    if instances is False or instances is None:
        return None
    mode = "fast" if instances is True else instances
    if mode not in INSTANCE_MODES:
        raise InputError(f"unknown instance mode {instances!r}; expected {' or '.join(INSTANCE_MODES)}")
    return mode


def segment_image(
    model: torch.nn.Module,
    image: np.ndarray,
    points: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    instances: bool | str = False,
    threshold: float = 0.5,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The semantic mask and, with ``instances``, the labels, from a single pass of the model.

    One pass serves both so written masks and evaluated Dice come from the same probabilities as the labels.
    On CUDA it runs under bfloat16 autocast, which halves memory and time with no visible loss.
    """
    mode = instance_mode(instances)
    device = model.pixel_mean.device
    precision = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    with precision:
        maps = model.predict_maps(image, points, tile, overlap, batch_size)
        labels = None if mode is None else instances_from_maps(maps[0], maps[2], threshold)
        if mode == "sam":
            labels = refine_instances_with_sam(model, to_rgb_uint8(image), labels)
    return maps[0] >= threshold, labels


def predict_files(
    model: torch.nn.Module,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    instances: bool | str = False,
    points_file: str | os.PathLike | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    threshold: float = 0.5,
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Segment image files and folders into ``out_dir``; returns the skipped files with a one-line reason.

    Writes ``<stem>_mask.png``, and with ``instances`` also ``<stem>_labels.tif``, ``<stem>_nuclei.csv``,
    ``<stem>.geojson`` and ``<stem>_overlay.png``. Options are checked before the first image so a typo does
    not surface as one failure per file.
    """
    paths = list_images(inputs)
    check_unique_stems(paths)
    instance_mode(instances)
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    tile_starts(0, tile or model.config.image_size, overlap)
    points = read_points_file(points_file) if points_file is not None else None
    out_dir = Path(out_dir)
    failures = []
    for path in tqdm(paths, desc="sac predict", unit="image", disable=not progress):
        try:
            image = read_image(path)
            mask, labels = segment_image(
                model, image, points, instances, threshold, tile, overlap, batch_size
            )
            _write_outputs(out_dir / path.stem, image, mask, labels)
        except InputError as error:
            failures.append(report_skipped(path, error))
    return failures


def report_skipped(path: Path, error: InputError) -> tuple[Path, str]:
    """Say on stderr that ``path`` was skipped, in one line that names it; returns (path, message)."""
    message = str(error).splitlines()[0]
    message = message if str(path) in message else f"{path}: {message}"
    tqdm.write(f"sac: skipped {message}", file=sys.stderr)
    return path, message


def check_unique_stems(paths: list[Path]) -> None:
    """Outputs are named after the stem, so ``a.png`` and ``a.tif`` would silently overwrite each other."""
    counts = Counter(path.stem for path in paths)
    clashing = [str(path) for path in paths if counts[path.stem] > 1]
    if clashing:
        raise InputError(f"{', '.join(clashing)}: same file name stem, so their outputs would collide")


def _write_outputs(base: Path, image: np.ndarray, mask: np.ndarray, labels: np.ndarray | None) -> None:
    write_mask_png(base.with_name(f"{base.name}_mask.png"), mask)
    if labels is None:
        return
    write_labels_tif(base.with_name(f"{base.name}_labels.tif"), labels)
    write_nuclei_csv(base.with_name(f"{base.name}_nuclei.csv"), labels, image)
    write_geojson(base.with_name(f"{base.name}.geojson"), labels)
    write_overlay(base.with_name(f"{base.name}_overlay.png"), image, labels)
