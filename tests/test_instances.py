"""Instance separation: watershed on the model's maps, and per-nucleus SAM refinement."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import measure, morphology, segmentation
from skimage.draw import disk

from conftest import square_answers, synthetic_nuclei, tiny_model
from sac.data import default_data_root, instance_distance_map
from sac.instances import (
    NucleusMask,
    _paint,
    _tile_prompts,
    apply_clicks,
    click_negatives,
    depth_seeds,
    hv_boundaries,
    instances_from_maps,
    merged_neighbours,
    sam_instances,
    segment_at_points,
    split_remnants,
    valley_between,
)
from sac.io import InputError, read_labels
from sac.metrics import aggregated_jaccard_index
from sac.model import InstanceOutput, SACConfig, SegmentAnyCell
from sac.train import hv_targets


def _touching_disks() -> np.ndarray:
    labels = np.zeros((48, 64), np.int32)
    labels[disk((24, 20), 10)] = 1
    labels[disk((24, 36), 10)] = 2  # overlaps the first disk
    return labels


def _assert_clean_labels(labels: np.ndarray, shape: tuple[int, int]) -> None:
    """int32, the right shape, ids 0..N without gaps, and every nucleus one connected piece."""
    assert labels.dtype == np.int32 and labels.shape == shape
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    for index in range(1, labels.max() + 1):
        assert measure.label(labels == index).max() == 1


@pytest.fixture
def model(tiny_segmenter) -> SegmentAnyCell:
    return tiny_segmenter.model


def _sam_instances(model: SegmentAnyCell, image: np.ndarray, seeds: np.ndarray, **options) -> np.ndarray:
    """SAM instances prompted at the centres of ``seeds``, as the generator's centre map would place them."""
    return sam_instances(model, image, seeds, instance_distance_map(seeds), **options)


def test_touching_disks_get_two_labels():
    truth = _touching_disks()
    labels = instances_from_maps((truth > 0).astype(np.float32), instance_distance_map(truth))
    assert labels.max() == 2
    assert aggregated_jaccard_index(truth, labels) > 0.9
    _assert_clean_labels(labels, truth.shape)


def test_hv_maps_split_touching_nuclei_the_centre_map_merges():
    """One centre core over two touching disks: only the HV maps' boundary between them splits it."""
    truth = _touching_disks()
    merged = instance_distance_map((truth > 0).astype(np.int32))  # one nucleus, as the centre map saw it
    probability = (truth > 0).astype(np.float32)
    assert instances_from_maps(probability, merged, seed_threshold=0.2).max() == 1
    hv = hv_targets(torch.from_numpy(truth).long()[None])[0].numpy()
    boundaries = hv_boundaries(hv)
    assert boundaries[truth > 0].max() > 0.5 > np.median(boundaries[truth > 0])
    labels = instances_from_maps(probability, merged, seed_threshold=0.2, hv=hv, hv_weight=2)
    assert labels.max() == 2 and aggregated_jaccard_index(truth, labels) > 0.9


def test_blob_without_marker_keeps_one_label():
    truth = _touching_disks()
    probability = (truth > 0).astype(np.float32)
    probability[5:12, 50:60] = 0.9  # foreground the centre map knows nothing about
    labels = instances_from_maps(probability, instance_distance_map(truth))
    assert labels.max() == 3
    assert len(np.unique(labels[5:12, 50:60])) == 1 and labels[8, 55] > 0


