"""Point prompts: SAM's clicks drawn from the generator's nuclei map, and a user's clicks added to them.

Positive points are drawn from distinct predicted nuclei and negative points from the background, preferring the
confusing rim around nuclei. Points use SAM's pixel convention: ``(x, y)`` = ``(column, row)`` integer pixel
indices, which SAM shifts by 0.5 to pixel centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

from sac.io import InputError

Points = tuple[np.ndarray | None, np.ndarray | None]  # (positive, negative) clicks, each (M, 2) (x, y) pixels

_EPS = 0.05  # keeps confident background pixels eligible as negatives
_RING_WIDTH = 5  # pixels around predicted nuclei where negatives are most informative
_RING_BOOST = 10.0


def sample_points(
    prob: np.ndarray,
    num_positive: int,
    num_negative: int,
    rng: np.random.Generator,
    threshold: float = 0.5,
    centre: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw SAM point prompts from one ``(H, W)`` foreground probability map.

    Returns ``coords`` float32 ``(N, 2)`` as ``(x, y)`` and ``labels`` int64 ``(N,)``, positives (1) first,
    ``N = num_positive + num_negative``, all at distinct pixels. Positives sit at the most interior pixel
    (distance transform, or ``centre`` when given) of distinct predicted nuclei chosen at random weighted by
    summed probability; surplus positives go to foreground pixels far from those already chosen. Negatives
    are background pixels drawn with weight ``prob + eps``, boosted in a ring around nuclei. When a class
    runs out of pixels the remaining points still carry their label but fall back to the most (positives)
    or least (negatives) probable free pixels, so an empty prediction still yields ``N`` points.
    """
    prob = _check_map(prob, "prob")
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise InputError("prob must hold probabilities in [0, 1]")
    if centre is not None:
        centre = _check_map(centre, "centre")
        if centre.shape != prob.shape:
            raise InputError(f"centre shape {centre.shape} does not match prob shape {prob.shape}")
    if num_positive < 0 or num_negative < 0 or num_positive + num_negative < 1:
        raise InputError("need non-negative point counts and at least one point in total")
    if num_positive + num_negative > prob.size:
        raise InputError(f"cannot place {num_positive + num_negative} distinct points in {prob.size} pixels")
    foreground = prob >= threshold
    taken = np.zeros(prob.shape, dtype=bool)
    interior = ndimage.distance_transform_edt(foreground) if centre is None else centre
    positive = _positive_pixels(prob, foreground, interior, num_positive, rng, taken)
    negative = _negative_pixels(prob, foreground, num_negative, rng, taken)
    rows, cols = np.unravel_index(np.concatenate([positive, negative]), prob.shape)
    coords = np.stack([cols, rows], axis=1).astype(np.float32)
    labels = np.repeat(np.array([1, 0], dtype=np.int64), [num_positive, num_negative])
    return coords, labels


