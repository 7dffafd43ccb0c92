"""Files of a user's clicks: CSV with columns ``x``, ``y``, ``label`` and optionally ``image`` (any order), or JSON
``{"positive": [[x, y], ...], "negative": [...]}`` (or such objects keyed by image), or a folder with one such file
per image (``<image stem>.csv|json|geojson|roi|zip``). An image is named by its file name, its stem or its path.

Coordinates are (x, y) pixels of the image, x the column and y the row, pixel (c, r) covering [c, c+1) x [r, r+1)
(QuPath's frame); for a slide, of its full-resolution level 0. Three tools' own exports are read as they are:
napari's Points layer CSV (``axis-0``, ``axis-1`` = row, column, pixel centres at whole numbers; all positive unless
it has a ``label`` column), QuPath's point annotations as GeoJSON (class ``Negative``: negative clicks) and Fiji's
point selections as ImageJ ROI files (``.roi``, or the ROI Manager's ``.zip``; counter 1: negative clicks). Fiji's
ROI files are read rather than its Measure table, whose X and Y are in the image's calibrated units (µm), not pixels.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import roifile

from sac.io import InputError, files_by_stem, first_line, image_shape
from sac.points import Points, as_points, clicks_pixels


def read_clicks(path: str | os.PathLike) -> dict[str | None, Points]:
    """Clicks per image name from a file or a folder of files; the key None holds clicks for any image.

    A CSV with an ``image`` column or a JSON object keyed by image name gives clicks per image; a folder gives
    each file's clicks to the image with its stem; a file without names gives clicks for one image.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{path}: folder holds no {', '.join(_SUFFIXES)} click files")
        return {stem: read_points_file(file) for stem, file in files_by_stem(files).items()}
    return _read(path, per_image=True)


def clicks_for(clicks: dict[str | None, Points], image: Path) -> Points | None:
    """The clicks meant for ``image`` (by file name, stem or path: :func:`_names_image`), or those for any image."""
    keys = [key for key in clicks if key is not None and _names_image(key, image)]
    if len(keys) > 1:
        raise InputError(
            f"clicks for {', '.join(keys)} all name {image}; give each image's clicks under one name"
        )
    return clicks[keys[0]] if keys else clicks.get(None)


def check_clicks_match(
    clicks: dict[str | None, Points], images: list[Path], source: str | os.PathLike
) -> None:
    """Fail before any work when clicks name no input or several, an input has clicks under several names, or
    clicks would apply to several images without saying which."""
    for key in (key for key in clicks if key is not None):
        matched = [str(image) for image in images if _names_image(key, image)]
        if not matched:
            raise InputError(f"{source}: clicks for {key}, which is not among the inputs")
        if len(matched) > 1:
            raise InputError(
                f"{source}: clicks for {key} match inputs {', '.join(matched)}; name the image by its path"
            )
    for image in images:
        try:
            clicks_for(clicks, image)
        except InputError as error:
            raise InputError(f"{source}: {error}") from None
    if None in clicks and len(images) > 1:
        raise InputError(
            f"{source}: clicks without image names but {len(images)} inputs; add an image column (CSV), key them "
            "by image name (JSON), or give a folder with one file per image"
        )


def check_clicks_inside(clicks: Points | None, path: Path) -> None:
    """Fail, naming ``path``, when a click lies outside its image (a slide's level 0), read from the file's header
    so that every input is checked before any work."""
    shape = None if clicks is None else image_shape(path)
    if shape is None:
        return
    try:
        clicks_pixels(clicks, shape)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def _names_image(key: str, image: Path) -> bool:
    """Whether a click file's image name ``key`` is ``image``: its file name, its stem, or a path to it (relative or
    absolute), so ``tile.png``, ``tile``, ``in/tile.png`` and ``./in/tile.png`` all name ``in/tile.png``."""
    return key in (image.name, image.stem) or os.path.abspath(key) == os.path.abspath(image)


def read_points_file(path: str | os.PathLike) -> Points:
    """Read manual ``(positive, negative)`` points, each float32 ``(M, 2)`` in ``(x, y)`` pixels.

    Accepts a CSV with columns ``x``, ``y`` and ``label`` in any order (label 1 = positive, 0 = negative),
    napari's Points CSV (``axis-0``, ``axis-1``), a JSON object ``{"positive": [[x, y], ...], "negative": [...]}``
    (either key may be omitted), QuPath's point annotations as GeoJSON (class Negative = negative) or Fiji's point
    selections as ImageJ ``.roi`` / ROI Manager ``.zip`` (counter 1 = negative).
    """
    clicks = _read(Path(path), per_image=False)
    return clicks[None]


