"""Metrics: hand-computed cases, a brute-force AJI oracle and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.draw import disk

from sac.io import InputError
from sac.metrics import (
    METRICS,
    aggregated_jaccard_index,
    dice,
    evaluate_image,
    gland_counts,
    gland_metrics,
    iou,
    object_f1,
    panoptic_quality,
    pool_glands,
    summarize,
)


def _image(*boxes: tuple[int, int, int, int, int], shape: tuple[int, int] = (6, 8)) -> np.ndarray:
    """Label image from (id, row0, row1, col0, col1) boxes."""
    labels = np.zeros(shape, dtype=np.int32)
    for label, r0, r1, c0, c1 in boxes:
        labels[r0:r1, c0:c1] = label
    return labels


def _check(true: np.ndarray, pred: np.ndarray, expected: dict[str, float]) -> None:
    result = evaluate_image(true, pred)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


def test_squares_shifted_by_one_pixel():
    # Two 2x2 squares, the prediction one column to the right: intersection 2, union 6, sizes 4 + 4.
    # dice = 2*2/8 = 0.5, iou = AJI = 2/6; IoU 1/3 is below 0.5 so nothing matches.
    true, pred = _image((1, 0, 2, 0, 2)), _image((1, 0, 2, 1, 3))
    zeros = dict.fromkeys(("dq", "sq", "pq", "precision", "recall", "f1"), 0.0)
    _check(true, pred, {"dice": 0.5, "iou": 1 / 3, "aji": 1 / 3, **zeros})
    assert dice(pred, true) == 0.5
    assert iou(pred, true) == pytest.approx(1 / 3)
    # At a 0.3 threshold the pair matches: one true positive, nothing else.
    assert object_f1(true, pred, iou_threshold=0.3) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    expected = {"dq": 1, "sq": 1 / 3, "pq": 1 / 3}
    assert panoptic_quality(true, pred, iou_threshold=0.3) == pytest.approx(expected)


def test_split_nucleus():
    # A 2x4 nucleus (area 8) predicted as two 2x2 halves: pixels are perfect, objects are not.
    # AJI: both halves have IoU 4/8 (tie -> lower id 1): I = 4, U = 8, unused half adds 4 -> 4/12.
    # PQ needs IoU > 0.5: no match. F1 accepts IoU >= 0.5 but only one half may match:
    # precision 1/2, recall 1/1, f1 = 2*1/(1+2) = 2/3.
    true = _image((1, 0, 2, 0, 4))
    pred = _image((1, 0, 2, 0, 2), (2, 0, 2, 2, 4))
    expected = {"dice": 1, "iou": 1, "aji": 1 / 3, "dq": 0, "sq": 0, "pq": 0}
    _check(true, pred, {**expected, "precision": 0.5, "recall": 1, "f1": 2 / 3})


def test_merged_prediction():
    # Two touching 2x2 nuclei predicted as one 2x4 object: each true nucleus picks it with IoU 4/8,
    # the prediction is reused, so AJI = (4 + 4)/(8 + 8) = 0.5. F1: precision 1/1, recall 1/2.
    true = _image((1, 0, 2, 0, 2), (2, 0, 2, 2, 4))
    pred = _image((5, 0, 2, 0, 4))
    expected = {"dice": 1, "iou": 1, "aji": 0.5, "dq": 0, "sq": 0, "pq": 0}
    _check(true, pred, {**expected, "precision": 1, "recall": 0.5, "f1": 2 / 3})


def test_missing_prediction():
    # Two separate 2x2 nuclei, only the first predicted (exactly).
    # dice = 2*4/(8+4) = 2/3, iou = 4/8; AJI = 4/(4 + 4 unmatched) = 0.5;
    # TP 1, FN 1: dq = 1/(1 + 0.5) = 2/3, sq = 1, pq = 2/3; precision 1, recall 1/2, f1 2/3.
    true = _image((1, 0, 2, 0, 2), (2, 3, 5, 4, 6))
    pred = _image((1, 0, 2, 0, 2))
    expected = {"dice": 2 / 3, "iou": 0.5, "aji": 0.5, "dq": 2 / 3, "sq": 1, "pq": 2 / 3}
    _check(true, pred, {**expected, "precision": 1, "recall": 0.5, "f1": 2 / 3})


def test_false_positive_and_partial_overlap():
    # True 3x3 (area 9); prediction a 3x2 part of it (IoU 6/9) plus a 1x2 false positive elsewhere.
    # dice = 2*6/(9 + 8) = 12/17, iou = 6/11; AJI = 6/(9 + 2 unused) = 6/11;
    # TP 1, FP 1: dq = 1/1.5 = 2/3, sq = 2/3, pq = 4/9; precision 1/2, recall 1, f1 2/3.
    true = _image((1, 0, 3, 0, 3))
    pred = _image((1, 0, 3, 0, 2), (2, 5, 6, 6, 8))
    expected = {"dice": 12 / 17, "iou": 6 / 11, "aji": 6 / 11, "dq": 2 / 3, "sq": 2 / 3, "pq": 4 / 9}
    _check(true, pred, {**expected, "precision": 0.5, "recall": 1, "f1": 2 / 3})


def test_empty_conventions():
    empty, nucleus = _image(), _image((1, 0, 2, 0, 2))
    _check(empty, empty, dict.fromkeys(METRICS, 1.0))
    _check(empty, nucleus, dict.fromkeys(METRICS, 0.0))
    _check(nucleus, empty, dict.fromkeys(METRICS, 0.0))


def test_id_gaps_and_dtypes_do_not_matter():
    true = _image((1, 0, 2, 0, 2), (2, 3, 5, 4, 6))
    pred = _image((1, 0, 2, 0, 3), (2, 3, 6, 4, 6))
    gappy_true = np.where(true == 2, 4_000_000_000, true * 7).astype(np.uint32)
    gappy_pred = (pred.astype(np.uint64) * 2**40).astype(np.uint64)
    assert evaluate_image(gappy_true, gappy_pred) == pytest.approx(evaluate_image(true, pred))


def test_boolean_masks_have_pixel_scores_but_no_objects():
    true = np.zeros((4, 4), dtype=bool)
    true[:2, :2] = True
    pred = np.roll(true, 1, axis=1)
    assert dice(pred, true) == 0.5 and iou(pred, true) == pytest.approx(1 / 3)
    # a mask of many nuclei would be scored as one object: AJI near 0 and PQ 0, with no word of why
    for score in (aggregated_jaccard_index, panoptic_quality, object_f1, evaluate_image, gland_metrics):
        with pytest.raises(InputError, match="boolean mask, which would count as one object"):
            score(true.astype(int), pred)
    with pytest.raises(InputError, match="true labels are a boolean mask"):
        evaluate_image(true, pred.astype(int))


@pytest.mark.parametrize(
    ("true", "pred", "message"),
    [
        (np.zeros((3, 3), int), np.zeros((3, 4), int), "shape mismatch"),
        (np.zeros((3, 3), float), np.zeros((3, 3), int), "dtype float64"),
        (np.full((3, 3), -1), np.zeros((3, 3), int), "negative"),
    ],
)
def test_bad_input(true, pred, message):
    with pytest.raises(InputError, match=message):
        evaluate_image(true, pred)


def test_bad_threshold():
    with pytest.raises(InputError, match="iou_threshold"):
        object_f1(np.zeros((2, 2), int), np.zeros((2, 2), int), iou_threshold=1.5)


def test_summarize_means_and_pooled_counts():
    # Image A: shifted squares (I 2, sizes 8, union 6). Image B: a perfect 4x4 (I 16, sizes 32, union 16).
    # Mean dice (0.5 + 1)/2 = 0.75; pooled dice 2*18/40 = 0.9; pooled iou 18/22.
    a = evaluate_image(_image((1, 0, 2, 0, 2)), _image((1, 0, 2, 1, 3)))
    b = evaluate_image(_image((1, 0, 4, 0, 4)), _image((3, 0, 4, 0, 4)))
    summary = summarize([a, b])
    assert summary["n_images"] == 2
    assert summary["dice"] == pytest.approx(0.75)
    assert summary["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["pq"] == pytest.approx(0.5)
    assert summary["pooled_dice"] == pytest.approx(0.9)
    assert summary["pooled_iou"] == pytest.approx(18 / 22)


def test_summarize_bad_input():
    with pytest.raises(InputError, match="no per-image"):
        summarize([])
    with pytest.raises(InputError, match="aji"):
        summarize([{"dice": 1.0}])


def _pairwise(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dense intersection / union tables by explicit mask comparison: slow but obviously right."""
    true_ids, pred_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    inter = np.array([[np.sum((true == t) & (pred == p)) for p in pred_ids] for t in true_ids])
    union = np.array([[np.sum((true == t) | (pred == p)) for p in pred_ids] for t in true_ids])
    shape = (true_ids.size, pred_ids.size)  # np.array of an empty list loses the second axis
    return true_ids, pred_ids, inter.reshape(shape), union.reshape(shape)