def _two_peaks(valley: float) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and a centre map of two touching nuclei whose peaks (1.0 and 0.8) meet at ``valley``."""
    truth = _touching_disks()
    rows, cols = np.mgrid[: truth.shape[0], : truth.shape[1]]
    left = 1.0 - np.hypot(rows - 24, cols - 20) / 8 * (1 - valley)  # cones that cross at column 28
    right = 0.8 - np.hypot(rows - 24, cols - 36) / 8 * (0.8 - valley)
    return truth > 0, np.where(truth > 0, np.maximum(left, right), 0).astype(np.float32)


@pytest.mark.parametrize(
    ("valley", "depth", "expected"),
    [(0.6, 0.0, 1), (0.6, 0.15, 2), (0.6, 0.3, 1), (0.3, 0.0, 2), (0.3, 0.8, 2)],
)
def test_seed_depth_splits_a_core_only_at_a_deep_valley(valley, depth, expected):
    """Peaks 0.8 and 1.0 joined at 0.6 share one core at the 0.4 threshold; a depth up to 0.2 parts them, and
    a valley below the threshold always does."""
    foreground, centre = _two_peaks(valley)
    labels = instances_from_maps(foreground.astype(np.float32), centre, seed_threshold=0.4, seed_depth=depth)
    assert labels.max() == expected
    _assert_clean_labels(labels, foreground.shape)


def test_depth_seeds_ignore_shallow_bumps_and_low_peaks():
    foreground, centre = _two_peaks(0.6)
    bumpy = centre + 0.04 * (np.indices(centre.shape).sum(axis=0) % 3 == 0) * foreground
    bumpy[foreground & (bumpy < 0.1)] = 0  # rims low enough that no seed may start there
    markers = depth_seeds(bumpy.astype(np.float32), foreground, threshold=0.4, depth=0.15)
    assert markers.max() == 2
    assert markers[24, 20] != markers[24, 36] and {markers[24, 20], markers[24, 36]} == {1, 2}
    assert not markers[foreground & (bumpy < 0.4)].any()


def test_depth_seeds_agree_with_h_maxima_on_noisy_maps():
    """Same seeds as scikit-image's h-maxima (above the threshold) on a noisy map of many nuclei."""
    truth = synthetic_nuclei(size=160, count=30, seed=3)[1]
    centre = instance_distance_map(truth) + np.random.default_rng(0).normal(0, 0.03, truth.shape)
    centre = np.where(truth > 0, centre, 0).astype(np.float32)
    ours = depth_seeds(centre, truth > 0, threshold=0.0, depth=0.15)
    reference = measure.label(morphology.h_maxima(centre, 0.15) & (truth > 0))
    ours_labels = segmentation.watershed(-centre, ours, mask=truth > 0)
    reference_labels = segmentation.watershed(-centre, reference, mask=truth > 0)
    assert abs(int(ours.max()) - int(reference.max())) <= 1
    assert aggregated_jaccard_index(reference_labels, ours_labels) > 0.97


def test_small_objects_removed_and_small_holes_filled():
    probability = np.zeros((40, 40), np.float32)
    probability[5:15, 5:15] = 1
    probability[9, 9] = 0  # a one-pixel hole
    probability[30:32, 30:32] = 1  # 4 pixels, below min_size
    labels = instances_from_maps(probability, probability)
    assert labels.max() == 1 and labels[9, 9] == 1 and labels[30, 30] == 0


def test_empty_and_mismatched_maps():
    empty = instances_from_maps(np.zeros((10, 12)), np.zeros((10, 12)))
    assert empty.dtype == np.int32 and not empty.any()
    with pytest.raises(InputError, match="one shape"):
        instances_from_maps(np.zeros((10, 12)), np.zeros((12, 10)))


@pytest.mark.data
def test_ground_truth_maps_recover_monuseg_nuclei():
    root = default_data_root()
    masks = sorted(Path(root, "monuseg", "test", "masks").glob("*.png")) if root else []
    if not masks:
        pytest.skip("MoNuSeg test masks not found under SAC_DATA or ../shared/data")
    truth = read_labels(masks[0])
    labels = instances_from_maps((truth > 0).astype(np.float32), instance_distance_map(truth))
    assert aggregated_jaccard_index(truth, labels) > 0.95


def test_sam_instances_structure(model):
    image, truth = synthetic_nuclei(size=150, count=20)
    labels = _sam_instances(model, image, truth, batch_size=8)
    _assert_clean_labels(labels, truth.shape)


def test_sam_instances_small_image_and_no_nuclei(model):
    image, truth = synthetic_nuclei(size=40, count=3)
    _assert_clean_labels(_sam_instances(model, image, truth), truth.shape)
    empty = _sam_instances(model, image, np.zeros_like(truth))
    assert empty.dtype == np.int32 and not empty.any()


