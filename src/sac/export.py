"""Outputs that QuPath, napari and spreadsheets read: PNG masks, label TIFFs, CSV tables and GeoJSON.

GeoJSON coordinates follow QuPath: pixel (row r, column c) covers the square [c, c+1] x [r, r+1], so a
pixel centre sits at (c + 0.5, r + 0.5) and polygon areas match pixel counts.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage import draw, measure, segmentation

from sac.io import InputError, atomic_write, check_pixel_size, first_line
from sac.metrics import check_labels

# What ``sac predict`` writes per input, named <stem><suffix>; slides get only labels and geojson.
OUTPUT_SUFFIXES = {
    "mask": "_mask.png",
    "prob": "_prob.tif",
    "labels": "_labels.tif",
    "cells": "_cells.tif",
    "table": "_{objects}.csv",  # named for what the model segments (SACConfig.objects)
    "geojson": ".geojson",
    "overlay": "_overlay.png",
}
MASK_OUTPUTS = {"mask", "prob"}  # what an image segmented without instances can have
DEFAULT_OUTPUTS = ("mask", "labels", "table", "geojson", "overlay")
TABLE_COLUMNS = ("image", "id", "centroid_x", "centroid_y", "area", "perimeter", "eccentricity")
UNIT_COLUMNS = ("centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um")  # with a known pixel size
# an RGBA file's alpha gets no mean-intensity column (nuclei_table)
_DEFAULT_CHANNEL_NAMES = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}
# What a model segments (SACConfig.objects), and the QuPath class and colour its objects get
OBJECT_CLASSES = {"nuclei": ("Nucleus", (255, 0, 0)), "glands": ("Gland", (0, 160, 0))}
BOUNDARY_COLOR = (0, 255, 0)
# an image whose 99.9th percentile lies below this grey level is brightened for the overlay (display only)
DIM_DISPLAY_LEVEL = 128


def output_stem(source: str | os.PathLike) -> str:
    """The name outputs of ``source`` start with: its stem, without the ``.ome`` of ``.ome.tif``."""
    stem = Path(source).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def output_path(
    out_dir: str | os.PathLike, source: str | os.PathLike, kind: str, objects: str = "nuclei"
) -> Path:
    """Where the ``kind`` output (a key of ``OUTPUT_SUFFIXES``) of the input file ``source`` goes; the table is
    named for the ``objects`` the model segments."""
    return Path(out_dir) / f"{output_stem(source)}{OUTPUT_SUFFIXES[kind].format(objects=objects)}"


def _check_label_image(labels: np.ndarray, mask: bool = False) -> np.ndarray:
    """Return 2-D labels; a boolean ``mask``, where allowed, as uint8 (regionprops rejects booleans)."""
    labels = check_labels(labels, mask=mask)
    if labels.ndim != 2:
        raise InputError(f"labels must be a 2-D image, got shape {labels.shape}")
    return labels.astype(np.uint8) if labels.dtype == bool else labels


def _check_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return a gray or RGB view of ``image`` (alpha dropped) after checking it lines up with the labels."""
    image = np.asarray(image)
    is_color = image.ndim == 3 and image.shape[2] in (3, 4)
    if image.ndim != 2 and not is_color:
        raise InputError(f"image must be gray (H, W) or RGB (H, W, 3), got shape {image.shape}")
    if image.shape[:2] != shape:
        raise InputError(f"image shape {image.shape[:2]} does not match labels shape {shape}")
    return image[..., :3] if is_color else image


def _write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a binary mask (anything > 0 is foreground) as an 8-bit 0/255 PNG that any viewer shows."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be a 2-D image, got shape {mask.shape}")
    _write_png(path, np.where(mask > 0, 255, 0).astype(np.uint8))


def write_labels_tif(path: str | os.PathLike, labels: np.ndarray, mpp: float | None = None) -> None:
    """Save labels as zlib TIFF in the smallest unsigned type napari and QuPath read (uint16 or uint32).

    With the pixel size ``mpp`` (µm), uint16 labels are written as an ImageJ TIFF calibrated in µm, which Fiji
    shows as such (ImageJ reads resolution tags in centimetres as cm unless told to convert) and QuPath reads;
    uint32 labels, which ImageJ's format cannot hold, get resolution tags in pixels per centimetre.
    """
    labels = check_labels(labels)
    max_id = int(labels.max()) if labels.size else 0
    if max_id > np.iinfo(np.uint32).max:
        raise InputError(f"label id {max_id} does not fit in uint32")
    dtype = np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32
    calibration = resolution_tags(mpp)
    if mpp is not None and dtype == np.uint16:
        calibration = {"imagej": True, "resolution": (1 / mpp, 1 / mpp), "metadata": {"unit": "um"}}
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", **calibration)


