"""The file pipeline behind ``sac predict``: image files and slides in; masks, label TIFFs, tables, GeoJSON and
overlays out.

One loop serves every input: an image is read whole and segmented; an SVS file or a TIFF too large to read whole
is streamed block by block (``sac.wsi``). A batch keeps going past unreadable inputs: each is reported in one
line and returned as a failure, so one corrupt file does not cost the rest of a night's run.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from sac.clicks import check_clicks_match, clicks_for, read_clicks
from sac.export import (
    output_path,
    write_geojson,
    write_labels_tif,
    write_mask_png,
    write_nuclei_csv,
    write_overlay,
)
from sac.io import InputError, list_images, read_image, read_pixel_size
from sac.segmenter import Points, Segmenter
from sac.wsi import is_slide, segment_slide


def find_inputs(inputs: Iterable[str | os.PathLike], slides: bool = False) -> list[tuple[Path, bool]]:
    """Expand files and folders into ``(path, is_slide)``; ``slides`` streams every input as a slide.

    Fails at once, before any model work, on a missing path or two inputs whose outputs would collide.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        # list_images knows only whole-image formats, not SVS
        is_svs = path.is_file() and path.suffix.lower() == ".svs"
        paths += [path] if is_svs else list_images([path])
    paths = list(dict.fromkeys(paths))
    counts = Counter(path.stem for path in paths)
    clashing = [str(path) for path in paths if counts[path.stem] > 1]
    if clashing:
        raise InputError(f"{', '.join(clashing)}: same file name stem, so their outputs would collide")
    return [(path, slides or is_slide(path)) for path in paths]


def segment_files(
    segmenter: Segmenter,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    points_file: str | os.PathLike | None = None,
    slides: bool = False,
    level: int | None = None,
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Segment image files, slides and folders of them into ``out_dir``; returns the skipped files with a reason.

    Parameters
    ----------
    segmenter : Segmenter
        The model and its options.
    inputs : paths
        Files and folders.
    points_file : path, optional
        A user's clicks (``sac.clicks.read_clicks``: per image, by name); slides take them in level-0 pixels.
    slides : bool
        Stream every input as a whole-slide image (automatic for SVS and TIFFs over 8192 px a side).
    level : int or None
        Pyramid level of slides; None: the level closest to the model's pixel size.
    """
    found = find_inputs(inputs, slides)
    clicks = load_clicks(points_file, [path for path, _ in found])
    failures = []
    for path, slide in tqdm(found, desc="sac predict", unit="file", disable=not progress):
        try:
            segment_file(segmenter, path, out_dir, slide, level, clicks_for(clicks, path), progress)
        except InputError as error:
            failures.append(report_skipped(path, error))
    return failures


def load_clicks(points_file: str | os.PathLike | None, paths: list[Path]) -> dict:
    """The clicks of ``points_file`` by image, checked against the inputs before any work starts."""
    if points_file is None:
        return {}
    clicks = read_clicks(points_file)
    check_clicks_match(clicks, paths, points_file)
    return clicks


def segment_file(
    segmenter: Segmenter,
    path: Path,
    out_dir: str | os.PathLike,
    slide: bool,
    level: int | None = None,
    points: Points | None = None,
    progress: bool = True,
) -> None:
    """One input file to its outputs: the unit of work of a local run and of a dask task alike."""
    if slide:
        segment_slide(segmenter, path, out_dir, level, clicks=points, progress=progress)
        return
    image = read_image(path)
    recorded = read_pixel_size(path)
    result = segmenter.segment(image, points, recorded[0] if recorded else None)
    note = result.scale_note.replace("from the file", recorded[1]) if recorded else result.scale_note
    if progress:
        tqdm.write(f"sac: {path.name}: {note}", file=sys.stderr)
    mask, labels = result.mask, result.labels
    write_mask_png(output_path(out_dir, path, "mask"), mask)
    if labels is None:
        return
    write_labels_tif(output_path(out_dir, path, "labels"), labels, result.mpp)
    write_nuclei_csv(output_path(out_dir, path, "table"), labels, image, result.mpp)
    write_geojson(output_path(out_dir, path, "geojson"), labels)
    write_overlay(output_path(out_dir, path, "overlay"), image, labels)


def report_skipped(path: Path, error: InputError) -> tuple[Path, str]:
    """Say on stderr that ``path`` was skipped, in one line that names it; returns (path, message)."""
    message = str(error).splitlines()[0]
    message = message if str(path) in message else f"{path}: {message}"
    tqdm.write(f"sac: skipped {message}", file=sys.stderr)
    return path, message
