"""Moving images, maps, labels and clicks between an image's own pixel grid and the model's.

The model sees nuclei at the size it was trained on (``SACConfig.mpp``); an image of another pixel size is
resampled by a zoom (model pixels per image pixel) to be segmented, and what is made there is brought back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sac.points import Points


def resize_image(rgb: np.ndarray, zoom: float) -> np.ndarray:
    """An RGB uint8 image ``zoom`` times its size (antialiased when shrinking)."""
    shape = (max(1, round(rgb.shape[0] * zoom)), max(1, round(rgb.shape[1] * zoom)))
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=zoom < 1)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resample_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float maps resampled to ``shape`` (bilinear, antialiased when shrinking): smooth outlines."""
    shrink = shape[0] < maps.shape[1]
    tensor = torch.from_numpy(np.ascontiguousarray(maps))[None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrink)[
        0
    ].numpy()


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int32 labels resampled (nearest) to ``shape``: no label is blended with another."""
    tensor = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    return F.interpolate(tensor, size=shape, mode="nearest-exact")[0, 0].numpy().astype(np.int32)


def resample_pixels(
    rows: np.ndarray, cols: np.ndarray, source: tuple[int, int], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of a ``shape`` grid that one mask's pixels (``rows``, ``cols`` of a ``source`` grid) cover, as
    :func:`resample_labels` would map them, without resampling a whole label image per mask."""
    if tuple(source) == tuple(shape) or rows.size == 0:
        return rows, cols
    # source pixels per target pixel, in float32 as torch computes it, so that ties round the same way
    scale = np.asarray(source, np.float32) / np.asarray(shape, np.float32)
    top, left = rows.min(), cols.min()
    box = np.zeros((rows.max() - top + 1, cols.max() - left + 1), bool)
    box[rows - top, cols - left] = True
    # target pixel i samples source pixel floor((i + 0.5) * scale), the rule of nearest-exact interpolation
    spans = [
        np.arange(int(low / s) - 1, int((high + 1) / s) + 2)
        for low, high, s in zip((top, left), (rows.max(), cols.max()), scale, strict=True)
    ]
    spans = [span[(span >= 0) & (span < size)] for span, size in zip(spans, shape, strict=True)]
    sampled = [
        np.minimum(np.floor((span.astype(np.float32) + np.float32(0.5)) * s).astype(np.int64), size - 1)
        - start
        for span, s, size, start in zip(spans, scale, source, (top, left), strict=True)
    ]
    inside = [(index >= 0) & (index < extent) for index, extent in zip(sampled, box.shape, strict=True)]
    hit = np.zeros((spans[0].size, spans[1].size), bool)
    hit[np.ix_(inside[0], inside[1])] = box[np.ix_(sampled[0][inside[0]], sampled[1][inside[1]])]
    found_rows, found_cols = np.nonzero(hit)
    return spans[0][found_rows], spans[1][found_cols]


def at_model_scale(
    zoom: float,
    rgb: np.ndarray,
    labels: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    points: Points | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Points | None]:
    """An image, and optionally its labels, centre map and (x, y) clicks, as the model sees them at ``zoom``:
    where clicks are answered, so that SAM and the click head see nuclei at the size they were trained on."""
    if zoom == 1:
        return rgb, labels, centre, points
    zoomed = resize_image(rgb, zoom)
    shape = zoomed.shape[:2]
    return (
        zoomed,
        None if labels is None else resample_labels(labels, shape),
        None if centre is None else resample_maps(centre[None], shape)[0],
        None if points is None else tuple(scale_points(p, zoom) for p in points),
    )


def scale_points(points: np.ndarray | None, zoom: float) -> np.ndarray | None:
    """(x, y) clicks of an image -> the same places in it resized by ``zoom`` (pixel corners stay corners, as
    :func:`resize_image` keeps them)."""
    return None if points is None else np.asarray(points, np.float64) * zoom