def write_probability_tif(path: str | os.PathLike, probability: np.ndarray, mpp: float | None = None) -> None:
    """Save the nuclei probability map as float16 TIFF (half the size of float32, ample for a probability)."""
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(probability, np.float16), compression="zlib", **resolution_tags(mpp))


def resolution_tags(mpp: float | None) -> dict:
    """tifffile arguments recording a pixel size of ``mpp`` µm (none when unknown), refused unless plausible."""
    if mpp is None:
        return {}
    mpp = check_pixel_size(mpp)
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def nuclei_table(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    mpp: float | None = None,
    channel_names: list[str] | None = None,
    probability: np.ndarray | None = None,
    name: str = "",
    clicked: Collection[int] | None = None,
) -> list[dict]:
    """One row of measurements per nucleus, for the image called ``name``.

    Mean intensities are of ``image`` as read, in its own units: ``mean_intensity`` for one channel, else one
    ``mean_<channel>`` column per channel (``channel_names``, or red/green/blue). With the pixel size ``mpp``
    (µm), the shape measurements also in µm and µm² (``UNIT_COLUMNS``); with the model's ``probability`` map,
    ``confidence``: its mean over the nucleus (a clicked nucleus may be one the model missed: its confidence
    is low). With ``clicked`` (the ids the user's positive clicks added), a ``clicked`` column of 1 and 0.
    """
    labels = _check_label_image(labels)
    mpp = None if mpp is None else check_pixel_size(mpp)
    regions = measure.regionprops(labels)
    rows = [
        {
            "image": name,
            "id": region.label,
            "centroid_x": float(region.centroid[1]),
            "centroid_y": float(region.centroid[0]),
            "area": int(region.area),
            "perimeter": float(region.perimeter),
            "eccentricity": float(region.eccentricity),
        }
        for region in regions
    ]
    if mpp is not None:
        for row in rows:
            row.update(
                centroid_x_um=row["centroid_x"] * mpp,
                centroid_y_um=row["centroid_y"] * mpp,
                area_um2=row["area"] * mpp**2,
                perimeter_um=row["perimeter"] * mpp,
            )
    columns = {}
    if image is not None:
        planes = np.asarray(image)
        planes = planes[..., None] if planes.ndim == 2 else planes
        if planes.ndim != 3 or planes.shape[:2] != labels.shape:
            raise InputError(f"image shape {np.shape(image)} does not match labels shape {labels.shape}")
        names = ["intensity"] if np.ndim(image) == 2 else _channel_names(planes.shape[2], channel_names)
        # an RGBA file's alpha is transparency, not an intensity of the tissue
        columns = {f"mean_{n}": planes[..., i] for i, n in enumerate(names) if n != "alpha"}
    if probability is not None:
        probability = np.asarray(probability)
        if probability.shape != labels.shape:
            raise InputError(
                f"probability shape {probability.shape} does not match labels shape {labels.shape}"
            )
        columns["confidence"] = probability
    ids = np.array([region.label for region in regions], np.intp)
    counts = np.bincount(labels.ravel(), minlength=ids.max(initial=0) + 1)[ids]
    for column, values in columns.items():
        sums = np.bincount(labels.ravel(), values.ravel().astype(np.float64), minlength=len(counts))[ids]
        for row, mean in zip(rows, sums / np.maximum(counts, 1), strict=True):
            row[column] = float(mean)
    if clicked is not None:
        for row in rows:
            row["clicked"] = int(row["id"] in clicked)
    return rows


def _channel_names(count: int, names: list[str] | None) -> list[str]:
    if names is not None and len(names) == count:
        return list(names)
    return list(_DEFAULT_CHANNEL_NAMES.get(count, [str(i) for i in range(count)]))


