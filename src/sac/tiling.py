"""Overlapping tiles and seam-free blending, so images of any size run through a fixed-size model.

Tiles overlap and are blended with a weight that falls towards tile borders, where a convolutional or attention
model sees the least context. Images smaller than a tile are padded by reflection.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sac.io import InputError
from sac.progress import progress_bar

# 8 px of blended overlap: a 1000 px side then needs 4 tiles of 256 instead of 5 (16 tiles, not 25, 1.5x faster);
# on validation images Dice changed by < 0.002 against 32 px.
DEFAULT_OVERLAP = 8
PROGRESS_TILES = 64  # images of at least this many tiles show a progress bar (about 4 s on 2 CPU cores)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if not 0 <= overlap < tile:
        raise InputError(f"tile overlap must be in [0, {tile}), got {overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = int(np.ceil((length - tile) / stride)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int]]:
    """All (row, column) tile origins for an image of ``shape``."""
    return [
        (y, x) for y in tile_starts(shape[0], tile, overlap) for x in tile_starts(shape[1], tile, overlap)
    ]


def blend_weight(tile: int, overlap: int) -> np.ndarray:
    """A (tile, tile) weight: 1 in the centre, a cosine ramp to a small floor over the ``overlap`` border."""
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, overlap + 2, dtype=np.float32)[1:-1])
        ramp[:overlap] = edge
        ramp[tile - overlap :] = edge[::-1]
    return np.outer(ramp, ramp)


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad (or edge-pad where reflection is impossible) the first two axes up to at least (height, width)."""
    pad_y, pad_x = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if not pad_y and not pad_x:
        return image
    widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (image.ndim - 2)
    mode = "reflect" if pad_y < image.shape[0] and pad_x < image.shape[1] else "symmetric"
    padded = np.pad(image, widths, mode=mode)
    while (
        padded.shape[0] < height or padded.shape[1] < width
    ):  # symmetric padding doubles at most once per pass
        padded = pad_to(padded, height, width)
    return padded


def predict_tiled(
    predict: Callable[[np.ndarray, list[tuple[int, int]]], np.ndarray],
    image: np.ndarray,
    tile: int,
    overlap: int,
    batch_size: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Run ``predict`` over ``image`` and blend its maps; ``progress`` shows a bar for images of many tiles.

    ``predict(batch, origins)`` maps a (B, tile, tile, C) batch, whose tiles start at ``origins`` (row, column),
    to (B, K, tile, tile) float maps.
    """
    height, width = image.shape[:2]
    weight = blend_weight(tile, overlap if min(height, width) > tile else 0)
    total: np.ndarray | None = None
    norm = np.zeros((height, width), np.float32)
    tiles = list(tile_grid((height, width), tile, overlap))
    bar = progress_bar(
        None, progress and len(tiles) >= PROGRESS_TILES, total=len(tiles), unit="tile", leave=False
    )
    for start in range(0, len(tiles), batch_size):
        origins = tiles[start : start + batch_size]
        batch = np.stack([pad_to(image[y : y + tile, x : x + tile], tile, tile) for y, x in origins])
        maps = predict(batch, origins)
        if total is None:
            total = np.zeros((maps.shape[1], height, width), np.float32)
        for (y, x), values in zip(origins, maps, strict=True):
            h, w = min(tile, height - y), min(tile, width - x)
            total[:, y : y + h, x : x + w] += values[:, :h, :w] * weight[:h, :w]
            norm[y : y + h, x : x + w] += weight[:h, :w]
        bar.update(len(origins))
    bar.close()
    assert total is not None
    return total / np.maximum(norm, 1e-6)