def _reference_aji(true: np.ndarray, pred: np.ndarray) -> float:
    true_ids, pred_ids, inter, union = _pairwise(true, pred)
    numerator, denominator, used = 0, 0, set()
    for i, t in enumerate(true_ids):
        if pred_ids.size and inter[i].max() > 0:
            j = int(np.argmax(inter[i] / union[i]))
            numerator, denominator = numerator + inter[i, j], denominator + union[i, j]
            used.add(j)
        else:
            denominator += np.sum(true == t)
    denominator += sum(np.sum(pred == p) for j, p in enumerate(pred_ids) if j not in used)
    return numerator / denominator if denominator else 1.0


def test_aji_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        true = rng.integers(0, 5, size=(10, 10))
        pred = rng.integers(0, 6, size=(10, 10)) * (rng.random((10, 10)) > 0.3)
        assert aggregated_jaccard_index(true, pred) == pytest.approx(_reference_aji(true, pred))


def _disks(rng: np.random.Generator, shape: tuple[int, int], count: int, jitter: int) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for label, (row, col) in enumerate(rng.integers(12, shape[0] - 12, size=(count, 2)), start=1):
        rr, cc = disk((row + rng.integers(-jitter, jitter + 1), col), rng.integers(5, 10), shape=shape)
        labels[rr, cc] = label
    return labels