def write_nuclei_csv(
    path: str | os.PathLike, labels: np.ndarray, image: np.ndarray | None = None, **options
) -> None:
    """Write :func:`nuclei_table` (``options`` are its keywords) as CSV; the header is written even without
    nuclei so readers never choke."""
    rows = nuclei_table(labels, image, **options)
    probe = nuclei_table(
        np.ones((1, 1), np.int32), None if image is None else image[:1, :1], **_probe(options)
    )
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(probe[0]))
        writer.writeheader()
        writer.writerows(rows)


def _probe(options: dict) -> dict:
    """The options of a one-pixel table whose header is the real table's, even when that has no rows."""
    probability = options.get("probability")
    return {**options, "probability": None if probability is None else probability[:1, :1]}


def _pieces_with_holes(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Each piece of ``mask`` as closed (row, col) rings in pixel-centre units: its outline, then those of its
    holes, so an outline's area is the object's (a vesicular nucleus drawn as a ring, a gland around its lumen)."""
    filled = ndi.binary_fill_holes(mask)
    pieces, count = ndi.label(filled, structure=np.ones((3, 3)))  # corner-touching pixels: one outline
    holes, _ = ndi.label(filled & ~mask)  # 4-connected, as background between 8-connected pixels is
    rings = []
    for piece in range(1, count + 1):
        # fully_connected="high" keeps pixels that touch only at a corner in one outline
        outline = _ring(pieces == piece, "high")
        inside = np.unique(holes[pieces == piece])
        rings.append([outline, *(_ring(holes == hole, "low") for hole in inside[inside > 0])])
    return rings


def _ring(mask: np.ndarray, connectivity: str) -> np.ndarray:
    padded = np.pad(mask, 1).astype(np.float64)
    (contour,) = measure.find_contours(padded, 0.5, fully_connected=connectivity)
    return _drop_collinear(contour - 1)


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The same closed polygon without vertices in the middle of straight runs (most of a pixel outline)."""
    points = ring[:-1]
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    corners = points[np.abs(incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]) > 1e-9]
    return np.vstack([corners, corners[:1]]) if len(corners) >= 3 else ring


def labels_to_geojson(
    labels: np.ndarray,
    offset_xy: tuple[float, float] = (0, 0),
    scale: float = 1.0,
    probability: np.ndarray | None = None,
    cells: np.ndarray | None = None,
    objects: str = "nuclei",
    clicked: Collection[int] | None = None,
) -> dict:
    """Outline every object as a QuPath detection of the class of ``objects`` (a key of ``OBJECT_CLASSES``); ``offset_xy`` places a tile inside its whole slide, and
    ``scale`` (the level's downsample) takes a pyramid level's pixels to level 0, QuPath's frame. With the
    model's ``probability`` map, each detection's measurements include its mean, ``confidence``. With ``cells``
    (labels of the same ids, grown from the nuclei), QuPath cell objects: the cell outline, with the nucleus as
    their ``nucleusGeometry``. With ``clicked`` (ids a user's positive clicks added), a ``clicked`` measurement
    of 1 or 0, so QuPath can tell corrections from the automatic result."""
    labels = _check_label_image(labels)
    class_name, color = OBJECT_CLASSES[objects]
    cell_boxes = ndi.find_objects(cells) if cells is not None else []
    features = []
    for region in measure.regionprops(labels, intensity_image=probability):
        feature = {
            "type": "Feature",
            "geometry": _polygon(region.image, region.bbox[:2], offset_xy, scale),
            "properties": {
                "id": int(region.label),
                "objectType": "detection",
                "classification": {"name": class_name, "color": list(color)},
                # in level-0 pixels, as the outline
                "measurements": {"area": round(float(region.area) * scale * scale)}
                | ({} if probability is None else {"confidence": float(region.intensity_mean)})
                | ({} if clicked is None else {"clicked": int(region.label in clicked)}),
            },
        }
        if cells is not None:
            box = cell_boxes[region.label - 1]
            feature["nucleusGeometry"] = feature["geometry"]
            feature["geometry"] = _polygon(
                cells[box] == region.label, (box[0].start, box[1].start), offset_xy, scale
            )
            feature["properties"]["objectType"] = "cell"
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def _polygon(mask: np.ndarray, corner: tuple[int, int], offset_xy: tuple[float, float], scale: float) -> dict:
    """The GeoJSON polygon of a mask whose top-left pixel is at ``corner`` (row, column), with its holes; a
    MultiPolygon when the mask is in pieces (labels drawn by hand, or cut by a tool), so no piece is lost."""
    shift = np.asarray(corner[::-1], np.float64) + 0.5 + np.asarray(offset_xy, np.float64)  # (x, y)
    polygons = []
    for outline, *holes in _pieces_with_holes(mask):
        exterior = (outline[:, ::-1] + shift) * scale
        turn = np.sign(_signed_area(exterior))  # holes turn the other way (RFC 7946)
        holes = [(hole[:, ::-1] + shift) * scale for hole in holes]
        holes = [hole if np.sign(_signed_area(hole)) != turn else hole[::-1] for hole in holes]
        polygons.append([exterior.tolist(), *(hole.tolist() for hole in holes)])
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def write_geojson(path: str | os.PathLike, labels: np.ndarray, **options) -> None:
    """Write :func:`labels_to_geojson` (``options`` are its keywords) for QuPath's File > Import objects."""
    collection = labels_to_geojson(labels, **options)
    with atomic_write(path) as tmp, open(tmp, "w") as handle:
        json.dump(collection, handle)


