"""Test-time views of an image: its flips and quarter turns, and how maps, windows and pixels seen in a view go
back to the image's frame, so that answers from several views can be averaged."""

from __future__ import annotations

import numpy as np

from sac.model import MAP_NAMES

View = tuple[int, bool]  # (quarter turns of np.rot90, then mirrored left to right)

# in the order they are added: the first n make an n-view average (sac.options.TTA_VIEWS), the image and its
# mirror first, then both turned half round
VIEWS: tuple[View, ...] = (
    (0, False),
    (0, True),
    (2, False),
    (2, True),
    (1, False),
    (1, True),
    (3, False),
    (3, True),
)


def view_of(image: np.ndarray, view: View) -> np.ndarray:
    """The image (first two axes) as ``view`` shows it."""
    turns, flip = view
    turned = np.rot90(image, turns)
    return np.ascontiguousarray(turned[:, ::-1] if flip else turned)


def maps_of_view(maps: np.ndarray, view: View) -> np.ndarray:
    """(C, h, w) maps of ``view_of(image, view)`` turned back to the image's frame. Channels after ``MAP_NAMES``
    are (horizontal, vertical) offsets: a flip negates the horizontal one, and each quarter turn back maps (h, v)
    to (-v, h)."""
    turns, flip = view
    first = len(MAP_NAMES)  # the first offset channel
    vectors = len(maps) > first
    if flip:
        maps = maps[:, :, ::-1].copy()
        if vectors:
            maps[first] *= -1
    maps = np.rot90(maps, -turns, axes=(1, 2))
    for _ in range(turns % 4 if vectors else 0):
        maps = np.concatenate([maps[:first], -maps[first + 1 : first + 2], maps[first : first + 1]])
    return maps


def pixels_to_view(rows_cols: np.ndarray, shape: tuple[int, int], view: View) -> np.ndarray:
    """(N, 2) (row, column) pixels of an image of ``shape`` -> where ``view_of(image, view)`` shows them. The map
    is affine, so pixels outside the image (a window's padding) go where the view would put them."""
    turns, flip = view
    rows, cols = np.asarray(rows_cols).T
    height, width = shape[:2]
    for _ in range(turns % 4):  # np.rot90 once: (r, c) -> (width - 1 - c, r), and the sides swap
        rows, cols, height, width = width - 1 - cols, rows, width, height
    if flip:
        cols = width - 1 - cols
    return np.stack([rows, cols], axis=-1)


def window_from_view(
    window: np.ndarray, corner: np.ndarray, shape: tuple[int, int], view: View
) -> tuple[np.ndarray, np.ndarray]:
    """A (h, w) window of ``view_of(image, view)`` with its top-left ``corner`` there -> the same window in the
    image's frame, and its top-left corner in the image (``shape``: the image's)."""
    turns, flip = view
    back = np.rot90(window[:, ::-1] if flip else window, -turns)
    seen = shape[1::-1] if turns % 2 else shape[:2]  # the view's sides
    inverse = (turns, True) if flip else ((-turns) % 4, False)  # a mirrored turn is its own inverse
    ends = np.array([corner, np.asarray(corner) + np.array(window.shape[:2]) - 1])
    return back, pixels_to_view(ends, seen, inverse).min(axis=0)