def test_large_image_with_many_nuclei():
    # 1000x1000 with 800 disks: exercises the sparse overlap table; perfect relabelled prediction scores 1.
    rng = np.random.default_rng(1)
    true = _disks(rng, (1000, 1000), 800, 0)
    pred = np.concatenate([[0], rng.permutation(true.max()) + 1])[true]
    result = evaluate_image(true, pred)
    assert all(result[key] == pytest.approx(1.0) for key in METRICS)


label_images = arrays(np.int32, (6, 6), elements=st.integers(0, 4))
pairs = st.tuples(label_images, label_images)
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(pairs)
def test_metrics_are_bounded(pair):
    result = evaluate_image(*pair)
    assert all(0.0 <= result[key] <= 1.0 for key in METRICS)


@fast
@given(pairs)
def test_dice_and_iou_are_symmetric(pair):
    true, pred = pair
    assert dice(true, pred) == dice(pred, true)
    assert iou(true, pred) == iou(pred, true)


@fast
@given(label_images)
def test_perfect_prediction_scores_one(labels):
    result = evaluate_image(labels, labels)
    assert all(result[key] == pytest.approx(1.0) for key in METRICS)


def _has_best_iou_tie(true: np.ndarray, pred: np.ndarray) -> bool:
    """Whether some true nucleus has two equally good predictions, where AJI legitimately depends on ids."""
    _, _, inter, union = _pairwise(true, pred)
    ratio = inter / np.maximum(union, 1)
    return any(row.size and row.max() > 0 and np.sum(row == row.max()) > 1 for row in ratio)


