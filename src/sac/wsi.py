"""Whole-slide images: stream a slide through the model block by block, with memory bounded by the block size.

Each block is segmented with a halo of context around it and keeps only the nuclei whose centroid lies in its
core, so a nucleus cut by a block border is taken whole from the block where it is central: none is duplicated
or cut as long as the halo exceeds a nucleus diameter. Labels go to an on-disk zarr store, then stream into a
tiled BigTIFF; GeoJSON features are written as each block finishes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import tifffile
import zarr
from tqdm import tqdm

from sac.export import labels_to_geojson
from sac.inference import check_unique_stems, instance_mode, report_skipped
from sac.instances import instances_from_maps, refine_instances_with_sam
from sac.io import ROBUST_PERCENTILES, InputError, atomic_write, check_file, list_images, to_rgb_uint8

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")
SLIDE_MIN_SIDE = 8192  # TIFFs larger than this on a side are streamed rather than read whole
BLOCK, HALO = 2048, 64  # pixels a side: ~0.4 GB of working memory per block, context for 60-pixel nuclei
OUTPUT_TILE = 256
_RANGE_SAMPLE_SIDE = 1024  # pixels a side sampled to fix one intensity range for a whole non-8-bit slide


class MapPredictor(Protocol):
    """Anything that turns an image into (probability, generator probability, centre) maps, like the model."""

    def predict_maps(self, image: np.ndarray, **options: Any) -> np.ndarray: ...


class Slide:
    """One level of a slide; ``slide[rows, cols]`` decodes only the TIFF tiles that the region touches."""

    def __init__(self, array: zarr.Array, store: Any, path: Path):
        self._array, self._store = array, store
        shape = array.shape
        self._lead = 0  # leading singleton axes (OME-TIFF T, Z, ...) skipped on every read
        while len(shape) - self._lead > 2 and shape[self._lead] == 1:
            self._lead += 1
        shape = shape[self._lead :]
        self._channel_first = len(shape) == 3 and shape[0] <= 4 < shape[2]
        if self._channel_first:
            shape = (*shape[1:], shape[0])
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > 4):
            raise InputError(
                f"{path}: unsupported slide shape {array.shape}; expected (H, W) or (H, W, C<=4)"
            )
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = array.dtype

    def __getitem__(self, region: tuple[slice, slice]) -> np.ndarray:
        rows, cols = region
        index = (0,) * self._lead + ((slice(None), rows, cols) if self._channel_first else (rows, cols))
        data = np.asarray(self._array[index])
        return np.moveaxis(data, 0, -1) if self._channel_first else data

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def open_slide(path: str | os.PathLike, level: int = 0) -> Slide:
    """Open one pyramid level of a TIFF, BigTIFF, OME-TIFF or SVS slide without reading its pixels."""
    path = Path(path)
    check_file(path)
    try:
        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
    except Exception as exc:  # tifffile and zarr raise many unrelated types for foreign or corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read as a TIFF slide ({reason})") from exc
    levels = sorted(node.array_keys(), key=int) if isinstance(node, zarr.Group) else ["0"]
    if str(level) not in levels:
        store.close()
        raise InputError(f"{path}: no pyramid level {level}; available levels: {', '.join(levels)}")
    try:
        return Slide(node[str(level)] if isinstance(node, zarr.Group) else node, store, path)
    except InputError:
        store.close()
        raise


def is_slide(path: Path) -> bool:
    """SVS files, and TIFFs too large to read whole (more than ``SLIDE_MIN_SIDE`` pixels on a side)."""
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        return False
    if suffix == ".svs":
        return True
    try:
        with open_slide(path) as slide:
            return max(slide.shape[:2]) > SLIDE_MIN_SIDE
    except InputError:  # leave it to the image reader, which reports the problem with the other failures
        return False


def split_slides(inputs: Iterable[str | os.PathLike], force: bool = False) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into (images, slides); ``force`` treats every input as a slide."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        # list_images knows only whole-image formats, not SVS
        is_svs = path.is_file() and path.suffix.lower() == ".svs"
        paths += [path] if is_svs else list_images([path])
    paths = list(dict.fromkeys(paths))
    check_unique_stems(paths)
    slides = [path for path in paths if force or is_slide(path)]
    return [path for path in paths if path not in slides], slides


def _check_slide_options(block: int, halo: int, instances: bool | str, threshold: float) -> str:
    """Fail on bad options before any slide is read; returns the instance mode (slides always get labels)."""
    if block < 1 or halo < 0:
        raise InputError(f"block must be positive and halo not negative, got block {block} and halo {halo}")
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be in [0, 1], got {threshold}")
    return instance_mode(instances) or "fast"


def segment_slide(
    model: MapPredictor,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    level: int = 0,
    block: int = BLOCK,
    halo: int = HALO,
    instances: bool | str = "fast",
    threshold: float = 0.5,
    progress: bool = True,
    **map_options: Any,
) -> dict:
    """Segment a slide into ``<stem>_labels.tif`` (tiled uint32 BigTIFF) and ``<stem>.geojson``.

    Coordinates are pixels of the chosen ``level``. ``map_options`` (tile, overlap, batch_size) go to
    ``model.predict_maps``; ``instances="sam"`` refines each block's nuclei with SAM and needs a SegmentAnyCell.
    Returns a summary: nuclei count, slide shape, block count and output paths.
    """
    mode = _check_slide_options(block, halo, instances, threshold)
    path, out_dir = Path(path), Path(out_dir)
    labels_path, geojson_path = out_dir / f"{path.stem}_labels.tif", out_dir / f"{path.stem}.geojson"
    with open_slide(path, level) as slide:
        height, width = slide.shape[:2]
        value_range = _value_range(slide)
        origins = [(y, x) for y in range(0, height, block) for x in range(0, width, block)]
        out_dir.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=out_dir) as scratch,
            atomic_write(geojson_path) as geojson_tmp,
            atomic_write(labels_path) as labels_tmp,
        ):
            store = zarr.create_array(
                scratch,
                shape=(height, width),
                chunks=(OUTPUT_TILE, OUTPUT_TILE),
                dtype="uint32",
                fill_value=0,
            )
            nuclei = 0
            with open(geojson_tmp, "w") as handle:
                handle.write('{"type": "FeatureCollection", "features": [')
                for y, x in tqdm(origins, desc=f"sac {path.name}", unit="block", disable=not progress):
                    rows = slice(max(0, y - halo), min(height, y + block + halo))
                    cols = slice(max(0, x - halo), min(width, x + block + halo))
                    image = _scaled(slide[rows, cols], value_range)
                    maps = model.predict_maps(image, **map_options)
                    labels = instances_from_maps(maps[0], maps[2], threshold)
                    if mode == "sam":
                        labels = refine_instances_with_sam(model, to_rgb_uint8(image), labels)
                    central = _central(labels, (y - rows.start, x - cols.start), block)
                    kept = _claim(store, (rows, cols), labels, central, nuclei + 1)
                    features = labels_to_geojson(kept, offset_xy=(cols.start, rows.start))["features"]
                    if features:
                        handle.write((", " if nuclei else "") + ", ".join(map(json.dumps, features)))
                    nuclei += len(features)
                handle.write("]}")
            with tifffile.TiffWriter(labels_tmp, bigtiff=True) as tif:
                tif.write(
                    _label_tiles(store),
                    shape=(height, width),
                    dtype=np.uint32,
                    tile=(OUTPUT_TILE, OUTPUT_TILE),
                    compression="zlib",
                    photometric="minisblack",
                )
    return {
        "nuclei": nuclei,
        "shape": (height, width),
        "level": level,
        "blocks": len(origins),
        "labels": labels_path,
        "geojson": geojson_path,
    }


def segment_slides(
    model: MapPredictor,
    paths: list[Path],
    out_dir: str | os.PathLike,
    level: int = 0,
    block: int = BLOCK,
    halo: int = HALO,
    instances: bool | str = "fast",
    threshold: float = 0.5,
    points_file: str | os.PathLike | None = None,
    progress: bool = True,
    **map_options: Any,
) -> list[tuple[Path, str]]:
    """:func:`segment_slide` over many slides; like ``predict_files``, a bad slide is reported and skipped.

    Takes ``predict_files``'s options too, so one set serves images and slides; bad options fail at once.
    """
    if points_file is not None and paths:
        raise InputError(f"{points_file}: manual points are not supported for slides")
    _check_slide_options(block, halo, instances, threshold)
    failures = []
    for path in paths:
        try:
            segment_slide(
                model, path, out_dir, level, block, halo, instances, threshold, progress, **map_options
            )
        except InputError as error:
            failures.append(report_skipped(path, error))
    return failures


def _value_range(slide: Slide) -> tuple[float, float] | None:
    """One intensity range for the whole slide (None for 8-bit data, used as is).

    Stretching each block by its own percentiles, as single images are, would give every block a different
    contrast and visible seams; the range comes from a strided sample so it costs one block's memory.
    """
    if slide.dtype in (np.uint8, np.bool_):
        return None
    step = max(1, -(-max(slide.shape[:2]) // _RANGE_SAMPLE_SIDE))
    lo, hi = np.percentile(slide[::step, ::step], ROBUST_PERCENTILES)
    return lo, hi  # numpy scalars, so blocks are scaled with the same arithmetic as whole images


def _scaled(image: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map ``image`` to 0..1 by the slide's range; the model's uint8 conversion then scales every block alike."""
    if value_range is None:
        return image
    lo, hi = value_range
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _central(labels: np.ndarray, core_origin: tuple[int, int], block: int) -> np.ndarray:
    """Per label id, whether its centroid lies in the block's core.

    Compared as integer sums (row sum against start * pixel count), which are exact, so two blocks sharing a
    border never both claim, or both drop, a nucleus whose centroid sits on it.
    """
    height, width = labels.shape
    flat = labels.ravel()
    counts = np.bincount(flat)
    row_sums = np.bincount(flat, weights=np.repeat(np.arange(height, dtype=np.float64), width))
    col_sums = np.bincount(flat, weights=np.tile(np.arange(width, dtype=np.float64), height))
    central = np.ones(counts.shape, bool)
    for sums, start in zip((row_sums, col_sums), core_origin, strict=True):
        central &= (sums >= start * counts) & (sums < (start + block) * counts)
    central[0] = False
    return central


def _claim(
    store: zarr.Array, region: tuple[slice, slice], labels: np.ndarray, central: np.ndarray, first_id: int
) -> np.ndarray:
    """Write this block's central nuclei to ``store`` with global ids from ``first_id``; returns what was kept.

    Pixels an earlier block already claimed stay with it, so a model that disagrees with itself across blocks
    can trim a nucleus but never overwrite one.
    """
    current = store[region]
    keep = central[labels] & (current == 0)
    ids = np.unique(labels[keep])
    lookup = np.zeros(len(central), np.uint32)
    lookup[ids] = np.arange(first_id, first_id + ids.size, dtype=np.uint32)
    kept = np.where(keep, lookup[labels], 0).astype(np.uint32)
    store[region] = np.where(keep, kept, current)
    return kept


def _label_tiles(store: zarr.Array) -> Iterator[np.ndarray]:
    """Output tiles in TIFF order, reading one row of tiles at a time from the store."""
    height, width = store.shape
    for y in range(0, height, OUTPUT_TILE):
        strip = store[y : y + OUTPUT_TILE]
        for x in range(0, width, OUTPUT_TILE):
            yield strip[:, x : x + OUTPUT_TILE]