def test_sam_instances_rejects_mismatched_image(model):
    image, truth = synthetic_nuclei(size=40, count=3)
    with pytest.raises(InputError, match="uint8 RGB"):
        _sam_instances(model, image[:30], truth)


def test_prompts_put_negatives_on_neighbours_inside_the_tile():
    clicks = np.array([[10, 10], [10, 20]])  # (row, column)
    negatives = np.array([[[10, 20], [50, 10]], [[10, 10], [-1, -1]]])  # (50, 10) lies outside; -1: unused
    coords, labels = _tile_prompts(clicks, negatives, (0, 0), size=32)
    np.testing.assert_array_equal(labels, [[1, 0, -1], [1, 0, -1]])
    np.testing.assert_array_equal(coords[0, :2], [[10, 10], [20, 10]])  # (x, y) = (column, row)
    moved = np.where(negatives >= 0, negatives + 32, -1)
    shifted, shifted_labels = _tile_prompts(clicks + 32, moved, (32, 32), size=32)  # in the tile's own frame
    np.testing.assert_array_equal(shifted, coords)
    np.testing.assert_array_equal(shifted_labels, labels)


def test_a_click_on_a_merge_gets_the_other_nucleus_as_its_negative():
    truth = _touching_disks()
    merged = (truth > 0).astype(np.int32)  # the automatic pass took the two disks for one object
    merged[disk((6, 56), 4)] = 2  # a nucleus elsewhere
    centre = instance_distance_map(truth)  # ... but its centre map sees both
    click = np.array([[24, 18]])  # (row, column), in the left disk
    none, config = np.zeros((0, 2), np.int64), SACConfig()
    informed = click_negatives(merged, click, none, config, centre)
    assert informed[0].tolist() == [[24, 36], [-1, -1], [-1, -1], [-1, -1]]  # the right disk's centre, only
    assert (click_negatives(merged, click, none, config) == -1).all()  # no centre map: no merge to see
    assert (click_negatives(truth, click, none, config, centre) == -1).all()  # not on a merge: no negatives
    user = np.array([[24, 40], [90, 90]])  # the user's negatives: the one within the click's window is kept
    assert click_negatives(merged, click, user, config, centre)[0, :2].tolist() == [[24, 40], [24, 36]]
    # a user's two positive clicks mark two nuclei: each is the other's negative (user clicks only)
    both = np.array([[24, 18], [24, 36]])
    apart = click_negatives(merged, both, none, config, positives_apart=True)
    assert apart[:, 0].tolist() == [[24, 36], [24, 18]]
    assert (click_negatives(merged, both, none, config) == -1).all()


def test_what_an_answer_leaves_of_the_objects_it_covered():
    labels = np.zeros((48, 120), np.int32)
    labels[5:26, 5:26] = 1  # a found nucleus ...
    labels[8:23, 8:23] = 3  # ... that a click re-outlined a little smaller: a rim 3 px wide is left
    labels[:, 30:94][_touching_disks() > 0] = 2  # two touching nuclei taken for one object ...
    labels[:, 30:94][_touching_disks() == 1] = 4  # ... a click answered with the left one
    labels[38:46, 100:116] = 5  # an object an answer cut in two thick pieces (column 105)
    labels[38:46, 105] = 6
    assert split_remnants(labels, np.array([1, 2, 5]), next_id=10) == 11
    assert not (labels == 1).any()  # the rim of a re-outlined nucleus is dropped
    assert (labels == 2).sum() > 200 and ndimage.label(labels == 2)[1] == 1  # the merge's other nucleus stays
    # the larger piece keeps its object's id, the other gets the next new one
    assert (labels[:, 106:] == 5).sum() == (labels == 5).sum() == 80 and (labels[:, :105] == 10).sum() == 40
    assert [(labels == i).sum() for i in (3, 4, 6)] == [225, (_touching_disks() == 1).sum(), 8]  # untouched


