"""Whole-slide images: stream a slide through the model block by block, with memory bounded by the block size.

Each block is segmented with a halo of context around it and keeps only the nuclei whose centroid lies in its
core, so a nucleus cut by a block border is taken whole from the block where it is central: none is duplicated
or cut as long as the halo exceeds its diameter (the halo follows the model's objects: nuclei or glands). Labels go to an on-disk zarr store, then stream into a
tiled BigTIFF; GeoJSON features are written as each block finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tifffile
import zarr
from tqdm import tqdm

from sac.clicks import check_clicks_inside
from sac.export import labels_to_geojson, output_path, output_stem, resolution_tags
from sac.io import (
    ROBUST_PERCENTILES,
    InputError,
    Samples,
    as_json,
    atomic_write,
    check_file,
    choose_channel,
    first_line,
    is_channel_first,
    leftover_temporaries,
    read_pixel_size,
    tiff_channels,
    to_rgb_uint8,
    write_json,
)
from sac.model import SACConfig, model_record
from sac.points import Points, as_clicks, clicks_in_window
from sac.progress import progress_bar
from sac.segmenter import Segmenter

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")
SLIDE_MIN_SIDE = 8192  # TIFFs larger than this on a side are streamed rather than read whole
BLOCK, HALO = 2048, 64  # pixels a side at the model's scale: ~0.4 GB of working memory per block; least halo
HALO_DIAMETERS = 4  # the halo spans this many of the model's typical object diameters (glands: about 216 px)
OUTPUT_TILE = 256
# an unfinished slide's scratch folder in the output folder: ``.<stem>`` and this
SCRATCH_SUFFIX = ".sac-slide"
_RANGE_SAMPLE_SIDE = 1024  # pixels a side sampled to fix one intensity range for a whole non-8-bit slide
ESTIMATE_SIDE = 1024  # pixels a side of the central region that sets an unknown slide pixel size


class Slide:
    """One level of a slide; ``slide[rows, cols]`` decodes only the TIFF tiles that the region touches."""

    def __init__(self, array: zarr.Array, store: Any, path: Path, downsample: float = 1.0):
        self._array, self._store = array, store
        self.downsample = downsample  # level-0 pixels per pixel of this level
        self.levels = 1  # pyramid levels in the file
        shape = array.shape
        self._lead = 0  # leading singleton axes (OME-TIFF T, Z, ...) skipped on every read
        while len(shape) - self._lead > 2 and shape[self._lead] == 1:
            self._lead += 1
        shape = shape[self._lead :]
        self._channel_first = is_channel_first(shape)
        if self._channel_first:
            shape = (*shape[1:], shape[0])
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > 4):
            raise InputError(
                f"{path}: unsupported slide shape {array.shape}; expected (H, W) or (H, W, C<=4)"
            )
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = array.dtype
        self._channels: int | slice = slice(None)  # what a read keeps of the channel axis

    def choose_channel(self, channel: int | str | None, path: Path) -> str:
        """From now on read only the channel the model sees (:func:`sac.io.choose_channel`, by index or by the
        file's channel names); returns a note of which."""
        if len(self.shape) == 2:
            return choose_channel(1, [], Samples(False, False), channel, path)[2]
        with tifffile.TiffFile(path) as tif:
            names, samples = tiff_channels(tif)
        self._channels, _, note = choose_channel(self.shape[2], names, samples, channel, path)
        kept = range(self.shape[2])[self._channels]
        self.shape = self.shape[:2] if isinstance(kept, int) else (*self.shape[:2], len(kept))
        return note

    def __getitem__(self, region: tuple[slice, slice]) -> np.ndarray:
        rows, cols = region
        if self._channel_first:  # only the planes of the kept channels are decoded
            data = np.asarray(self._array[(0,) * self._lead + (self._channels, rows, cols)])
            return data if data.ndim == 2 else np.moveaxis(data, 0, -1)
        return np.asarray(self._array[(0,) * self._lead + (rows, cols)])[..., self._channels]

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
        raise InputError(f"{path}: cannot read as a TIFF slide ({first_line(exc)})") from exc
    levels = sorted(node.array_keys(), key=int) if isinstance(node, zarr.Group) else ["0"]
    if str(level) not in levels:
        store.close()
        raise InputError(f"{path}: no pyramid level {level}; available levels: {', '.join(levels)}")
    try:
        if not isinstance(node, zarr.Group):
            return Slide(node, store, path)
        full, chosen = Slide(node["0"], store, path), Slide(node[str(level)], store, path)
        chosen.downsample, chosen.levels = full.shape[1] / chosen.shape[1], len(levels)
        return chosen
    except InputError:
        store.close()
        raise


def level_downsamples(path: str | os.PathLike) -> list[float]:
    """Level-0 pixels per pixel of each pyramid level of a slide (``[1.0]`` for a single-level TIFF)."""
    with open_slide(path) as slide:
        count = slide.levels
    downsamples = []
    for level in range(count):
        with open_slide(path, level) as slide:
            downsamples.append(slide.downsample)
    return downsamples


def check_level(path: str | os.PathLike, level: int) -> None:
    """Refuse a pyramid level the slide does not have, before any work; a slide that cannot be opened is left
    for its own run to report (and skip)."""
    try:
        open_slide(path).close()
    except InputError:
        return
    open_slide(path, level).close()  # the level error, naming the levels there are


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


def segment_slide(
    segmenter: Segmenter,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    level: int | None = None,
    block: int = BLOCK,
    halo: int | None = None,
    clicks: Points | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """Segment a slide into ``<stem>_labels.tif`` (tiled uint32 BigTIFF) and ``<stem>.geojson``.

    ``level`` None takes the pyramid level whose pixel size is closest to the model's (level 0 when the slide's
    pixel size is unknown); blocks are resampled from there as single images are, with the block size scaled
    so memory stays bounded. GeoJSON is in level-0 pixels (QuPath's frame); the labels TIFF is at the chosen
    level and records its pixel size and downsample. Slides always get instances (``fast`` unless the
    segmenter's options ask for ``sam``). ``clicks`` (positive, negative) are (x, y) level-0 pixels; each block
    gets those inside it. Returns a summary: nuclei count, their area in pixels, shape, level, the level's pixel
    size (None when unknown or only estimated: it is not written either), blocks and outputs. ``block`` and
    ``halo`` are in pixels at the model's scale; ``halo`` None follows the model's objects (:func:`object_halo`).

    Finished blocks are recorded in a scratch folder beside the outputs (:class:`BlockLog`), removed when the
    slide is done; ``resume`` continues an interrupted run of the same slide and settings at its first
    unfinished block, and without it a run starts over.
    """
    halo = object_halo(segmenter.model.config) if halo is None else halo
    if block < 1 or halo < 0:
        raise InputError(f"block must be positive and halo not negative, got block {block} and halo {halo}")
    path, out_dir = Path(path), Path(out_dir)
    clicks = None if clicks is None else as_clicks(clicks)
    check_clicks_inside(clicks, path)  # before any block is read: a click off the slide is a mistake
    if segmenter.options.instances is None:
        segmenter = segmenter.with_options(instances="fast")
    objects = segmenter.model.config.objects
    labels_path, geojson_path = output_path(out_dir, path, "labels"), output_path(out_dir, path, "geojson")
    base_mpp, source = _slide_pixel_size(segmenter, path)
    if level is None:
        level = _closest_level(path, base_mpp, segmenter.model.config.mpp)
    with open_slide(path, level) as slide:
        channel_note = slide.choose_channel(segmenter.options.channel, path)
        segmenter = segmenter.with_options(channel=None)  # the slide reads the chosen channel itself
        height, width = slide.shape[:2]
        value_range = _value_range(slide)
        mpp = None if base_mpp is None else base_mpp * slide.downsample
        if (
            mpp is None and segmenter.options.mpp == "auto"
        ):  # one estimate for the whole slide, from its centre
            mpp, source = _estimate_pixel_size(segmenter, slide, value_range, str(path)), "estimated"
        zoom = 1.0 if mpp is None or segmenter.model.config.mpp is None else mpp / segmenter.model.config.mpp
        segmenter = segmenter.with_options(mpp=mpp if mpp is not None else "native")
        # an estimate is not written as the slide's size
        recorded_mpp = None if source == "estimated" else mpp
        # the same work per block at the model's scale, so memory stays bounded whatever the slide's pixel size
        block, halo = max(1, round(block / zoom)), round(halo / min(zoom, 1.0))
        if progress:
            scale = f"{mpp:.3g} µm/px ({source})" if mpp is not None else "unknown pixel size, native scale"
            tqdm.write(
                f"sac: {path.name}: level {level} (downsample {slide.downsample:g}), {channel_note}, {scale}",
                file=sys.stderr,
            )
        origins = [(y, x) for y in range(0, height, block) for x in range(0, width, block)]
        settings = _slide_settings(segmenter, path, (level, channel_note, mpp), (block, halo), clicks)
        regions = [_block_region((y, x), block, halo, (height, width)) for y, x in origins]
        _remove_leftovers((labels_path, geojson_path))
        blocks = BlockLog(_scratch_folder(out_dir, path), settings, (height, width), resume, regions)
        if progress and blocks.done:
            tqdm.write(
                f"sac: {path.name}: resuming at block {blocks.done + 1} of {len(origins)}", file=sys.stderr
            )
        with blocks, warnings.catch_warnings():
            # what every block says (a coarse level's enlargement, ...) is said once; blank blocks (glass, a
            # scanner's fill outside the tissue) are no sign of a mask given for a micrograph
            warnings.showwarning = _once(warnings.showwarning)
            warnings.filterwarnings("ignore", message="the image holds")
            left = list(zip(origins, regions, strict=True))[blocks.done :]
            for (y, x), (rows, cols) in progress_bar(
                left, progress, desc=f"sac {path.name}", unit="block", initial=blocks.done, total=len(origins)
            ):
                image = to_rgb_uint8(slide[rows, cols], str(path), value_range)
                local = None
                if clicks is not None:
                    local = clicks_in_window(clicks, (rows.start, cols.start), image.shape, slide.downsample)
                    local = local if any(map(len, local)) else None
                result = segmenter.segment(image, local)
                central = _central(result.labels, (y - rows.start, x - cols.start), block)
                kept = _claim(blocks.labels, (rows, cols), result.labels, central, blocks.nuclei + 1)
                clicked = None  # with clicks, every nucleus says whether a click added it, in every block
                if clicks is not None:
                    added = np.isin(result.labels, result.clicked or ()) & (kept > 0)
                    clicked = np.unique(kept[added]).tolist()
                features = labels_to_geojson(
                    kept,
                    (cols.start, rows.start),
                    slide.downsample,
                    result.maps[0],
                    objects=objects,
                    clicked=clicked,
                )["features"]
                blocks.add(features, int(np.count_nonzero(kept)))
        with atomic_write(geojson_path) as geojson_tmp:
            blocks.write_geojson(geojson_tmp)
        with atomic_write(labels_path) as labels_tmp, tifffile.TiffWriter(labels_tmp, bigtiff=True) as tif:
            tif.write(
                _label_tiles(blocks.labels),
                shape=(height, width),
                dtype=np.uint32,
                tile=(OUTPUT_TILE, OUTPUT_TILE),
                compression="zlib",
                photometric="minisblack",
                metadata={"level": level, "downsample": slide.downsample},
                **resolution_tags(recorded_mpp),
            )
        nuclei, area = blocks.nuclei, blocks.area
        blocks.remove()
    return {
        "nuclei": nuclei,
        "area_px": area,
        "shape": (height, width),
        "level": level,
        "mpp": recorded_mpp,
        "blocks": len(origins),
        "labels": labels_path,
        "geojson": geojson_path,
    }


def object_halo(config: SACConfig) -> int:
    """The context around a block that holds an object whose centroid lies in the block: ``HALO_DIAMETERS`` of
    the model's typical object (its training images' median area, ``nucleus_area``), and at least ``HALO`` (a
    gland can be ten times a nucleus's width: with the nuclei's halo, glands on block borders came out in
    pieces)."""
    if config.nucleus_area is None:
        return HALO
    return max(HALO, round(HALO_DIAMETERS * 2 * math.sqrt(config.nucleus_area / math.pi)))


def _remove_leftovers(outputs: tuple[Path, ...]) -> None:
    """Delete the temporary files of outputs a killed run on the same slide was writing."""
    for leftover in (entry for output in outputs for entry in leftover_temporaries(output)):
        leftover.unlink(missing_ok=True)


def _scratch_folder(out_dir: Path, path: Path) -> Path:
    return out_dir / f".{output_stem(path)}{SCRATCH_SUFFIX}"


class BlockLog:
    """What a slide run has finished, kept in a scratch folder so a killed run loses at most one block.

    The folder holds the labels claimed so far (a zarr store as large as the slide's labels), the GeoJSON
    features of the finished blocks (a line each) and ``progress.json``: the run's settings, the blocks done,
    nuclei and area so far and the length of the features file. That record is rewritten atomically after each
    block's labels and features are on disk, so what a block wrote before its record counts as not done: on
    resuming, the features file is cut back to the recorded length and the labels of unrecorded nuclei (ids
    above the recorded count, only inside the next block's region) are cleared by :func:`_claim`.
    """

    RECORD = "progress.json"

    def __init__(
        self,
        folder: Path,
        settings: dict,
        shape: tuple[int, int],
        resume: bool,
        regions: list[tuple[slice, slice]],
    ) -> None:
        self.folder, self.settings = folder, settings
        self._features_path = folder / "features.jsonl"
        record = self._readable_record(regions) if resume else None
        if record is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.labels = zarr.create_array(
                folder / "labels",
                shape=shape,
                chunks=(OUTPUT_TILE, OUTPUT_TILE),
                dtype="uint32",
                fill_value=0,
            )
            record = {"done": 0, "nuclei": 0, "area": 0, "features_bytes": 0}
            self._features_path.touch()
        self.done, self.nuclei, self.area = record["done"], record["nuclei"], record["area"]
        os.truncate(self._features_path, record["features_bytes"])
        self._features = open(self._features_path, "ab")  # noqa: SIM115 -- open for the run, closed on exit

    def _readable_record(self, regions: list[tuple[slice, slice]]) -> dict | None:
        """The record of an earlier run with the same settings whose files can be read on, else None."""
        try:
            record = json.loads((self.folder / self.RECORD).read_text())
            if record["settings"] != self.settings:
                return None
            self.labels = zarr.open_array(self.folder / "labels", mode="r+")
            if record["done"] < len(regions):
                self.labels[regions[record["done"]]]  # the one region a killed write may have left unreadable
            if self._features_path.stat().st_size < record["features_bytes"]:
                return None
        except Exception:  # absent, or left unreadable by a kill: the slide starts over
            return None
        return record

    def add(self, features: list[dict], area: int) -> None:
        """Record a block whose labels are in ``labels``: its features, then the record."""
        self._features.write(b"".join(json.dumps(feature).encode() + b"\n" for feature in features))
        self._features.flush()
        os.fsync(self._features.fileno())
        self.done, self.nuclei, self.area = self.done + 1, self.nuclei + len(features), self.area + area
        record = {"done": self.done, "nuclei": self.nuclei, "area": self.area}
        write_json(
            self.folder / self.RECORD,
            record | {"features_bytes": self._features.tell(), "settings": self.settings},
        )

    def write_geojson(self, path: Path) -> None:
        """All features as one GeoJSON FeatureCollection, streamed from the features file."""
        with open(self._features_path, "rb") as lines, open(path, "wb") as handle:
            handle.write(b'{"type": "FeatureCollection", "features": [')
            for index, line in enumerate(lines):
                handle.write((b", " if index else b"") + line.rstrip(b"\n"))
            handle.write(b"]}")

    def remove(self) -> None:
        """Delete the scratch folder, once the slide's outputs are written."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> BlockLog:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._features.close()


def _slide_settings(
    segmenter: Segmenter,
    path: Path,
    level_channel_mpp: tuple[int, str, float | None],
    block_halo: tuple[int, int],
    clicks: Points | None,
) -> dict:
    """Everything a slide's blocks depend on, so a resumed run continues only what the same work began."""
    stat = path.stat()
    return as_json(
        {
            "slide": [str(path.resolve()), stat.st_size, stat.st_mtime_ns],
            "level_channel_mpp": level_channel_mpp,
            "block_halo": block_halo,
            "model": model_record(segmenter.model),
            "options": segmenter.options.output_settings(),
            "clicks": None if clicks is None else [np.asarray(p).tolist() for p in clicks],
        }
    )


def _block_region(
    origin: tuple[int, int], block: int, halo: int, shape: tuple[int, int]
) -> tuple[slice, slice]:
    """The pixels a block reads: its core from ``origin`` and the halo around it, within the slide."""
    (y, x), (height, width) = origin, shape
    return (
        slice(max(0, y - halo), min(height, y + block + halo)),
        slice(max(0, x - halo), min(width, x + block + halo)),
    )


def _once(show: Callable) -> Callable:
    """``warnings.showwarning`` that passes each message on once (the "once" filter is not enough: any library
    that changes the warning filters resets what it remembers)."""
    seen: set[tuple[str, type]] = set()

    def show_once(message: Warning | str, category: type, *details) -> None:
        if (str(message), category) not in seen:
            seen.add((str(message), category))
            show(message, category, *details)

    return show_once


def _slide_pixel_size(segmenter: Segmenter, path: Path) -> tuple[float | None, str]:
    """Level-0 pixel size and its source: the --mpp number, else the file's record, else unknown."""
    option = segmenter.options.mpp
    if option == "native":
        return None, "native"
    if not isinstance(option, str):
        return option, "given"
    recorded = read_pixel_size(path)
    return (recorded[0], recorded[1]) if recorded else (None, "unknown")


def _closest_level(path: Path, base_mpp: float | None, model_mpp: float | None) -> int:
    """The pyramid level whose pixel size is closest (by ratio) to the model's; 0 when either is unknown."""
    if base_mpp is None or model_mpp is None:
        return 0
    downsamples = level_downsamples(path)
    return int(np.argmin([abs(np.log(base_mpp * d / model_mpp)) for d in downsamples]))


def _estimate_pixel_size(
    segmenter: Segmenter, slide: Slide, value_range: tuple[float, float] | None, name: str
) -> float | None:
    """The pixel size the automatic scale finds on a central region of the slide (None: not estimable)."""
    height, width = slide.shape[:2]
    y, x = max(0, height // 2 - ESTIMATE_SIDE // 2), max(0, width // 2 - ESTIMATE_SIDE // 2)
    image = to_rgb_uint8(slide[y : y + ESTIMATE_SIDE, x : x + ESTIMATE_SIDE], name, value_range)
    zoom = segmenter.with_options(instances=None, mpp="auto").segment(image).zoom
    return None if segmenter.model.config.mpp is None else zoom * segmenter.model.config.mpp


def _value_range(slide: Slide) -> tuple[float, float] | None:
    """One intensity range for the whole slide (None for 8-bit data, used as is), for ``to_rgb_uint8``.

    Stretching each block by its own percentiles, as single images are, would give every block a different
    contrast and visible seams; the range comes from a strided sample of the whole level, so it costs one
    block's memory, though decoding it reads every tile once (a few percent of the time segmenting takes).
    """
    if slide.dtype in (np.uint8, np.bool_):
        return None
    step = max(1, -(-max(slide.shape[:2]) // _RANGE_SAMPLE_SIDE))
    lo, hi = np.percentile(slide[::step, ::step], ROBUST_PERCENTILES)
    return lo, hi  # numpy scalars, so blocks are scaled with the same arithmetic as whole images


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
    can trim a nucleus but never overwrite one; a nucleus the earlier block holds most of is that block's, and
    the sliver left of it is dropped rather than reported as a nucleus.
    """
    current = store[region]
    current[current >= first_id] = 0  # an interrupted attempt at this block: not recorded, so not claimed
    free = central[labels] & (current == 0)
    whole, left = (
        np.bincount(labels.ravel(), minlength=len(central)),
        np.bincount(labels[free], minlength=len(central)),
    )
    keep = free & (2 * left >= whole)[labels]
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