def _read(path: Path, per_image: bool) -> dict[str | None, Points]:
    suffix = _points_suffix(path)
    if suffix in _IMAGEJ_SUFFIXES:
        return {None: _imagej_points(path)}
    try:
        # utf-8-sig: the byte-order mark spreadsheets write is no part of the first column's name
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read points file ({error})") from None
    return _parse_csv(text, path, per_image) if suffix == ".csv" else _parse_json(text, path, per_image)


_CSV_COLUMNS = ("x", "y", "label")


def _csv_columns(header: list[str], path: Path, per_image: bool) -> dict[str, int]:
    """Each column's index from the header: x, y, label and (for several images) image, in any order and case."""
    allowed = (*_CSV_COLUMNS, "image") if per_image else _CSV_COLUMNS
    expected = "x, y, label" + (" and optionally image" if per_image else "") + ", in any order"
    names = [cell.strip().lower() for cell in header]
    missing = [name for name in _CSV_COLUMNS if name not in names]
    problems = [f"missing column {', '.join(missing)}"] if missing else []
    problems += [f"unknown column {name!r}" for name in dict.fromkeys(names) if name not in allowed]
    problems += [f"column {name} twice" for name in dict.fromkeys(names) if names.count(name) > 1]
    if problems:
        single = (
            " (a file of one image's clicks has no image column)"
            if "image" in names and not per_image
            else ""
        )
        raise InputError(
            f"{path}: CSV header: {'; '.join(problems)}; expected columns {expected}{single}, or napari's "
            "axis-0, axis-1 (Fiji: save the point selection as .roi, or the ROI Manager's points as .zip)"
        )
    return {name: names.index(name) for name in names}


_NAPARI_COLUMNS = ("axis-0", "axis-1")  # napari's Points layer CSV: row, column


def _from_napari(rows: list[list[str]], path: Path) -> list[list[str]]:
    """napari's Points CSV (index, axis-0, axis-1 and any feature columns) as rows of x, y, label: its pixel
    centres lie at whole numbers, ours half a pixel in; all clicks positive unless it has a label column."""
    names = [cell.strip().lower() for cell in rows[0]]
    if "axis-2" in names:
        raise InputError(f"{path}: napari points of 3 or more dimensions; sac takes clicks on 2-D images")
    row, col = (names.index(name) for name in _NAPARI_COLUMNS)
    label = names.index("label") if "label" in names else None
    converted = [["x", "y", "label"]]
    for cells in rows[1:]:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(names):
            raise InputError(f"{path}: napari points: expected {len(names)} values, got {','.join(cells)!r}")
        centre = [str(_number(cells[axis]) + 0.5) for axis in (col, row)]
        converted.append([*centre, cells[label] if label is not None else "1"])
    return converted