def test_a_nucleus_with_two_shallow_peaks_is_not_taken_for_a_merge():
    yy, xx = np.mgrid[:40, :60]
    bumps = [np.exp(-((xx - x) ** 2 + (yy - 20) ** 2) / 700) for x in (24, 36)]
    centre = np.maximum(*bumps)  # two maxima, the map dips 0.05 between them
    labels = (centre > 0.2).astype(np.int32)
    assert 0.04 < valley_between(centre, np.array([20, 24]), np.array([20, 36])) < 0.06
    assert merged_neighbours(labels, centre, 20, 22).size == 0
    assert merged_neighbours(labels, centre * 0.05, 20, 22).shape == (
        0,
        2,
    )  # no peak counts: nothing to avoid
    deep = np.maximum(*[np.exp(-((xx - x) ** 2 + (yy - 20) ** 2) / 40) for x in (20, 40)])  # dips to 0
    assert valley_between(deep, np.array([20, 20]), np.array([20, 40])) > 0.9
    np.testing.assert_array_equal(merged_neighbours((deep > 0).astype(np.int32), deep, 20, 18), [[20, 40]])


def test_paint_prefers_higher_scores_and_drops_cut_off_pieces():
    rows, cols = np.nonzero(np.ones((1, 9), bool))
    points = np.array([[0, 0], [0, 4]])
    low = NucleusMask(0.1, rows, cols)  # nucleus 0 spans the row
    high = NucleusMask(0.9, rows[3:6], cols[3:6])  # nucleus 1 cuts it in two
    labels = _paint([low, high], points, (1, 9))
    np.testing.assert_array_equal(labels[0], [1, 1, 1, 2, 2, 2, 0, 0, 0])


def test_negative_clicks_alone_remove_objects_without_the_model():
    """Negative clicks need no answer: no model runs and, at any zoom, nothing they do not touch moves."""
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:15], labels[20:30, 30:45], labels[25:35, 5:12] = 1, 2, 3
    image = np.zeros((40, 60, 3), np.uint8)
    clicked = apply_clicks(None, image, labels, None, np.array([[35.5, 25.5]]), zoom=0.5)
    np.testing.assert_array_equal(clicked, np.where(labels == 2, 0, labels))  # the others keep their ids
    assert clicked.dtype == np.int32


def test_a_click_keeps_the_ids_of_every_object_it_does_not_touch(monkeypatch):
    """Users match ids across rounds of corrections: a click changes no id beyond its answer. The clicked
    nucleus and a piece it cuts off get new ids above every earlier one (even one a negative click just
    removed), and a removed or re-outlined object leaves a gap."""
    import sac.instances

    labels = np.zeros((60, 120), np.int32)
    for index, left in enumerate(range(0, 120, 12), start=1):
        labels[5:15, left + 1 : left + 11] = index  # a row of 10 nuclei, ids 1..10 left to right
    labels[30:40, 2:60] = 11  # a wide object the second answer cuts in two
    labels[45:55, 100:110] = 12
    answers = {
        (10, 30): np.s_[4:16, 24:35],  # re-outlines nucleus 3 a little larger
        (35, 30): np.s_[28:42, 25:35],  # a nucleus across object 11, leaving thick pieces left and right
        (50, 80): np.s_[47:53, 77:84],  # a nucleus on background
    }

    def segment_at_points(model, image, clicks, negatives, batch_size=64):
        """SAM's answers, as set out above: the pixels of each click's box."""
        boxes = [np.zeros(image.shape[:2], bool) for _ in clicks]
        for box, (row, col) in zip(boxes, clicks, strict=True):
            box[answers[(int(row), int(col))]] = True
        return [NucleusMask(0.9, *np.nonzero(box)) for box in boxes]

    monkeypatch.setattr(sac.instances, "segment_at_points", segment_at_points)
    positive = np.array([[30.5, 10.5], [30.5, 35.5], [80.5, 50.5]])  # (x, y)
    negative = np.array([[105.0, 50.0]])  # removes 12, the largest id
    model = SimpleNamespace(config=SACConfig())
    clicked = apply_clicks(model, np.zeros((*labels.shape, 3), np.uint8), labels, positive, negative)
    assert clicked[10, 30] == 13 and clicked[35, 30] == 14 and clicked[50, 80] == 16  # new, above 12
    # object 11 keeps its larger piece; the one cut off gets a new id
    assert (clicked[30:40, 35:60] == 11).all() and (clicked[30:40, 2:25] == 15).all()
    away = ~np.isin(labels, [3, 11, 12]) & (labels > 0)
    np.testing.assert_array_equal(clicked[away], labels[away])  # nuclei 1, 2 and 4..10 keep their ids
    assert not np.isin([3, 12], clicked).any()  # gaps: re-outlined and removed objects' ids are not reused
    np.testing.assert_array_equal(np.unique(clicked), [0, 1, 2, *range(4, 12), 13, 14, 15, 16])


