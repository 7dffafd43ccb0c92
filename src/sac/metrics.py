"""Segmentation metrics used in the nuclei-segmentation literature.

Every instance metric works from one sparse overlap table of (true id, predicted id) pixel counts, so an
image with hundreds of nuclei costs a couple of sorts rather than one mask comparison per pair. Empty
ground truth with an empty prediction is a perfect result: every metric is 1.0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.metrics import hausdorff_distance

from sac.io import InputError

METRICS = ("dice", "iou", "aji", "dq", "sq", "pq", "precision", "recall", "f1")
COUNTS = ("fg_intersection", "fg_total", "fg_union", "n_true", "n_pred")


def check_labels(labels: np.ndarray, name: str = "labels", mask: bool = False) -> np.ndarray:
    """Return ``labels`` as an array, rejecting float or negative ids that would corrupt id bookkeeping, and a
    boolean mask where objects are counted (unless ``mask``): as labels it would be a single object."""
    labels = np.asarray(labels)
    if labels.dtype == bool and not mask:
        raise InputError(
            f"{name} are a boolean mask, which would count as one object: give instance labels "
            "(predict with instances=True, or skimage.measure.label the mask)"
        )
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name} must be an integer label image or boolean mask, got dtype {labels.dtype}")
    if labels.dtype != bool and labels.size and labels.min() < 0:
        raise InputError(f"{name} has negative ids; use 0 for background and positive ids for nuclei")
    return labels


def _check_pair(
    true_labels: np.ndarray, pred_labels: np.ndarray, masks: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    true_labels = check_labels(true_labels, "true labels", masks)
    pred_labels = check_labels(pred_labels, "predicted labels", masks)
    if true_labels.shape != pred_labels.shape:
        raise InputError(f"shape mismatch: true labels {true_labels.shape} vs predicted {pred_labels.shape}")
    return true_labels, pred_labels


def _ratio(numerator: float, denominator: float, empty: float = 1.0) -> float:
    """Divide, returning ``empty`` when there was nothing to measure."""
    return float(numerator / denominator) if denominator else empty


def _foreground_counts(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[int, int]:
    """Intersection and summed size of the two foregrounds: enough to pool dice and IoU over a dataset."""
    true_fg, pred_fg = true_labels > 0, pred_labels > 0
    total = np.count_nonzero(true_fg) + np.count_nonzero(pred_fg)
    return int(np.count_nonzero(true_fg & pred_fg)), int(total)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of the foregrounds (any id > 0; masks or labels)."""
    inter, total = _foreground_counts(*_check_pair(target, pred, masks=True))
    return _ratio(2 * inter, total)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of the foregrounds (any id > 0; masks or labels)."""
    inter, total = _foreground_counts(*_check_pair(target, pred, masks=True))
    return _ratio(inter, total - inter)


@dataclass(frozen=True)
class _Overlap:
    """Nucleus areas and pixel counts of every overlapping (true, pred) pair, in compact 0-based indices."""

    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def pair_union(self) -> np.ndarray:
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        return self.pair_inter / self.pair_union


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids onto 0..n keeping 0 as background, so gaps or huge ids cost nothing downstream."""
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    has_background = bool(ids.size and ids[0] == 0)
    return inverse.astype(np.int64) + (not has_background), ids.size - int(has_background)


def _overlap(true_labels: np.ndarray, pred_labels: np.ndarray) -> _Overlap:
    true_idx, n_true = _compact(true_labels)
    pred_idx, n_pred = _compact(pred_labels)
    both = (true_idx > 0) & (pred_idx > 0)
    keys, inter = np.unique(true_idx[both] * (n_pred + 1) + pred_idx[both], return_counts=True)
    return _Overlap(
        true_area=np.bincount(true_idx, minlength=n_true + 1)[1:],
        pred_area=np.bincount(pred_idx, minlength=n_pred + 1)[1:],
        pair_true=keys // (n_pred + 1) - 1,
        pair_pred=keys % (n_pred + 1) - 1,
        pair_inter=inter,
    )