@fast
@given(pairs, st.randoms(use_true_random=False))
def test_relabelling_gives_identical_metrics(pair, random):
    true, pred = pair
    true_perm, pred_perm = np.arange(5), np.arange(5)
    random.shuffle(true_perm[1:])
    random.shuffle(pred_perm[1:])
    before = evaluate_image(true, pred)
    after = evaluate_image(true_perm[true] * 3, pred_perm[pred] + 10 * (pred > 0))
    for key in before:
        if key != "aji" or not _has_best_iou_tie(true, pred):
            assert math.isclose(before[key], after[key], rel_tol=1e-12), key


GLAND_KEYS = (
    "object_f1",
    "object_precision",
    "object_recall",
    "object_dice",
    "object_hausdorff",
    "dice",
    "iou",
)


def _glands(*values: float) -> dict[str, float]:
    """Expected :func:`gland_metrics` result, values in ``GLAND_KEYS`` order."""
    return dict(zip(GLAND_KEYS, values, strict=True))


def test_glands_perfect_prediction_with_gappy_ids():
    true = _image((1, 0, 2, 0, 2), (2, 3, 5, 4, 7))
    pred = np.where(true == 1, 900, true * 5).astype(np.uint16)
    assert gland_metrics(true, pred) == pytest.approx(_glands(1, 1, 1, 1, 0, 1, 1))


def test_glands_missing_one():
    # True A 2x2 (area 4) and B 3x3 (area 9); only A predicted, exactly. TP 1, FN 1: f1 2/3.
    # Object dice: truth side 4/13 * 1 + 9/13 * 0, prediction side 1 -> (4/13 + 1)/2 = 17/26.
    # Hausdorff: B overlaps nothing, so it is paired with the nearest prediction, A, whose farthest
    # pixels are (5, 7) and (1, 1): sqrt(4^2 + 6^2) = sqrt(52), weighted 9/13 and halved.
    true = _image((1, 0, 2, 0, 2), (2, 3, 6, 5, 8))
    pred = _image((1, 0, 2, 0, 2))
    expected = _glands(2 / 3, 1, 0.5, 17 / 26, 9 * math.sqrt(52) / 26, 8 / 17, 4 / 13)
    assert gland_metrics(true, pred) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        # Halves of 4 pixels cover exactly, not more than, half of the gland: no TP, 2 FP, 1 FN.
        # Object dice 2*4/(8 + 4) = 2/3 on both sides; each half is 2 columns from the far end: H 2.
        (_image((1, 0, 2, 0, 2), (2, 0, 2, 2, 4)), _glands(0, 0, 0, 2 / 3, 2, 1, 1)),
        # A 6-pixel part (TP, dice 2*6/14 = 6/7, H 1) and a 2-pixel part (FP, dice 2*2/10 = 2/5, H 3).
        # f1 = 2/(2 + 1 + 0); object dice (6/7 + 6/8 * 6/7 + 2/8 * 2/5)/2 = 4/5;
        # Hausdorff (1 + 6/8 * 1 + 2/8 * 3)/2 = 5/4.
        (_image((1, 0, 2, 0, 3), (2, 0, 2, 3, 4)), _glands(2 / 3, 0.5, 1, 0.8, 1.25, 1, 1)),
    ],
)
def test_glands_split_gland(pred, expected):
    assert gland_metrics(_image((1, 0, 2, 0, 4)), pred) == pytest.approx(expected)


def test_glands_shifted_square():
    # A 4x4 square moved by (1, 2): Hausdorff = |(1, 2)| = sqrt(5); overlap 3x2 = 6 of 16 is no TP.
    # Object dice = pixel dice = 2*6/32 = 3/8, iou 6/26.
    true = _image((1, 1, 5, 1, 5), shape=(8, 8))
    pred = _image((4, 2, 6, 3, 7), shape=(8, 8))
    assert gland_metrics(true, pred) == pytest.approx(_glands(0, 0, 0, 3 / 8, math.sqrt(5), 3 / 8, 3 / 13))


def test_glands_nearest_object_when_nothing_overlaps():
    # True A (top left) and B (top right); the prediction P, 3 rows below A, touches neither.
    # H(A, P) = 3, H(B, P) = |(3, 6)| = sqrt(45). Truth side (3 + sqrt(45))/2; P's nearest is A: 3.
    true = _image((1, 0, 2, 0, 2), (2, 0, 2, 6, 8))
    pred = _image((1, 3, 5, 0, 2))
    expected = _glands(0, 0, 0, 0, (9 + math.sqrt(45)) / 4, 0, 0)
    assert gland_metrics(true, pred) == pytest.approx(expected)