def _parse_csv(text: str, path: Path, per_image: bool) -> dict[str | None, Points]:
    rows = list(csv.reader(text.splitlines()))
    if rows and all(name in [cell.strip().lower() for cell in rows[0]] for name in _NAPARI_COLUMNS):
        rows = _from_napari(rows, path)
    columns = _csv_columns(rows[0] if rows else [], path, per_image)
    points: dict[str | None, dict[int, list[tuple[float, float]]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) != len(columns):
            raise InputError(
                f"{path}: line {line}: expected {len(columns)} values ({','.join(columns)}), got {','.join(row)!r}"
            )
        x, y, label = (_number(cells[columns[name]]) for name in _CSV_COLUMNS)
        for name, value in (("x", x), ("y", y)):
            if not math.isfinite(value):
                raise InputError(
                    f"{path}: line {line}: {name} must be a number, got {cells[columns[name]]!r}"
                )
        if label not in (0, 1):
            raise InputError(
                f"{path}: line {line}: label must be 1 (positive) or 0 (negative), got {cells[columns['label']]!r}"
            )
        key = cells[columns["image"]] if "image" in columns else None
        if key == "":
            raise InputError(f"{path}: line {line}: no image name")
        points.setdefault(key, {1: [], 0: []})[int(label)].append((x, y))
    if not points:
        points[None] = {1: [], 0: []}
    return {
        key: (as_points(p[1], f"{path}: positive points"), as_points(p[0], f"{path}: negative points"))
        for key, p in points.items()
    }


def _number(cell: str) -> float:
    """A cell's value; NaN when it holds no number."""
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _parse_json(text: str, path: Path, per_image: bool) -> dict[str | None, Points]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    expected = (
        f'{path}: expected a JSON object with "positive" and/or "negative" lists of [x, y], or GeoJSON points'
    )
    if _is_geojson(data):
        return {None: _qupath_points(data, path)}
    if not isinstance(data, dict):
        raise InputError(expected)
    keyed = per_image and data and all(isinstance(value, dict) for value in data.values())
    entries = data if keyed else {None: data}
    clicks = {}
    for key, entry in entries.items():
        if not set(entry) <= {"positive", "negative"}:
            raise InputError(expected + (" per image name" if per_image else ""))
        where = f"{path}: {key}" if key else str(path)
        clicks[key] = tuple(
            as_points(entry.get(k, []), f"{where}: {k} points") for k in ("positive", "negative")
        )
    return clicks


def _is_geojson(data: object) -> bool:
    features = data if isinstance(data, list) else [data]
    return bool(features) and all(
        isinstance(item, dict) and item.get("type") in ("Feature", "FeatureCollection") for item in features
    )


def _qupath_points(data: dict | list, path: Path) -> Points:
    """QuPath's point annotations (Point or MultiPoint features, exported as GeoJSON) as clicks: those of class
    ``Negative`` negative, the others positive. Other geometries (outlines) are not clicks and are refused."""
    features = data.get("features", []) if isinstance(data, dict) and "features" in data else data
    features = features if isinstance(features, list) else [features]
    clicks: dict[int, list] = {1: [], 0: []}
    for index, feature in enumerate(features):
        geometry = feature.get("geometry") or {}
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        if kind not in ("Point", "MultiPoint"):
            raise InputError(
                f"{path}: feature {index} is a {kind}, not a point: clicks are point annotations (QuPath's "
                "Points tool)"
            )
        classification = (feature.get("properties") or {}).get("classification") or {}
        label = 0 if str(classification.get("name", "")).lower() == "negative" else 1
        clicks[label] += [coordinates] if kind == "Point" else list(coordinates)
    return tuple(
        as_points(clicks[label], f"{path}: {kind} points")
        for label, kind in ((1, "positive"), (0, "negative"))
    )


def _imagej_points(path: Path) -> Points:
    """Fiji's point selections (the multi-point tool's, saved as ``.roi``; several, as the ROI Manager's ``.zip``)
    as clicks: points of counter 0 (the tool's default) positive, of counter 1 negative. Other selections
    (outlines, lines) are not clicks and are refused."""
    try:
        rois = roifile.roiread(path)
    # roifile raises ValueError, struct.error or BadZipFile on what is not a ROI file
    except Exception as error:
        raise InputError(f"{path}: not an ImageJ ROI file ({first_line(error)})") from None
    clicks: dict[int, list[np.ndarray]] = {1: [], 0: []}
    for roi in rois if isinstance(rois, list) else [rois]:
        if roi.roitype != roifile.ROI_TYPE.POINT:
            raise InputError(
                f"{path}: ROI {roi.name!r} is a {roi.roitype.name.lower()} selection, not points: clicks are "
                "the multi-point tool's points"
            )
        xy = roi.coordinates().astype(np.float64)
        if not roi.subpixelresolution:
            xy += 0.5  # ImageJ's whole-number points name pixels: pixel i spans [i, i+1) in both frames
        counters = np.zeros(len(xy), int) if roi.counters is None else roi.counters.astype(int)
        if (counters > 1).any():
            raise InputError(
                f"{path}: ROI {roi.name!r} has points of counter {counters.max()}; clicks take counter 0 "
                "(positive) and 1 (negative)"
            )
        clicks[1].append(xy[counters == 0])
        clicks[0].append(xy[counters == 1])
    return tuple(
        as_points(np.concatenate(clicks[label] or [np.empty((0, 2))]), f"{path}: {kind} points")
        for label, kind in ((1, "positive"), (0, "negative"))
    )


_IMAGEJ_SUFFIXES = (".roi", ".zip")
_SUFFIXES = (".csv", ".json", ".geojson", *_IMAGEJ_SUFFIXES)


def _points_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError(f"{path}: points file must end in {', '.join(_SUFFIXES)}")
    return ".json" if suffix == ".geojson" else suffix