def _aji(ov: _Overlap) -> float:
    # Best IoU partner per true nucleus; lexsort is stable so exact IoU ties go to the lowest predicted id.
    # (HoVer-Net's get_fast_aji divides by union + 1e-6, which sends such a tie to the larger overlap instead;
    # Kumar et al. leave ties open. An exact tie is rare: about 1 in 1650 random cases of an audit.)
    iou = ov.pair_iou
    order = np.lexsort((-iou, ov.pair_true))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.pair_true[order[1:]] != ov.pair_true[order[:-1]]
    best = order[first]
    used_pred = np.unique(ov.pair_pred[best])
    unmatched_true = ov.true_area.sum() - ov.true_area[ov.pair_true[best]].sum()
    unused_pred = ov.pred_area.sum() - ov.pred_area[used_pred].sum()
    union = ov.pair_union[best].sum() + unmatched_true + unused_pred
    return _ratio(ov.pair_inter[best].sum(), union)


def _match(ov: _Overlap, iou_threshold: float, strict: bool) -> np.ndarray:
    """Indices of one-to-one matched pairs, maximising total IoU where candidates compete for a nucleus."""
    if not 0 <= iou_threshold <= 1:
        raise InputError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    iou = ov.pair_iou
    candidates = np.flatnonzero(iou > iou_threshold if strict else iou >= iou_threshold)
    _, true_inv, true_count = np.unique(ov.pair_true[candidates], return_inverse=True, return_counts=True)
    _, pred_inv, pred_count = np.unique(ov.pair_pred[candidates], return_inverse=True, return_counts=True)
    free = (true_count[true_inv] == 1) & (pred_count[pred_inv] == 1)
    contested = candidates[~free]
    if contested.size == 0:  # IoU > 0.5 guarantees this: no nucleus has two candidates
        return candidates
    rows, row_inv = np.unique(ov.pair_true[contested], return_inverse=True)
    cols, col_inv = np.unique(ov.pair_pred[contested], return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    weight[row_inv, col_inv] = iou[contested]
    pair_index = np.full(weight.shape, -1)
    pair_index[row_inv, col_inv] = contested
    chosen = pair_index[linear_sum_assignment(weight, maximize=True)]
    return np.concatenate([candidates[free], chosen[chosen >= 0]])


def _panoptic(ov: _Overlap, iou_threshold: float) -> dict[str, float]:
    matched = _match(ov, iou_threshold, strict=True)
    n_objects = ov.true_area.size + ov.pred_area.size
    dq = _ratio(2 * matched.size, n_objects)
    sq = _ratio(ov.pair_iou[matched].sum(), matched.size, empty=float(n_objects == 0))
    return {"dq": dq, "sq": sq, "pq": dq * sq}


def _detection(ov: _Overlap, iou_threshold: float) -> dict[str, float]:
    tp = _match(ov, iou_threshold, strict=False).size
    n_true, n_pred = ov.true_area.size, ov.pred_area.size
    return {
        "precision": _ratio(tp, n_pred, empty=float(n_true == 0)),
        "recall": _ratio(tp, n_true, empty=float(n_pred == 0)),
        "f1": _ratio(2 * tp, n_true + n_pred),
    }


def aggregated_jaccard_index(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """AJI (Kumar et al. 2017): penalises both split and merged nuclei, unlike pixel-level IoU.

    Each true nucleus is paired with its best-IoU prediction (a prediction may serve several); true nuclei
    with no overlap and predictions never chosen add their whole area to the union.
    """
    return _aji(_overlap(*_check_pair(true_labels, pred_labels)))


def panoptic_quality(
    true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Detection quality, segmentation quality and their product (Kirillov et al. 2019).

    Matches need IoU strictly above the threshold; at 0.5 or more they are unique by construction.
    """
    return _panoptic(_overlap(*_check_pair(true_labels, pred_labels)), iou_threshold)


def object_f1(
    true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Object-level precision, recall and F1 with one-to-one matches at IoU >= ``iou_threshold``."""
    return _detection(_overlap(*_check_pair(true_labels, pred_labels)), iou_threshold)


def evaluate_image(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """Every metric for one image plus the raw counts :func:`summarize` pools over a dataset."""
    true_labels, pred_labels = _check_pair(true_labels, pred_labels)
    inter, total = _foreground_counts(true_labels, pred_labels)
    ov = _overlap(true_labels, pred_labels)
    return {
        "dice": _ratio(2 * inter, total),
        "iou": _ratio(inter, total - inter),
        "aji": _aji(ov),
        **_panoptic(ov, 0.5),
        **_detection(ov, 0.5),
        "fg_intersection": inter,
        "fg_total": total,
        "fg_union": total - inter,
        "n_true": ov.true_area.size,
        "n_pred": ov.pred_area.size,
    }


def summarize(per_image: list[dict]) -> dict[str, float]:
    """Per-image means of every metric, and dice/IoU pooled over all pixels so large images weigh more."""
    if not per_image:
        raise InputError("no per-image results to summarize")
    missing = sorted({key for result in per_image for key in (*METRICS, *COUNTS) if key not in result})
    if missing:
        raise InputError(f"per-image results lack {', '.join(missing)}; build them with evaluate_image")
    sums = {key: sum(result[key] for result in per_image) for key in COUNTS}
    return {
        "n_images": len(per_image),
        **{key: float(np.mean([result[key] for result in per_image])) for key in METRICS},
        "pooled_dice": _ratio(2 * sums["fg_intersection"], sums["fg_total"]),
        "pooled_iou": _ratio(sums["fg_intersection"], sums["fg_union"]),
    }


def _best_pairs(owner: np.ndarray, partner: np.ndarray, inter: np.ndarray, n_owner: int) -> np.ndarray:
    """Overlap-table row of each object's largest overlap, -1 for objects that overlap nothing.

    Ties go to the lowest partner id, like MATLAB's ``mode`` in the challenge's evaluation code.
    """
    order = np.lexsort((partner, -inter, owner))
    owners, first = np.unique(owner[order], return_index=True)
    best = np.full(n_owner, -1)
    best[owners] = order[first]
    return best


def _weighted_dice(
    best: np.ndarray, area: np.ndarray, other_area: np.ndarray, pair_other: np.ndarray, inter: np.ndarray
) -> float:
    """Sum over objects of area times Dice with the largest-overlap partner (0 without one)."""
    found = best >= 0
    dice_per_object = np.zeros(area.size)
    rows = best[found]
    dice_per_object[found] = 2 * inter[rows] / (area[found] + other_area[pair_other[rows]])
    return float(np.sum(area * dice_per_object))


def _object_hausdorff(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    ov: _Overlap,
    true_best: np.ndarray,
    pred_best: np.ndarray,
) -> tuple[float, float]:
    """GlaS object Hausdorff: each object against its largest-overlap partner, else its nearest one; the
    area-weighted sums of the ground truth's side and of the segmentation's.

    Distances are exact, between all pixels of the two objects, cropped to the pair's bounding box (which
    holds every pixel of both, so nothing changes). Restricting to boundary pixels is not exact: the pixel
    of one object farthest from the other can be interior, e.g. in the lumen of a ring-shaped partner.
    """
    true_idx = _compact(true_labels)[0].reshape(true_labels.shape)
    pred_idx = _compact(pred_labels)[0].reshape(pred_labels.shape)
    true_boxes, pred_boxes = ndi.find_objects(true_idx), ndi.find_objects(pred_idx)

    @functools.cache
    def distance(t: int, p: int) -> float:
        box = tuple(
            slice(min(a.start, b.start), max(a.stop, b.stop))
            for a, b in zip(true_boxes[t], pred_boxes[p], strict=True)
        )
        return float(hausdorff_distance(true_idx[box] == t + 1, pred_idx[box] == p + 1))

    def nearest(i: int, own: list, others: np.ndarray, dist: Callable[[int, int], float]) -> float:
        """The least Hausdorff distance from object ``i`` to any other (``others``: their boxes' (start, stop)
        per axis), exact: candidates are tried nearest box first, and the search stops once the gap between
        boxes, a lower bound of the distance, reaches the best found (an image of hundreds of glands would
        otherwise compare every pair)."""
        starts, stops = others[..., 0], others[..., 1]
        mine = own[i]
        gaps = np.maximum(
            0, np.maximum(starts - [b.stop - 1 for b in mine], [b.start for b in mine] - (stops - 1))
        )
        bounds = np.hypot(gaps[:, 0], gaps[:, 1])
        best = float("inf")
        for j in np.argsort(bounds, kind="stable"):
            if bounds[j] >= best:
                break
            best = min(best, dist(i, int(j)))
        return best

    def side(
        best: np.ndarray,
        pair_other: np.ndarray,
        area: np.ndarray,
        boxes: tuple[list, list],
        dist: Callable[[int, int], float],
    ) -> float:
        own, others = boxes[0], np.array([[(box.start, box.stop) for box in bounds] for bounds in boxes[1]])
        per_object = [
            dist(i, pair_other[row]) if row >= 0 else nearest(i, own, others, dist)
            for i, row in enumerate(best)
        ]
        return float(np.sum(area * np.array(per_object)))

    from_true = side(true_best, ov.pair_pred, ov.true_area, (true_boxes, pred_boxes), distance)
    from_pred = side(
        pred_best, ov.pair_true, ov.pred_area, (pred_boxes, true_boxes), lambda p, t: distance(t, p)
    )
    return from_true, from_pred


GLAND_COUNTS = (
    "true_positives",
    "n_true",
    "n_pred",
    "true_area",
    "pred_area",
    "true_dice_sum",
    "pred_dice_sum",
    "true_hausdorff_sum",
    "pred_hausdorff_sum",
)


def gland_counts(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """What the GlaS challenge's object metrics sum over the objects of one image (``GLAND_COUNTS``).

    A segmented gland is a true positive when it covers more than half of the ground-truth gland it overlaps
    most, which also makes matches one-to-one (two disjoint objects cannot both cover more than half). Each
    object, on both sides, is paired with its largest-overlap partner; its Dice and Hausdorff distance to it
    are summed weighted by its area (a Hausdorff partner without overlap is the nearest object instead; with
    no object on the other side the distance is infinite). :func:`pool_glands` turns sums into metrics.
    """
    truth, prediction = _check_pair(truth, prediction)
    ov = _overlap(truth, prediction)
    n_true, n_pred = ov.true_area.size, ov.pred_area.size
    true_best = _best_pairs(ov.pair_true, ov.pair_pred, ov.pair_inter, n_true)
    pred_best = _best_pairs(ov.pair_pred, ov.pair_true, ov.pair_inter, n_pred)
    rows = pred_best[pred_best >= 0]
    if n_true and n_pred:
        hausdorff = _object_hausdorff(truth, prediction, ov, true_best, pred_best)
    else:  # nothing on the other side to measure a distance to
        hausdorff = (float("inf") if n_true else 0.0, float("inf") if n_pred else 0.0)
    return {
        "true_positives": int(np.count_nonzero(2 * ov.pair_inter[rows] > ov.true_area[ov.pair_true[rows]])),
        "n_true": n_true,
        "n_pred": n_pred,
        "true_area": int(ov.true_area.sum()),
        "pred_area": int(ov.pred_area.sum()),
        "true_dice_sum": _weighted_dice(true_best, ov.true_area, ov.pred_area, ov.pair_pred, ov.pair_inter),
        "pred_dice_sum": _weighted_dice(pred_best, ov.pred_area, ov.true_area, ov.pair_true, ov.pair_inter),
        "true_hausdorff_sum": hausdorff[0],
        "pred_hausdorff_sum": hausdorff[1],
    }


def pool_glands(counts: list[dict]) -> dict[str, float]:
    """The GlaS challenge's object F1, precision, recall, Dice and Hausdorff of a set of images, from their
    :func:`gland_counts`.

    As the challenge defines them, the object metrics pool every object of the set: true positives are counted
    over all images, and each object's Dice and Hausdorff distance weigh by its share of the area of all
    objects of its side. With no objects on either side every score is perfect (Hausdorff 0); with objects on
    one side only, F1 and Dice are 0 and the Hausdorff distance is infinite.
    """
    sums = {key: sum(count[key] for count in counts) for key in GLAND_COUNTS}
    tp, n_true, n_pred = sums["true_positives"], sums["n_true"], sums["n_pred"]
    if n_true and n_pred:
        object_dice = (
            sums["true_dice_sum"] / sums["true_area"] + sums["pred_dice_sum"] / sums["pred_area"]
        ) / 2
        hausdorff = (
            sums["true_hausdorff_sum"] / sums["true_area"] + sums["pred_hausdorff_sum"] / sums["pred_area"]
        ) / 2
    else:
        object_dice, hausdorff = (1.0, 0.0) if n_true == n_pred else (0.0, float("inf"))
    return {
        "object_f1": _ratio(2 * tp, n_true + n_pred),
        "object_precision": _ratio(tp, n_pred, empty=float(n_true == 0)),
        "object_recall": _ratio(tp, n_true, empty=float(n_pred == 0)),
        "object_dice": object_dice,
        "object_hausdorff": hausdorff,
    }


def gland_metrics(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """GlaS challenge metrics (Sirinukunwattana et al. 2017) for one image, plus pixel Dice and IoU.

    Follows the challenge's evaluation code (see :func:`gland_counts`); a test set's figures pool its images'
    counts (:func:`pool_glands`), which is not the mean of the images' figures.
    """
    return pool_glands([gland_counts(truth, prediction)]) | {  # each checks its inputs
        "dice": dice(prediction, truth),
        "iou": iou(prediction, truth),
    }
