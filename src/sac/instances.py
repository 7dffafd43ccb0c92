"""Nuclei instances: a fast watershed on the model's maps, or SAM answering one click per nucleus, and a user's
clicks applied to either.

The fast mode splits touching nuclei along the valleys of the predicted centre map. SAM mode prompts each nucleus
the generator finds at its centre, with negative clicks on its nearest neighbours so masks do not bleed into the
nuclei next to them. A user's positive click becomes SAM's prompt for the nucleus under it, which is added as its
own instance; a negative click removes the object under it. SAM's answer to a click is refined only in a window
around it (``SACConfig.instance_window``), so a click changes nothing far from where it lands.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import KDTree
from skimage import measure, morphology, segmentation

from sac.io import InputError
from sac.model import InstanceOutput, SACConfig, SegmentAnyCell
from sac.points import clicks_pixels, peak_pixels
from sac.scale import at_model_scale, resample_pixels
from sac.tiling import pad_to, tile_grid
from sac.views import VIEWS, pixels_to_view, view_of, window_from_view

NEGATIVES_PER_NUCLEUS = 2  # SAM instance mode: negative clicks on the nearest other nuclei
MAX_CLICK_NEGATIVES = 4  # a user's positive click: nearby negative clicks and neighbours, at most
_PADDING_LABEL = -1  # SAM's "not a point": lets nuclei with fewer neighbours share a prompt batch

SPECK_PIXELS = 8  # holes and specks of the thresholded mask under this many pixels are noise, not structure


def filter_instances(
    labels: np.ndarray, min_area: float = 0, max_area: float | None = None, exclude_edges: bool = False
) -> np.ndarray:
    """Labels 1..N without the instances smaller than ``min_area`` or larger than ``max_area`` pixels, and with
    ``exclude_edges`` those touching the image border."""
    areas = np.bincount(labels.ravel())
    drop = areas < min_area
    if max_area is not None:
        drop |= areas > max_area
    if exclude_edges:
        drop[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    drop[0] = False
    if not drop.any():
        return labels
    return segmentation.relabel_sequential(np.where(drop[labels], 0, labels))[0].astype(np.int32)


def instances_from_maps(
    probability: np.ndarray,
    centre: np.ndarray,
    threshold: float = 0.5,
    seed_threshold: float = SACConfig.seed_threshold,
    seed_depth: float = SACConfig.seed_depth,
    hv: np.ndarray | None = None,
    hv_weight: float = SACConfig.hv_weight,
) -> np.ndarray:
    """Int32 labels 1..N: the thresholded probability split by a watershed seeded at the centre map's cores.

    A core is a connected region of the centre map at or above ``seed_threshold``. With ``seed_depth`` > 0, a
    core holding several peaks is split between any two whose valley is at least that deep below the lower
    peak (see :func:`depth_seeds`): crowded small nuclei often share one core, because the valley between their
    centres does not fall below the threshold. Foreground without a core (a nucleus the centre map missed)
    keeps one label per connected piece instead of being dropped.

    With (2, H, W) horizontal and vertical maps ``hv``, the centre map is first lowered where they show a
    boundary between nuclei (:func:`hv_boundaries`, times ``hv_weight``), so touching nuclei get a valley.
    """
    probability, centre = np.asarray(probability), np.asarray(centre)
    if hv is not None:
        centre = centre * np.clip(1 - hv_weight * hv_boundaries(hv), 0, 1)
    if probability.ndim != 2 or probability.shape != centre.shape:
        raise InputError(
            f"probability and centre must be 2-D maps of one shape, got {probability.shape} and {centre.shape}"
        )
    small = SPECK_PIXELS - 1  # scikit-image removes pieces of at most max_size pixels
    foreground = morphology.remove_small_holes(probability >= threshold, max_size=small)
    foreground = morphology.remove_small_objects(foreground, max_size=small)
    if seed_depth > 0:
        markers = depth_seeds(centre, foreground, seed_threshold, seed_depth)
    else:
        markers = measure.label(foreground & (centre >= seed_threshold))
    labels = segmentation.watershed(-centre, markers, mask=foreground)
    orphans = foreground & (labels == 0)
    labels[orphans] = measure.label(orphans)[orphans] + labels.max()
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def hv_boundaries(hv: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Where the horizontal and vertical maps (each pixel's offset from its nucleus's centre) run backwards:
    the sum of how fast the horizontal map falls along columns and the vertical one along rows (Gaussian
    derivatives). Inside a nucleus both rise, from -1 to 1 across it; they fall only across its border, and
    steeply where it touches another nucleus."""
    falling_columns = -ndimage.gaussian_filter(np.asarray(hv[0], np.float32), sigma, order=(0, 1))
    falling_rows = -ndimage.gaussian_filter(np.asarray(hv[1], np.float32), sigma, order=(1, 0))
    return np.maximum(falling_columns, 0) + np.maximum(falling_rows, 0)