def test_a_double_click_is_one_nucleus_and_a_click_on_background_is_flagged(monkeypatch):
    asked = square_answers(monkeypatch, half=4)  # a 9x9 square around each click
    model = SimpleNamespace(config=SACConfig())
    labels, image = np.zeros((40, 60), np.int32), np.zeros((40, 60, 3), np.uint8)
    probability = np.zeros((40, 60), np.float32)
    probability[:, :30] = (
        0.2  # a pale nucleus the automatic pass missed, on the left; background on the right
    )
    double = np.array([[10.5, 20.5], [11.5, 20.5], [13.5, 21.5]])  # a double click, and a third within 4 px
    with pytest.warns(
        UserWarning, match=r"2 positive click\(s\) within 4 px of an earlier one taken as the same"
    ):
        clicked = apply_clicks(model, image, labels, double, None, probability=probability)
    assert asked == [1] and np.unique(clicked).tolist() == [0, 1]  # one nucleus, not pieces
    apart = np.array([[10.5, 20.5], [20.5, 20.5]])  # 10 px apart: two nuclei
    assert np.unique(apply_clicks(model, image, labels, apart, None, probability=probability)).size == 3
    with pytest.warns(UserWarning, match=r"click \(45, 20\) added an object where the model sees no nucleus"):
        clicked = apply_clicks(model, image, labels, np.array([[45.5, 20.5]]), None, probability=probability)
    assert clicked[20, 45] == 1  # added as the user asked


def test_a_click_answered_in_two_views_averages_them_in_the_image_frame(monkeypatch):
    """With click_views 2 the answer is the mean of the image's and its mirror's logits, taken back: a pixel
    only the mirror's answer holds (to the right of the click there) joins on the click's left, not its right;
    the negatives reach each view moved with it, unused ones still unused."""
    import sac.instances

    clicks, negatives = np.array([[20, 14]]), np.array([[[22, 30], [-1, -1]]])
    seen_negatives = []

    def answers(model, image, clicks, negatives, batch_size):
        mirrored = len(seen_negatives) == 1
        seen_negatives.append(negatives.copy())
        rows, cols = np.mgrid[-4:5, -4:5]
        window = np.where(rows**2 + cols**2 <= 9, 1.0, -1.0)
        if mirrored:
            window[4, 8] = 3.0  # four to the right of the click, in the mirror
        logits = torch.from_numpy(window)[None, None].float()
        yield (
            [0],
            InstanceOutput(logits, torch.from_numpy(clicks[:1] - 4), None, torch.ones(1)),
            np.zeros(2, int),
        )

    monkeypatch.setattr(sac.instances, "tile_answers", answers)
    model = tiny_model(click_views=2)
    (answer,) = segment_at_points(model, np.zeros((40, 50, 3), np.uint8), clicks, negatives)
    held = set(zip(answer.rows.tolist(), answer.cols.tolist(), strict=True))
    assert (20, 10) in held and (20, 18) not in held and (20, 17) in held
    np.testing.assert_array_equal(seen_negatives[0], negatives)
    np.testing.assert_array_equal(seen_negatives[1], [[[22, 50 - 1 - 30], [-1, -1]]])