def _check_map(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"{name} must be a non-empty (H, W) map, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return values


def _positive_pixels(
    prob: np.ndarray,
    foreground: np.ndarray,
    interior: np.ndarray,
    count: int,
    rng: np.random.Generator,
    taken: np.ndarray,
) -> np.ndarray:
    """Flat indices of positives; one per nucleus first, so SAM sees as many nuclei as possible."""
    components, num_components = measure.label(foreground, return_num=True)
    chosen = np.zeros(0, dtype=np.intp)
    if count and num_components:
        ids = np.arange(1, num_components + 1)
        weight = np.bincount(components.ravel(), prob.ravel(), num_components + 1)[1:] + _EPS
        picked = rng.choice(ids, size=min(count, num_components), replace=False, p=weight / weight.sum())
        chosen = peak_pixels(interior, components, picked)
        taken.flat[chosen] = True
    spread = _farthest_pixels(foreground, taken, count - chosen.size)
    return np.concatenate([chosen, spread, _ranked_pixels(-prob, taken, count - chosen.size - spread.size)])


def peak_pixels(values: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Flat index of the largest ``values`` pixel of each region in ``ids`` (first in raster order on ties).

    ``ndimage.maximum_position`` finds the same maxima (with unspecified ties) but sorts every pixel of the
    image; sorting only the requested regions' pixels keeps point sampling cheap when few nuclei are picked.
    """
    ids = np.asarray(ids)
    pixels = np.flatnonzero(np.isin(labels, ids))
    owner = labels.flat[pixels]
    order = np.lexsort((pixels, -values.flat[pixels], owner))
    regions, first = np.unique(owner[order], return_index=True)  # each region's best pixel leads its run
    return pixels[order[first]][np.searchsorted(regions, ids)].astype(np.intp)


def _negative_pixels(
    prob: np.ndarray, foreground: np.ndarray, count: int, rng: np.random.Generator, taken: np.ndarray
) -> np.ndarray:
    """Flat indices of negatives; the rim next to nuclei is where SAM's masks tend to leak."""
    candidates = np.flatnonzero(~foreground & ~taken)
    ring = ndimage.maximum_filter(foreground, size=2 * _RING_WIDTH + 1)  # all pixels within _RING_WIDTH
    weight = prob + _EPS
    weight[ring] *= _RING_BOOST
    weight = weight.ravel()[candidates]
    size = min(count, candidates.size)
    chosen = (
        rng.choice(candidates, size=size, replace=False, p=weight / weight.sum()) if size else candidates[:0]
    )
    taken.flat[chosen] = True
    return np.concatenate([chosen, _ranked_pixels(prob, taken, count - size)])


def _farthest_pixels(candidates: np.ndarray, taken: np.ndarray, count: int) -> np.ndarray:
    """Greedy farthest-point picks from ``candidates`` so extra points spread out instead of clustering."""
    pool = np.flatnonzero(candidates & ~taken)
    count = min(count, pool.size)
    if count <= 0:
        return pool[:0]
    pool_rc = np.stack(np.unravel_index(pool, taken.shape), axis=1)
    taken_rc = np.argwhere(taken)
    nearest = np.full(pool.size, np.inf)
    for point in taken_rc:
        nearest = np.minimum(nearest, ((pool_rc - point) ** 2).sum(axis=1))
    picks = []
    for _ in range(count):
        best = int(np.argmax(nearest))
        picks.append(pool[best])
        nearest = np.minimum(nearest, ((pool_rc - pool_rc[best]) ** 2).sum(axis=1))
    chosen = np.array(picks, dtype=np.intp)
    taken.flat[chosen] = True
    return chosen


def _ranked_pixels(key: np.ndarray, taken: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` free pixels with the smallest ``key``; the fallback when a class runs out of pixels."""
    if count <= 0:
        return np.zeros(0, dtype=np.intp)
    order = np.argsort(key, axis=None, kind="stable")
    chosen = order[~taken.flat[order]][:count]
    taken.flat[chosen] = True
    return chosen


def sample_point_prompts(
    prob: torch.Tensor,
    num_positive: int,
    num_negative: int,
    seed_or_generator: int | np.random.Generator,
    threshold: float = 0.5,
    centre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample points for a ``(B, H, W)`` batch in SamModel's ``input_points`` / ``input_labels`` layout.

    Returns ``points`` float32 ``(B, 1, N, 2)`` and ``labels`` int64 ``(B, 1, N)`` on ``prob``'s device, in
    the input image's pixel frame (rescale them if SAM sees a resized image).
    """
    if prob.ndim != 3:
        raise InputError(f"prob must have shape (B, H, W), got {tuple(prob.shape)}")
    if centre is not None and centre.shape != prob.shape:
        raise InputError(f"centre shape {tuple(centre.shape)} does not match prob shape {tuple(prob.shape)}")
    rng = np.random.default_rng(seed_or_generator)
    probs = prob.detach().float().cpu().numpy()
    centres = [None] * len(probs) if centre is None else centre.detach().float().cpu().numpy()
    samples = [
        sample_points(p, num_positive, num_negative, rng, threshold, c)
        for p, c in zip(probs, centres, strict=True)
    ]
    points = torch.from_numpy(np.stack([coords for coords, _ in samples]))[:, None]
    labels = torch.from_numpy(np.stack([labels for _, labels in samples]))[:, None]
    return points.to(prob.device), labels.to(prob.device)


def combine_points(
    points: torch.Tensor,
    labels: torch.Tensor,
    manual_positive: Sequence[Sequence[float]] | np.ndarray | None = None,
    manual_negative: Sequence[Sequence[float]] | np.ndarray | None = None,
    replace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append a user's ``(x, y)`` clicks to every image's generated points, or use only them (``replace``).

    Keeps the ``(B, 1, N', 2)`` / ``(B, 1, N')`` layout; manual positives follow the generated points, then
    manual negatives.
    """
    if points.ndim != 4 or points.shape[-1] != 2 or labels.shape != points.shape[:-1]:
        raise InputError(
            f"expected points (B, P, N, 2) and labels (B, P, N), got {tuple(points.shape)} and "
            f"{tuple(labels.shape)}"
        )
    positive = as_points(manual_positive, "manual positive points")
    negative = as_points(manual_negative, "manual negative points")
    if replace and not len(positive) + len(negative):
        raise InputError("replace=True needs at least one manual point")
    batch, point_batch = points.shape[:2]
    manual = torch.from_numpy(np.concatenate([positive, negative])).to(points)
    manual_labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).to(labels)
    manual = manual.expand(batch, point_batch, -1, -1)
    manual_labels = manual_labels.expand(batch, point_batch, -1)
    if replace:
        return manual.clone(), manual_labels.clone()
    return torch.cat([points, manual], dim=2), torch.cat([labels, manual_labels], dim=2)


def click_pixels(points: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) int (row, column) pixels of (x, y) clicks; a click outside the image is an error, not a no-op."""
    if points is None:
        return np.zeros((0, 2), np.int64)
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    rows_cols = np.floor(xy[:, ::-1]).astype(np.int64)
    outside = ((rows_cols < 0) | (rows_cols >= shape)).any(axis=1)
    if outside.any():
        x, y = xy[np.argmax(outside)]
        raise InputError(f"click ({x:g}, {y:g}) lies outside the {shape[1]}x{shape[0]} image")
    return rows_cols


def clicks_pixels(clicks: Points, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """:func:`click_pixels` of each kind of click, e.g. ``(positive, negative)``."""
    return tuple(click_pixels(side, shape) for side in clicks)


def clicks_in_window(
    clicks: Points, origin: tuple[int, int], shape: tuple[int, ...], scale: float = 1.0
) -> Points:
    """The (positive, negative) ``clicks`` that fall in a window of ``shape`` (rows, columns) whose corner is at
    ``origin`` (row, column), in the window's pixels; ``scale`` divides the clicks first (a slide level's
    downsample, clicks being in level-0 pixels)."""
    inside = []
    for points in clicks:
        xy = np.zeros((0, 2)) if points is None else np.asarray(points, np.float64).reshape(-1, 2)
        xy = xy / scale - (origin[1], origin[0])
        inside.append(xy[(xy >= 0).all(1) & (xy[:, 0] < shape[1]) & (xy[:, 1] < shape[0])])
    return inside[0], inside[1]


def as_clicks(points: object, what: str = "points") -> Points:
    """A user's ``(positive, negative)`` clicks as two float32 ``(M, 2)`` (x, y) arrays (None: no clicks of that
    kind). Any other shape is refused rather than guessed at: a bare list of two points would otherwise read as
    one positive and one negative click. A repeated click counts once; a pixel clicked both ways is refused,
    since the two contradict each other."""
    if not isinstance(points, (tuple, list)) or len(points) != 2 or not all(map(_is_pairs, points)):
        raise InputError(
            f"{what}: expected (positive, negative), each a list of [x, y] pairs, e.g. ([[120, 120]], [])"
        )
    positive, negative = (
        _first_per_pixel(as_points(side, f"{what}: {kind} clicks"))
        for side, kind in zip(points, ("positive", "negative"), strict=True)
    )
    both = {tuple(pixel) for pixel in np.floor(positive)} & {tuple(pixel) for pixel in np.floor(negative)}
    if both:
        x, y = min(both)
        raise InputError(f"{what}: pixel ({x:g}, {y:g}) is clicked both positive and negative")
    return positive, negative


def _first_per_pixel(points: np.ndarray) -> np.ndarray:
    """The points in their order, without those that fall in the pixel of an earlier one."""
    _, first = np.unique(np.floor(points), axis=0, return_index=True)
    return points[np.sort(first)]


def _is_pairs(values: object) -> bool:
    """Whether ``values`` is None, empty or shaped as a list of pairs (whether numbers, :func:`as_points` checks)."""
    if values is None:
        return True
    try:
        shape = np.shape(values)
    except ValueError:  # ragged
        return False
    return 0 in shape or (len(shape) == 2 and shape[1] == 2)


def as_points(values: object, what: str) -> np.ndarray:
    """float32 ``(M, 2)`` (x, y) points from a list of pairs (None or empty: none), finite or refused."""
    if values is None:
        return np.zeros((0, 2), dtype=np.float32)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a list of numeric (x, y) pairs") from None
    if array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"{what} must be a list of (x, y) pairs, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} contain NaN or infinite coordinates")
    return array.astype(np.float32)