def depth_seeds(centre: np.ndarray, foreground: np.ndarray, threshold: float, depth: float) -> np.ndarray:
    """Int32 watershed markers: the centre map's peaks at or above ``threshold``, grouped as its cores at
    ``threshold`` would group them, except that two peaks whose valley lies ``depth`` or more below the lower
    one stay apart.

    The merge rule of h-maxima (a peak survives if its dynamic is at least ``depth``) applied to the basins of
    all local maxima, from the highest valley down, so it costs two watersheds instead of a grey-level
    reconstruction (a tenth of the time on 1000x1000 maps). Peaks below ``threshold`` are no seeds: their
    basins are flooded from their neighbours, as with plain cores.
    """
    relief = np.where(foreground, centre, -1).astype(np.float32)
    peaks = measure.label(morphology.local_maxima(relief, allow_borders=True) & foreground)
    if peaks.max() < 2:
        return peaks.astype(np.int32)
    basins = segmentation.watershed(-relief, peaks, mask=foreground)
    heights = np.full(peaks.max() + 1, -1, np.float32)
    heights[peaks[peaks > 0]] = relief[peaks > 0]  # a local maximum is a plateau: one height per peak
    first, second, valley = _basin_valleys(basins, relief)
    parent = np.arange(len(heights))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for edge in np.argsort(-valley, kind="stable"):  # the highest pass first
        a, b, level = root(first[edge]), root(second[edge]), valley[edge]
        lower = min(heights[a], heights[b])
        if a != b and lower >= threshold and level >= threshold and lower - level < depth:
            if heights[a] < heights[b]:
                a, b = b, a
            parent[b] = a
    roots = np.array([root(node) for node in range(len(heights))])
    roots[heights < threshold] = 0
    roots[0] = 0
    return segmentation.relabel_sequential(roots[peaks])[0].astype(np.int32)