def geojson_to_labels(
    feature_collection: dict | list, shape: tuple[int, int], source: str = "GeoJSON"
) -> np.ndarray:
    """Rasterise polygon outlines (a FeatureCollection or a list of features, as QuPath exports them; Polygon or
    MultiPolygon; cells by their nucleus when they have one) into labels: ids from ``properties.id``, else 1, 2...

    Points and lines (counts, rulers) outline nothing and are skipped, and so is a region drawn around objects
    (a tissue or tumour annotation holding two or more of the other outlines), each with a warning: taken as
    one object, a region would become a giant nucleus or, drawn first, the background around its nuclei."""
    if isinstance(feature_collection, dict) and feature_collection.get("type") == "FeatureCollection":
        features = feature_collection.get("features", [])
    elif isinstance(feature_collection, list):
        features = feature_collection
    else:
        raise InputError("expected a GeoJSON FeatureCollection or a list of features")
    outlines, skipped = [], 0
    for index, feature in enumerate(features):
        geometry = (
            (feature.get("nucleusGeometry") or feature.get("geometry") or {})
            if isinstance(feature, dict)
            else {}
        )
        kind = geometry.get("type")
        if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
            skipped += 1
            continue
        polygons = {
            "Polygon": [geometry.get("coordinates")],
            "MultiPolygon": geometry.get("coordinates"),
        }.get(kind)
        if not polygons or not all(polygons):
            raise InputError(f"feature {index}: geometry type {kind!r} is not a Polygon")
        rings = [[np.asarray(ring, dtype=np.float64) for ring in polygon] for polygon in polygons]
        outlines.append(((feature.get("properties") or {}).get("id"), rings))
    outlines = _numbered(outlines, source)
    if skipped:
        warnings.warn(
            f"{source}: {skipped} point or line annotation(s) skipped: they outline no object", stacklevel=2
        )
    regions = _regions([(label, [polygon[0] for polygon in polygons]) for label, polygons in outlines])
    if regions:
        warnings.warn(
            f"{source}: {len(regions)} annotation(s) skipped as regions: each holds two or more of the other outlines",
            stacklevel=2,
        )
    outlines = [outline for index, outline in enumerate(outlines) if index not in regions]
    _check_inside(outlines, shape, source)
    labels = np.zeros(shape, dtype=np.uint32)
    for label, polygons in outlines:
        for exterior, *holes in polygons:
            rows, cols = draw.polygon(exterior[:, 1] - 0.5, exterior[:, 0] - 0.5, shape=shape)
            labels[rows, cols] = label
            for hole in holes:  # its pixels are those whose centres it holds, as for the outline
                rows, cols = draw.polygon(hole[:, 1] - 0.5, hole[:, 0] - 0.5, shape=shape)
                inside = labels[rows, cols] == label
                labels[rows[inside], cols[inside]] = 0
    return labels