def test_glands_empty_conventions():
    empty, gland = _image(), _image((1, 0, 2, 0, 2))
    assert gland_metrics(empty, empty) == _glands(1, 1, 1, 1, 0, 1, 1)
    assert gland_metrics(gland, empty) == _glands(0, 0, 0, 0, math.inf, 0, 0)
    assert gland_metrics(empty, gland) == _glands(0, 0, 0, 0, math.inf, 0, 0)


def test_glands_pooled_over_a_set_as_the_challenge_counts_them():
    # Image 1: one 2x2 gland found exactly. Image 2: glands of 4, 9 and 6 pixels, only the first found exactly.
    # Per image F1 1 and 1/2 (mean 3/4); pooled: 2 TP of 4 true and 2 predicted glands, 4/6.
    # Pooled object Dice: truth side (4 + 4) of 23 pixels, prediction side 1: (8/23 + 1)/2. Per-image mean:
    # image 2's truth side 4/19, so ((1 + 1)/2 + (4/19 + 1)/2)/2.
    found = _image((1, 0, 2, 0, 2))
    true_two = _image((1, 0, 2, 0, 2), (2, 3, 6, 5, 8), (3, 4, 6, 0, 3))
    pairs = [(found, found), (true_two, found)]
    pooled = pool_glands([gland_counts(true, pred) for true, pred in pairs])
    per_image = [gland_metrics(true, pred) for true, pred in pairs]
    assert pooled["object_f1"] == pytest.approx(4 / 6)
    assert np.mean([scores["object_f1"] for scores in per_image]) == pytest.approx(3 / 4)
    assert pooled["object_dice"] == pytest.approx((8 / 23 + 1) / 2)
    assert np.mean([scores["object_dice"] for scores in per_image]) == pytest.approx(
        (1 + (4 / 19 + 1) / 2) / 2
    )
    assert pooled["object_recall"] == pytest.approx(2 / 4) and pooled["object_precision"] == 1
    # one image pooled is that image's own score
    assert pool_glands([gland_counts(true_two, found)]) == pytest.approx(
        {key: value for key, value in per_image[1].items() if key not in ("dice", "iou")}
    )


def test_glands_bad_input():
    with pytest.raises(InputError, match="shape mismatch"):
        gland_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int))


@pytest.mark.parametrize("seed", range(6))
def test_glands_nearest_object_search_is_exact(seed):
    # Objects that overlap nothing are paired with the nearest object of the other side by Hausdorff distance;
    # the search prunes by the gap between bounding boxes, so compare with trying every object.
    from skimage.metrics import hausdorff_distance

    rng = np.random.default_rng(seed)
    true, pred = np.zeros((60, 60), np.int32), np.zeros((60, 60), np.int32)
    for labels, parity in (
        (true, 0),
        (pred, 1),
    ):  # the cells of a checkerboard's two colours: nothing overlaps
        cells = [cell for cell in rng.permutation(36) if (cell // 6 + cell % 6) % 2 == parity][
            : rng.integers(2, 9)
        ]
        for index, cell in enumerate(cells, start=1):
            top, left = 10 * (cell // 6) + rng.integers(0, 5), 10 * (cell % 6) + rng.integers(0, 5)
            height, width = rng.integers(1, 6, 2)
            labels[top : top + height, left : left + width] = index
    assert not ((true > 0) & (pred > 0)).any()

    def side(owner: np.ndarray, other: np.ndarray) -> float:
        return sum(
            (owner == i).sum()
            * min(hausdorff_distance(owner == i, other == j) for j in range(1, other.max() + 1))
            for i in range(1, owner.max() + 1)
        )

    counts = gland_counts(true, pred)
    assert counts["true_hausdorff_sum"] == pytest.approx(side(true, pred))
    assert counts["pred_hausdorff_sum"] == pytest.approx(side(pred, true))