def _basin_valleys(basins: np.ndarray, relief: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pair of touching basins (a < b), the highest pass between them: the larger, over pixel pairs
    across their border, of the lower pixel's height."""
    pairs = []
    for left, right, high_left, high_right in (
        (basins[:, :-1], basins[:, 1:], relief[:, :-1], relief[:, 1:]),
        (basins[:-1], basins[1:], relief[:-1], relief[1:]),
    ):
        border = (left != right) & (left > 0) & (right > 0)
        a, b = left[border], right[border]
        pairs.append((np.minimum(a, b), np.maximum(a, b), np.minimum(high_left[border], high_right[border])))
    first, second, level = (np.concatenate(column) for column in zip(*pairs, strict=True))
    key = first.astype(np.int64) * (int(basins.max()) + 1) + second
    order = np.lexsort((-level, key))  # by pair, highest pass first
    key, first, second, level = key[order], first[order], second[order], level[order]
    keep = np.r_[True, key[1:] != key[:-1]]
    return first[keep], second[keep], level[keep]


class NucleusMask(NamedTuple):
    """SAM's answer to one click, in image coordinates."""

    score: float  # SAM's predicted IoU
    rows: np.ndarray
    cols: np.ndarray


@torch.inference_mode()
def segment_at_points(
    model: SegmentAnyCell,
    image: np.ndarray,
    clicks: np.ndarray,
    negatives: np.ndarray,
    batch_size: int = 64,
) -> list[NucleusMask | None]:
    """SAM's nucleus for each positive click, or None where its mask misses the click.

    Parameters
    ----------
    image : (H, W, 3) uint8
    clicks : (N, 2) int (row, column) positive clicks
    negatives : (N, K, 2) int (row, column) negative clicks per positive; rows of -1 are unused

    Each click is answered in ``model.config.click_views`` views of the image (:data:`sac.views.VIEWS`), the
    answers' logits taken back to the image and averaged over the first view's window; the mask is the piece
    of that window connected to the click (see :func:`tile_answers`).
    """
    clicks = np.asarray(clicks, np.int64).reshape(-1, 2)
    if not len(clicks):
        return []
    negatives = np.asarray(negatives, np.int64).reshape(len(clicks), -1, 2)
    unused = (negatives < 0).any(axis=2)
    views = VIEWS[: model.config.click_views]
    windows: list[_AveragedWindow | None] = [None] * len(clicks)
    for view in views:
        seen_negatives = pixels_to_view(negatives.reshape(-1, 2), image.shape, view).reshape(negatives.shape)
        seen_negatives[unused] = -1
        seen_clicks = pixels_to_view(clicks, image.shape, view)
        for chosen, answer, corner in tile_answers(
            model, view_of(image, view), seen_clicks, seen_negatives, batch_size
        ):
            logits = answer.logits[:, 0].float().cpu().numpy()
            corners = answer.origins.cpu().numpy() + corner
            scores = answer.iou.float().cpu().numpy()
            for nucleus, window, origin, score in zip(chosen, logits, corners, scores, strict=True):
                window, origin = window_from_view(window, origin, image.shape, view)
                if windows[nucleus] is None:
                    windows[nucleus] = _AveragedWindow(window, origin)
                windows[nucleus].add(window, origin, score)
    return [
        connected_to_click(
            averaged.logits() > 0, averaged.corner, click, image.shape, averaged.score / len(views)
        )
        for averaged, click in zip(windows, clicks, strict=True)
    ]


class _AveragedWindow:
    """A click's answer averaged over views, in the frame of its first view's window."""

    def __init__(self, window: np.ndarray, corner: np.ndarray) -> None:
        self.corner = np.asarray(corner)
        self.total = np.zeros(window.shape, np.float64)
        self.count = np.zeros(window.shape, np.int32)
        self.score = 0.0

    def add(self, window: np.ndarray, corner: np.ndarray, score: float) -> None:
        """Adds where the window overlaps the first one (a view's tiling may place it a pixel or so apart)."""
        top, left = np.asarray(corner) - self.corner
        height, width = self.total.shape
        rows = slice(max(0, top), min(height, top + window.shape[0]))
        cols = slice(max(0, left), min(width, left + window.shape[1]))
        self.total[rows, cols] += window[
            rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
        ]
        self.count[rows, cols] += 1
        self.score += float(score)

    def logits(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1)


@torch.inference_mode()
def tile_answers(
    model: SegmentAnyCell,
    image: np.ndarray,
    clicks: np.ndarray,
    negatives: np.ndarray,
    batch_size: int = 64,
) -> Iterator[tuple[np.ndarray, InstanceOutput, np.ndarray]]:
    """The model's raw answers to clicks, batch by batch: (indices of the clicks, their answer, the tile's
    top-left corner in the image).

    Each click is answered in the tile (overlapping by a quarter tile) where it lies most centrally, so its
    refinement window is rarely cut by a tile border.
    """
    clicks = np.asarray(clicks, np.int64).reshape(-1, 2)
    negatives = (
        np.asarray(negatives, np.int64).reshape(len(clicks), -1, 2) if len(clicks) else np.zeros((0, 1, 2))
    )
    size = model.config.image_size
    origins = np.array(tile_grid(image.shape[:2], size, size // 4))
    margin = np.minimum(clicks[:, None] - origins, origins + size - 1 - clicks[:, None]).min(axis=2)
    home = margin.argmax(axis=1) if len(clicks) else np.zeros(0, np.intp)
    device = model.pixel_mean.device
    was_training = model.training
    model.eval()
    try:
        for tile in np.unique(home):
            y, x = origins[tile]
            crop = pad_to(image[y : y + size, x : x + size], size, size)
            tensor = (
                torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1)[None].float() / 255
            )
            output = model(tensor)
            members = np.flatnonzero(home == tile)
            for start in range(0, members.size, batch_size):
                chosen = members[start : start + batch_size]
                points, labels = _tile_prompts(clicks[chosen], negatives[chosen], (y, x), size)
                answer = model.prompt_instances(
                    output,
                    torch.zeros(len(chosen), dtype=torch.long, device=device),
                    torch.from_numpy(points).to(device),
                    torch.from_numpy(labels).to(device),
                )
                yield chosen, answer, np.array([y, x])
    finally:
        model.train(was_training)


def _tile_prompts(
    clicks: np.ndarray, negatives: np.ndarray, origin: tuple[int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(P, 1 + K, 2) (x, y) tile-frame points and (P, 1 + K) labels: the click, then its negatives.

    Negatives outside the tile, or unused (-1), become padding points.
    """
    rows_cols = np.concatenate([clicks[:, None], negatives], axis=1) - np.asarray(origin)
    inside = (rows_cols >= 0).all(axis=2) & (rows_cols < size).all(axis=2)
    inside[:, 1:] &= (negatives >= 0).all(axis=2)
    labels = np.where(inside, 0, _PADDING_LABEL)
    labels[:, 0] = 1
    coords = np.where(inside[..., None], rows_cols[..., ::-1], 0)
    return coords.astype(np.float32), labels.astype(np.int64)


def connected_to_click(
    window: np.ndarray, corner: np.ndarray, click: np.ndarray, shape: tuple[int, ...], score: float
) -> NucleusMask | None:
    """The piece of a window mask (top-left ``corner`` in the image) that holds the click, clipped to the image
    and to half a window from the click."""
    row, col = click - corner
    if not (0 <= row < window.shape[0] and 0 <= col < window.shape[1]) or not window[row, col]:
        return None
    # within the window's inscribed disk, so that no pixel farther than half a window from the click changes
    rows, cols = np.ogrid[: window.shape[0], : window.shape[1]]
    window = window & ((rows - row) ** 2 + (cols - col) ** 2 <= (window.shape[0] // 2) ** 2)
    pieces = measure.label(window)
    rows, cols = np.nonzero(pieces == pieces[row, col])
    rows, cols = rows + corner[0], cols + corner[1]
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return NucleusMask(float(score), rows[inside], cols[inside])


def sam_instances(
    model: SegmentAnyCell, image: np.ndarray, seeds: np.ndarray, centre: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """SAM instance mode: int32 labels 1..N from one click per nucleus of ``seeds`` (the watershed's labels),
    at the peak of the generator's ``centre`` map inside it, with negative clicks on its nearest neighbours.

    Where masks overlap, the higher predicted IoU wins; a nucleus whose SAM mask misses its own click keeps its
    seed pixels, at the lowest priority.
    """
    image, seeds = np.asarray(image), np.asarray(seeds)
    if image.shape != (*seeds.shape, 3) or image.dtype != np.uint8:
        raise InputError(
            f"expected a uint8 RGB image matching labels {seeds.shape}, got {image.dtype} {image.shape}"
        )
    ids = np.unique(seeds)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros(seeds.shape, np.int32)
    points = np.stack(np.unravel_index(peak_pixels(centre, seeds, ids), seeds.shape), 1)
    neighbours = KDTree(points).query(points, k=NEGATIVES_PER_NUCLEUS + 1)[1][:, 1:]
    padded = np.concatenate([points, np.full((1, 2), -1)])  # KDTree marks missing neighbours with index N
    answers = segment_at_points(model, image, points, padded[neighbours], batch_size)
    candidates = [
        answer if answer is not None else NucleusMask(-np.inf, *np.nonzero(seeds == label))
        for answer, label in zip(answers, ids, strict=True)
    ]
    return _paint(candidates, points, seeds.shape)


def apply_clicks(
    model: SegmentAnyCell,
    image: np.ndarray,
    labels: np.ndarray,
    positive: np.ndarray | None,
    negative: np.ndarray | None,
    centre: np.ndarray | None = None,
    zoom: float = 1.0,
    probability: np.ndarray | None = None,
    earlier: np.ndarray | None = None,
) -> np.ndarray:
    """Labels corrected by a user's clicks, (x, y) image coordinates.

    A negative click removes the object under it. A positive click asks SAM for the nucleus under it and adds it
    as a new instance over whatever was there (:func:`split_remnants` tidies what is left of the objects it
    covered); a click SAM cannot answer is reported and changes nothing. SAM gets as negatives the negative
    clicks near it and the other nuclei the ``centre`` map sees in the object under it (a positive click on an
    object most often marks a merge).

    SAM answers at ``zoom`` (model pixels per image pixel, :func:`sac.scale.at_model_scale`), where it sees
    nuclei at the size it was trained on; its answers are painted on the labels at the image's own scale, so
    nothing a click does not reach changes, ids included (users match them across rounds of corrections): a
    clicked nucleus and the pieces a click cuts off an object get new ids above the largest before the clicks,
    and a removed object leaves a gap, so ids need not run 1..N afterwards.

    Positive clicks closer than ``SAME_CLICK_DISTANCE`` (at the model's scale) are one click: a double click is
    one nucleus, not two halves. With the automatic ``probability`` map, an answer where the model sees no
    nucleus at all (a click on background) is added, as asked, with a warning. ``earlier`` are the positive
    clicks of earlier rounds, whose nuclei ``labels`` holds: new positive clicks keep apart from them as from
    each other.
    """
    labels = np.array(labels, np.int32)  # a copy, with room for new ids
    next_id = int(labels.max(initial=0)) + 1  # above every id before the clicks, even one a click removes
    positive_pixels, negative_pixels = clicks_pixels((positive, negative), labels.shape)
    for row, col in negative_pixels:
        if labels[row, col]:
            labels[labels == labels[row, col]] = 0
    if len(positive_pixels):  # negative clicks alone need no model and no resampling
        seen, seen_labels, seen_centre, seen_clicks = at_model_scale(
            zoom, image, labels, centre, (positive, negative, earlier)
        )
        clicks, negatives, earlier_clicks = clicks_pixels(seen_clicks, seen_labels.shape)
        distinct = _distinct_clicks(clicks)
        if len(distinct) < len(clicks):
            warnings.warn(
                f"{len(clicks) - len(distinct)} positive click(s) within {SAME_CLICK_DISTANCE:g} px of an earlier "
                "one taken as the same click (each positive click marks one nucleus)",
                stacklevel=2,
            )
            clicks, positive_pixels = clicks[distinct], positive_pixels[distinct]
        answers = segment_at_points(
            model,
            seen,
            clicks,
            click_negatives(
                seen_labels,
                clicks,
                np.concatenate([negatives, earlier_clicks]),  # SAM's negatives only: nothing is removed
                model.config,
                seen_centre,
                positives_apart=True,
            ),
        )
        for (row, col), answer in zip(positive_pixels, answers, strict=True):
            if answer is None:
                warnings.warn(f"SAM found no nucleus under the click ({col}, {row})", stacklevel=2)
                continue
            rows, cols = resample_pixels(answer.rows, answer.cols, seen_labels.shape, labels.shape)
            seen_there = None if probability is None else float(probability[rows, cols].mean())
            if seen_there is not None and seen_there < CLICK_BACKGROUND_PROBABILITY:
                warnings.warn(
                    f"the positive click ({col}, {row}) added an object where the model sees no nucleus (mean "
                    f"probability {seen_there:.1g}): is the click on a nucleus?",
                    stacklevel=2,
                )
            covered = np.unique(labels[rows, cols])
            labels[rows, cols] = next_id
            next_id = split_remnants(labels, covered[covered > 0], next_id + 1, REMNANT_DEPTH / zoom)
    return labels


# px at the model's scale: what an answer leaves of an object with no pixel deeper than this is a sliver of its rim
REMNANT_DEPTH = 2.0
# px at the model's scale (1 µm for the nuclei model): positive clicks closer than this are one (a double click);
# two nuclei's centres lie farther apart than the smallest nucleus's diameter (about 2 µm)
SAME_CLICK_DISTANCE = 4.0
# below this mean automatic probability under a click's answer, the model saw no nucleus there at all (missed
# nuclei the clicks are for score 0.05-0.3; background 1e-5)
CLICK_BACKGROUND_PROBABILITY = 0.01


def _distinct_clicks(clicks: np.ndarray) -> np.ndarray:
    """Indices of the clicks ((row, column), in order) that lie ``SAME_CLICK_DISTANCE`` or more from every
    earlier one kept."""
    kept: list[int] = []
    for index, click in enumerate(clicks):
        if all(np.hypot(*(click - clicks[other])) >= SAME_CLICK_DISTANCE for other in kept):
            kept.append(index)
    return np.asarray(kept, np.int64)


def split_remnants(
    labels: np.ndarray, ids: np.ndarray, next_id: int, min_depth: float = REMNANT_DEPTH
) -> int:
    """In place: what a click's answer left of the objects ``ids`` it covered. Slivers (no pixel deeper than
    ``min_depth`` px) become background; the largest other piece keeps its object's id, each further piece gets
    the next new id from ``next_id``. Returns the first id still unused.

    A click on a nucleus the automatic pass found re-outlines it, leaving a frayed rim of the old object (on
    validation, about 7 pieces a click); a click on a merge leaves its other nuclei, which stay objects.
    """
    for label in ids:
        box = ndimage.find_objects((labels == label).astype(np.int8))
        if not box:
            continue
        window = labels[box[0]]
        pieces, count = ndimage.label(window == label)
        depth = ndimage.distance_transform_edt(np.pad(pieces > 0, 1))[1:-1, 1:-1]
        deepest = ndimage.maximum(depth, pieces, np.arange(1, count + 1))
        kept = [piece for piece, piece_depth in enumerate(deepest, 1) if piece_depth > min_depth]
        window[(pieces > 0) & ~np.isin(pieces, kept)] = 0
        sizes = np.bincount(pieces.ravel())
        for piece in sorted(kept, key=lambda piece: -sizes[piece])[1:]:
            window[pieces == piece] = next_id
            next_id += 1
    return next_id


# a positive click on an object: the object's centre-map maxima at or above MERGE_PEAK_THRESHOLD are other nuclei
# when the map dips MERGE_VALLEY_DEPTH or more between the click and them (chosen on validation, RESULTS.md)
MERGE_PEAK_THRESHOLD = 0.1
MERGE_VALLEY_DEPTH = 0.1


def click_negatives(
    labels: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    config: SACConfig,
    centre: np.ndarray | None = None,
    positives_apart: bool = False,
) -> np.ndarray:
    """(N, MAX_CLICK_NEGATIVES, 2) (row, column) negatives for each positive click (-1: unused): the user's
    negative clicks within its window (with ``positives_apart``, the user's other positive clicks there too: two
    clicks mark two nuclei), then the peaks of other nuclei ``centre`` shows in the object under it (see
    :func:`merged_neighbours`).

    Not the centres of the nearest other objects: on validation they lowered both the IoU of a click's answer
    and the share of missed nuclei a click recovers (benchmarks/RESULTS.md)."""
    negatives = np.full((len(positive), MAX_CLICK_NEGATIVES, 2), -1)
    for index, (row, col) in enumerate(positive):
        others = (
            np.concatenate([negative, np.delete(positive, index, axis=0)]) if positives_apart else negative
        )
        near = others[np.abs(others - (row, col)).max(axis=1) < config.instance_window // 2]
        merged = (
            merged_neighbours(labels, centre, row, col)
            if centre is not None and labels[row, col]
            else np.zeros((0, 2), np.int64)
        )
        chosen = np.concatenate([near, merged])[:MAX_CLICK_NEGATIVES]
        negatives[index, : len(chosen)] = chosen
    return negatives


def merged_neighbours(labels: np.ndarray, centre: np.ndarray, row: int, col: int) -> np.ndarray:
    """(K, 2) (row, column) peaks, nearest first, of the other nuclei the centre map shows in the object under a
    click: its local maxima at or above ``MERGE_PEAK_THRESHOLD`` from which a valley at least
    ``MERGE_VALLEY_DEPTH`` deep parts the click.

    A positive click on an object most often marks a merge the automatic pass did not split; given the other
    nuclei as negatives, SAM answers with the clicked nucleus rather than the merged whole. The valley spares a
    nucleus's own lesser maxima (large pale nuclei have several), so a click anywhere inside a nucleus keeps it.
    """
    box = ndimage.find_objects((labels == labels[row, col]).astype(np.int8))[0]
    inside = labels[box] == labels[row, col]
    relief = np.asarray(centre[box], np.float32)
    peaks = measure.label(
        morphology.local_maxima(relief, allow_borders=True) & inside & (relief >= MERGE_PEAK_THRESHOLD)
    )
    found = np.stack(
        np.unravel_index(peak_pixels(relief, peaks, np.arange(1, peaks.max() + 1)), relief.shape), 1
    ).reshape(-1, 2)
    click = np.array([row - box[0].start, col - box[1].start])
    parted = np.array([valley_between(relief, click, peak) >= MERGE_VALLEY_DEPTH for peak in found], bool)
    found = found[parted]
    order = np.argsort(((found - click) ** 2).sum(1), kind="stable")
    return found[order] + (box[0].start, box[1].start)


def valley_between(relief: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """How deep ``relief`` dips on the straight line from ``start`` to ``end`` (row, column): the most, over its
    pixels, by which one lies below the lower of the highest points before and after it."""
    steps = int(np.abs(end - start).max()) + 1
    t = np.linspace(0, 1, max(steps, 2))[:, None]
    rows, cols = np.round(start + t * (end - start)).astype(int).T
    line = relief[rows, cols]
    before, after = np.maximum.accumulate(line), np.maximum.accumulate(line[::-1])[::-1]
    return float((np.minimum(before, after) - line).max())


def _paint(candidates: list[NucleusMask], points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Paint masks in rising score order, then drop pieces cut off from their own click by a better mask."""
    out = np.zeros(shape, np.int32)
    for nucleus in sorted(range(len(candidates)), key=lambda index: candidates[index].score):
        out[candidates[nucleus].rows, candidates[nucleus].cols] = nucleus + 1
    pieces = measure.label(out)
    rows, cols = points.T
    own = out[rows, cols] == np.arange(1, len(points) + 1)
    out[~np.isin(pieces, pieces[rows[own], cols[own]])] = 0
    return segmentation.relabel_sequential(out)[0].astype(np.int32)