def _regions(outlines: list[tuple[object, list[np.ndarray]]]) -> set[int]:
    """Indices of the outlines that hold the vertex means of two or more of the others."""
    if len(outlines) < 3:
        return set()
    centres = np.array([np.concatenate(rings).mean(axis=0) for _, rings in outlines])
    found = set()
    for index, (_, rings) in enumerate(outlines):
        inside = np.zeros(len(centres), bool)
        for xy in rings:
            low, high = xy.min(axis=0), xy.max(axis=0)
            near = np.flatnonzero(((centres >= low) & (centres <= high)).all(axis=1))
            if near.size:
                inside[near] |= measure.points_in_poly(centres[near], xy)
        inside[index] = False
        if inside.sum() >= 2:
            found.add(index)
    return found


def _check_inside(outlines: list[tuple[int, list]], shape: tuple[int, int], source: str) -> None:
    """Refuse outlines that all miss the image (a slide's coordinates for a tile, say: training would see no
    objects, silently); warn about some missing it, or none at all (the image is then all background)."""
    height, width = shape
    outside = sum(
        not any(
            xy[:, 0].max() > 0 and xy[:, 0].min() < width and xy[:, 1].max() > 0 and xy[:, 1].min() < height
            for xy, *_ in polygons
        )
        for _, polygons in outlines
    )
    if outlines and outside == len(outlines):
        raise InputError(
            f"all {outside} outlines lie outside the {width}x{height} image: coordinates of a larger image (a "
            "slide)? export the objects relative to this image"
        )
    if outside or not outlines:
        what = f"{outside} of {len(outlines)} outlines lie outside the image" if outside else "no outlines"
        warnings.warn(f"{source}: {what}: taken as holding no objects there", stacklevel=3)


def _numbered(outlines: list[tuple[object, list]], source: str) -> list[tuple[int, list]]:
    """Each outline's id: its ``properties.id`` (SAC's own GeoJSON has them), those without one numbered after
    the largest; all numbered in file order, with a warning, when the given ids are not distinct positive whole
    numbers (shared or zero ids would merge or drop objects, text ones would not rasterise)."""
    given = [label for label, _ in outlines if label is not None]
    whole = all(isinstance(label, int) and not isinstance(label, bool) and label > 0 for label in given)
    if not whole or len(set(given)) < len(given):
        warnings.warn(
            f"{source}: properties.id are not distinct positive whole numbers: objects numbered in file order",
            stacklevel=3,
        )
        return [(index, rings) for index, (_, rings) in enumerate(outlines, start=1)]
    unnumbered = itertools.count(max(given, default=0) + 1)
    return [(next(unnumbered) if label is None else label, rings) for label, rings in outlines]


def read_geojson_labels(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Int32 instance labels of an image of ``shape`` from a GeoJSON file of its annotations (QuPath's export)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        labels = geojson_to_labels(data, shape, str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read GeoJSON annotations ({first_line(error)})") from None
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


# objects this many pixels across get outlines a pixel wider (glands at 20x: 3 px), so they stay visible when a
# large image is viewed whole
OUTLINE_WIDTH_PER_DIAMETER = 40


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Draw object outlines (inside each object, so touching ones stay distinct) over a uint8 image: green, which
    stands out on H&E's pinks and purples and on fluorescence's dark background; wider for large objects.
    ``labels`` may be a boolean mask: its outlines are drawn. A dim image is brightened (display only)."""
    labels = _check_label_image(labels, mask=True)
    image = _check_image(image, labels.shape)
    if image.dtype != np.uint8:
        raise InputError(f"overlay needs a uint8 image, got dtype {image.dtype}")
    bright = np.percentile(image, 99.9) if image.size else 255
    if 0 < bright < DIM_DISPLAY_LEVEL:  # a dim fluorescence image would show its outlines on black
        image = np.round(np.clip(image * (255.0 / bright), 0, 255)).astype(np.uint8)
    outline = segmentation.find_boundaries(labels, mode="inner")
    areas = np.bincount(labels.ravel())[1:]
    diameter = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi) if areas.any() else 0.0
    width = max(1, round(diameter / OUTLINE_WIDTH_PER_DIAMETER))
    if width > 1:  # grown inward, over the objects only
        outline = ndi.binary_dilation(outline, iterations=width - 1) & (labels > 0)
    drawn = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    drawn[outline] = BOUNDARY_COLOR
    return drawn


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Save :func:`overlay` as PNG for a quick visual check."""
    _write_png(path, overlay(image, labels))
