"""The auto-prompt generator and the point prompts SAM receives instead of a human's clicks.

A small U-Net predicts a coarse nuclei map; positive points are drawn from distinct predicted nuclei and
negative points from the background, preferring the confusing rim around nuclei. Points use SAM's pixel
convention: ``(x, y)`` = ``(column, row)`` integer pixel indices, which SAM shifts by 0.5 to pixel centres.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import measure
from torch import nn

from sac.io import InputError, atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_EPS = 0.05  # keeps confident background pixels eligible as negatives
_RING_WIDTH = 5  # pixels around predicted nuclei where negatives are most informative
_RING_BOOST = 10.0


class GeneratorOutput(NamedTuple):
    """Channel 0 of ``logits`` is the nuclei foreground, channel 1 the normalised distance-to-edge map."""

    logits: torch.Tensor
    features: torch.Tensor


class ConvBlock(nn.Module):
    """Two conv3x3 -> GroupNorm -> GELU layers; GroupNorm because training batches hold only 2-8 images."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = math.gcd(8, out_channels)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PromptGenerator(nn.Module):
    """A light U-Net whose coarse nuclei map supplies SAM's point prompts.

    Takes ``(B, C, H, W)`` images in [0, 1] and normalises them itself with fixed ImageNet statistics (their
    grey average when ``C != 3``). Any ``H, W`` works: sizes that are not multiples of ``2**depth`` are
    edge-padded and the outputs cropped back. ``features`` is the last full-resolution decoder map, reused
    by the segmenter's fusion head.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        if min(in_channels, base_channels, depth) < 1:
            raise InputError("PromptGenerator needs in_channels, base_channels and depth of at least 1")
        self.in_channels = in_channels
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out)
            for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(
            ConvBlock(widths[level + 1] + widths[level], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(base_channels, 2, kernel_size=1)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if in_channels != 3:
            mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
        self.register_buffer("pixel_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        x = (x - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        features = x[..., :height, :width]
        return GeneratorOutput(self.head(features), features)


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
    positive = _as_points(manual_positive, "manual positive points")
    negative = _as_points(manual_negative, "manual negative points")
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


def _as_points(values: object, what: str) -> np.ndarray:
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


def read_points_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read manual ``(positive, negative)`` points, each float32 ``(M, 2)`` in ``(x, y)`` pixels.

    Accepts a CSV with header ``x,y,label`` (label 1 = positive, 0 = negative) or a JSON object
    ``{"positive": [[x, y], ...], "negative": [...]}`` (either key may be omitted).
    """
    path = Path(path)
    suffix = _points_suffix(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read points file ({error})") from None
    return _parse_csv(text, path) if suffix == ".csv" else _parse_json(text, path)


def _parse_csv(text: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or [cell.strip().lower() for cell in rows[0]] != ["x", "y", "label"]:
        raise InputError(f"{path}: CSV header must be x,y,label")
    points: dict[int, list[tuple[float, float]]] = {1: [], 0: []}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            x, y, label = row
            point, label = (float(x), float(y)), int(label)
        except ValueError:
            raise InputError(
                f"{path}: line {line}: expected numbers x,y,label, got {','.join(row)!r}"
            ) from None
        if label not in points:
            raise InputError(f"{path}: line {line}: label must be 1 (positive) or 0 (negative), got {label}")
        points[label].append(point)
    return _as_points(points[1], f"{path}: positive points"), _as_points(
        points[0], f"{path}: negative points"
    )


def _parse_json(text: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or not set(data) <= {"positive", "negative"}:
        raise InputError(f'{path}: expected a JSON object with "positive" and/or "negative" lists of [x, y]')
    positive, negative = (
        _as_points(data.get(key, []), f"{path}: {key} points") for key in ("positive", "negative")
    )
    return positive, negative


def write_points_file(
    path: str | os.PathLike,
    positive: Sequence[Sequence[float]] | np.ndarray,
    negative: Sequence[Sequence[float]] | np.ndarray,
) -> None:
    """Save points in :func:`read_points_file`'s format (chosen by suffix) so prompts can be reused."""
    path = Path(path)
    suffix = _points_suffix(path)
    positive = _as_points(positive, "positive points").tolist()
    negative = _as_points(negative, "negative points").tolist()
    with atomic_write(path) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps({"positive": positive, "negative": negative}), encoding="utf-8")
        else:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["x", "y", "label"])
                writer.writerows([*([x, y, 1] for x, y in positive), *([x, y, 0] for x, y in negative)])


def _points_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"{path}: points file must end in .csv or .json")
    return suffix
