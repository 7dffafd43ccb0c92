"""Outputs that QuPath, napari and spreadsheets read: PNG masks, label TIFFs, CSV tables and GeoJSON.

GeoJSON coordinates follow QuPath: pixel (row r, column c) covers the square [c, c+1] x [r, r+1], so a
pixel centre sits at (c + 0.5, r + 0.5) and polygon areas match pixel counts.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage import draw, measure, segmentation
from skimage.color import rgb2gray
from skimage.util import img_as_ubyte

from sac.io import InputError, atomic_write
from sac.metrics import check_labels

# What ``sac predict`` writes per input, named <stem><suffix>; slides get only labels and geojson.
OUTPUT_SUFFIXES = {
    "mask": "_mask.png",
    "labels": "_labels.tif",
    "table": "_nuclei.csv",
    "geojson": ".geojson",
    "overlay": "_overlay.png",
}
TABLE_COLUMNS = ("id", "centroid_x", "centroid_y", "area", "perimeter", "eccentricity", "mean_intensity")
UNIT_COLUMNS = ("centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um")  # with a known pixel size
NUCLEUS_CLASS, NUCLEUS_COLOR = "Nucleus", (255, 0, 0)
BOUNDARY_COLOR = (1.0, 1.0, 0.0)


def output_path(out_dir: str | os.PathLike, source: str | os.PathLike, kind: str) -> Path:
    """Where the ``kind`` output (a key of ``OUTPUT_SUFFIXES``) of the input file ``source`` goes."""
    return Path(out_dir) / f"{Path(source).stem}{OUTPUT_SUFFIXES[kind]}"


def _check_label_image(labels: np.ndarray) -> np.ndarray:
    """Return 2-D labels with booleans as uint8, which regionprops rejects as ambiguous."""
    labels = check_labels(labels)
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

    With the pixel size ``mpp`` (µm), resolution tags in pixels per centimetre let QuPath, Fiji and napari
    plugins show microns.
    """
    labels = check_labels(labels)
    max_id = int(labels.max()) if labels.size else 0
    if max_id > np.iinfo(np.uint32).max:
        raise InputError(f"label id {max_id} does not fit in uint32")
    dtype = np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", **resolution_tags(mpp))


def resolution_tags(mpp: float | None) -> dict:
    """tifffile arguments recording a pixel size of ``mpp`` µm (none when unknown)."""
    if mpp is None:
        return {}
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def nuclei_table(labels: np.ndarray, image: np.ndarray | None = None, mpp: float | None = None) -> list[dict]:
    """One row of shape measurements per nucleus; ``mean_intensity`` is in the gray units of ``image``.

    With the pixel size ``mpp`` (µm), the same measurements also in µm and µm² (``UNIT_COLUMNS``).
    """
    labels = _check_label_image(labels)
    gray = None
    if image is not None:
        image = _check_image(image, labels.shape).astype(np.float64)
        gray = rgb2gray(image) if image.ndim == 3 else image
    rows = [
        {
            "id": region.label,
            "centroid_x": float(region.centroid[1]),
            "centroid_y": float(region.centroid[0]),
            "area": int(region.area),
            "perimeter": float(region.perimeter),
            "eccentricity": float(region.eccentricity),
            "mean_intensity": float("nan") if gray is None else float(region.intensity_mean),
        }
        for region in measure.regionprops(labels, intensity_image=gray)
    ]
    if mpp is not None:
        for row in rows:
            row.update(
                centroid_x_um=row["centroid_x"] * mpp,
                centroid_y_um=row["centroid_y"] * mpp,
                area_um2=row["area"] * mpp**2,
                perimeter_um=row["perimeter"] * mpp,
            )
    return rows


def write_nuclei_csv(
    path: str | os.PathLike, labels: np.ndarray, image: np.ndarray | None = None, mpp: float | None = None
) -> None:
    """Write :func:`nuclei_table` as CSV; the header is written even without nuclei so readers never choke."""
    rows = nuclei_table(labels, image, mpp)
    columns = TABLE_COLUMNS if mpp is None else TABLE_COLUMNS + UNIT_COLUMNS
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    """Closed (row, col) outline of the largest piece of ``mask``, ignoring holes, in pixel-centre units."""
    padded = np.pad(ndi.binary_fill_holes(mask), 1).astype(np.float64)
    # fully_connected="high" keeps pixels that touch only at a corner in one outline
    contour = max(measure.find_contours(padded, 0.5, fully_connected="high"), key=len) - 1
    return _drop_collinear(contour)


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The same closed polygon without vertices in the middle of straight runs (most of a pixel outline)."""
    points = ring[:-1]
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    corners = points[np.abs(incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]) > 1e-9]
    return np.vstack([corners, corners[:1]]) if len(corners) >= 3 else ring


def labels_to_geojson(
    labels: np.ndarray, offset_xy: tuple[float, float] = (0, 0), scale: float = 1.0
) -> dict:
    """Outline every nucleus as a QuPath detection; ``offset_xy`` places a tile inside its whole slide, and
    ``scale`` (the level's downsample) takes a pyramid level's pixels to level 0, QuPath's frame."""
    labels = _check_label_image(labels)
    features = []
    for region in measure.regionprops(labels):
        ring = _outer_ring(region.image) + np.array(region.bbox[:2]) + 0.5
        xy = (ring[:, ::-1] + np.asarray(offset_xy, dtype=np.float64)) * scale
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [xy.tolist()]},
                "properties": {
                    "id": int(region.label),
                    "objectType": "detection",
                    "classification": {"name": NUCLEUS_CLASS, "color": list(NUCLEUS_COLOR)},
                    "measurements": {"area": int(region.area)},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | os.PathLike, labels: np.ndarray, offset_xy: tuple[float, float] = (0, 0)
) -> None:
    """Write :func:`labels_to_geojson` for QuPath's File > Import objects."""
    collection = labels_to_geojson(labels, offset_xy)
    with atomic_write(path) as tmp, open(tmp, "w") as handle:
        json.dump(collection, handle)


def geojson_to_labels(feature_collection: dict, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygon outlines back into labels (ids from ``properties.id``, else 1, 2, ...)."""
    if not isinstance(feature_collection, dict) or feature_collection.get("type") != "FeatureCollection":
        raise InputError("expected a GeoJSON FeatureCollection")
    labels = np.zeros(shape, dtype=np.uint32)
    for index, feature in enumerate(feature_collection.get("features", [])):
        geometry = feature.get("geometry") or {}
        if geometry.get("type") != "Polygon":
            raise InputError(f"feature {index}: geometry type {geometry.get('type')!r} is not a Polygon")
        xy = np.asarray(geometry["coordinates"][0], dtype=np.float64)
        rows, cols = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
        labels[rows, cols] = (feature.get("properties") or {}).get("id", index + 1)
    return labels


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Draw nucleus outlines (inside each nucleus, so touching ones stay distinct) over a uint8 image."""
    labels = _check_label_image(labels)
    image = _check_image(image, labels.shape)
    if image.dtype != np.uint8:
        raise InputError(f"overlay needs a uint8 image, got dtype {image.dtype}")
    return img_as_ubyte(segmentation.mark_boundaries(image, labels, color=BOUNDARY_COLOR, mode="inner"))


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Save :func:`overlay` as PNG for a quick visual check."""
    _write_png(path, overlay(image, labels))
