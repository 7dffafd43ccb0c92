"""Point prompts: clicks sampled from the generator's nuclei map, and a user's clicks added to them."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import measure

from sac.io import InputError
from sac.points import as_clicks, as_points, combine_points, peak_pixels, sample_point_prompts, sample_points

THRESHOLD = 0.5


def disk_map(seed: int, height: int, width: int, num_disks: int) -> np.ndarray:
    """Random disks of foreground probability on a noisy background, like a generator's output."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.0, 0.45, size=(height, width))
    rows, cols = np.mgrid[:height, :width]
    for _ in range(num_disks):
        r, c, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.5, 6)
        inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        prob[inside] = rng.uniform(THRESHOLD, 1.0)
    return prob


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(8, 64),
    width=st.integers(8, 64),
    num_disks=st.integers(0, 20),
    num_positive=st.sampled_from([1, 3, 8, 16]),
    num_negative=st.sampled_from([1, 3, 8, 16]),
    use_centre=st.booleans(),
)
def test_sample_points_properties(seed, height, width, num_disks, num_positive, num_negative, use_centre):
    prob = disk_map(seed, height, width, num_disks)
    centre = np.random.default_rng(seed + 1).random(prob.shape) if use_centre else None
    coords, labels = sample_points(
        prob, num_positive, num_negative, np.random.default_rng(seed), centre=centre
    )

    total = num_positive + num_negative
    assert coords.shape == (total, 2) and coords.dtype == np.float32
    assert labels.tolist() == [1] * num_positive + [0] * num_negative and labels.dtype == np.int64
    x, y = coords[:, 0], coords[:, 1]
    assert np.array_equal(coords, np.round(coords))
    assert (x >= 0).all() and (x < width).all() and (y >= 0).all() and (y < height).all()
    rows, cols = y.astype(int), x.astype(int)
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == total

    foreground = prob >= THRESHOLD
    on_foreground = foreground[rows, cols]
    if foreground.sum() >= num_positive:
        assert on_foreground[:num_positive].all()
    if (~foreground).sum() >= num_negative + max(0, num_positive - foreground.sum()):
        assert not on_foreground[num_positive:].any()
    components, count = measure.label(foreground, return_num=True)
    if count >= num_positive:
        picked = components[rows[:num_positive], cols[:num_positive]]
        assert len(set(picked.tolist())) == num_positive


def test_positive_goes_to_nucleus_interior_or_centre_map():
    prob = np.zeros((20, 20))
    prob[4:11, 6:13] = 0.9  # 7x7 square whose most interior pixel is (row 7, col 9)
    coords, _ = sample_points(prob, 1, 2, np.random.default_rng(0))
    assert coords[0].tolist() == [9.0, 7.0]
    centre = np.zeros_like(prob)
    centre[5, 11] = 1.0
    coords, _ = sample_points(prob, 1, 2, np.random.default_rng(0), centre=centre)
    assert coords[0].tolist() == [11.0, 5.0]


def test_negatives_favour_the_rim_around_nuclei():
    prob = np.zeros((64, 64))
    prob[28:36, 28:36] = 0.9
    coords, _ = sample_points(prob, 1, 32, np.random.default_rng(0))
    in_ring = np.abs(coords[1:] - 31.5).max(axis=1) <= 4 + 5
    assert in_ring.mean() >= 0.25  # the ring is 7% of the background: uniform sampling would give ~0.07


def test_empty_prediction_still_gives_points():
    coords, labels = sample_points(np.zeros((8, 8)), 3, 3, np.random.default_rng(0))
    assert coords.shape == (6, 2) and labels.tolist() == [1, 1, 1, 0, 0, 0]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12))
def test_peak_pixels_is_the_first_maximum_of_each_region(seed, num_regions):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_regions + 1, size=(17, 23))
    values = rng.integers(0, 4, size=labels.shape).astype(float)  # few levels, so ties are common
    ids = rng.permutation(np.unique(labels[labels > 0]))
    peaks = peak_pixels(values, labels, ids)
    np.testing.assert_array_equal(values.flat[peaks], ndimage.maximum(values, labels, ids))
    for region, peak in zip(ids, peaks, strict=True):
        assert peak == np.flatnonzero((labels == region) & (values == values[labels == region].max()))[0]


def test_sample_points_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="distinct points"):
        sample_points(np.zeros((3, 3)), 8, 8, rng)
    with pytest.raises(InputError):
        sample_points(np.full((8, 8), np.nan), 1, 1, rng)
    with pytest.raises(InputError):
        sample_points(np.full((8, 8), 2.0), 1, 1, rng)
    with pytest.raises(InputError):
        sample_points(np.zeros((8, 8)), 1, 1, rng, centre=np.zeros((4, 4)))


def test_sample_point_prompts_layout_and_determinism():
    prob = torch.from_numpy(np.stack([disk_map(s, 24, 32, 6) for s in range(3)])).float()
    points, labels = sample_point_prompts(prob, 3, 8, seed_or_generator=7)
    assert points.shape == (3, 1, 11, 2) and points.dtype == torch.float32
    assert labels.shape == (3, 1, 11) and labels.dtype == torch.int64
    again, _ = sample_point_prompts(prob, 3, 8, np.random.default_rng(7))
    assert torch.equal(points, again)
    other, _ = sample_point_prompts(prob, 3, 8, 8)
    assert not torch.equal(points, other)


def test_combine_points_add_and_replace():
    points = torch.zeros(2, 1, 3, 2)
    labels = torch.tensor([1, 0, 0]).expand(2, 1, 3)
    added, added_labels = combine_points(points, labels, [(5, 6)], np.array([[1.5, 2.5], [3, 4]]))
    assert added.shape == (2, 1, 6, 2) and added_labels.shape == (2, 1, 6)
    assert added[1, 0, 3:].tolist() == [[5, 6], [1.5, 2.5], [3, 4]]
    assert added_labels[0, 0].tolist() == [1, 0, 0, 1, 0, 0]
    replaced, replaced_labels = combine_points(points, labels, manual_negative=[[7, 8]], replace=True)
    assert replaced.tolist() == [[[[7, 8]]], [[[7, 8]]]] and replaced_labels.tolist() == [[[0]], [[0]]]
    assert combine_points(points, labels)[0].shape == points.shape


@pytest.mark.parametrize("bad", [[(1, np.nan)], [(1, 2, 3)], [[1], [2]], "ab"])
def test_combine_points_rejects_bad_manual_points(bad):
    with pytest.raises(InputError):
        combine_points(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1), manual_positive=bad)


def test_combine_points_replace_needs_points():
    with pytest.raises(InputError):
        combine_points(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1), replace=True)


def test_as_points():
    assert as_points(None, "clicks").shape == (0, 2) and as_points([], "clicks").shape == (0, 2)
    points = as_points([(1, 2), (3.5, 4)], "clicks")
    assert points.dtype == np.float32 and points.tolist() == [[1, 2], [3.5, 4]]
    with pytest.raises(InputError, match="clicks must be a list of numeric"):
        as_points([("a", "b")], "clicks")
    with pytest.raises(InputError, match=r"clicks must be a list of \(x, y\) pairs, got shape \(3,\)"):
        as_points([1, 2, 3], "clicks")
    with pytest.raises(InputError, match="clicks contain NaN"):
        as_points([(1, np.inf)], "clicks")


def test_a_repeated_click_counts_once_and_a_contradicting_one_is_refused():
    positive, negative = as_clicks(([[10.2, 5], [30, 30], [10.7, 5.9]], [[1, 1], [1.5, 1.5]]))
    np.testing.assert_allclose(
        positive, [[10.2, 5], [30, 30]]
    )  # the second click in (10, 5)'s pixel: dropped
    assert negative.tolist() == [[1, 1]]
    with pytest.raises(InputError, match=r"pixel \(30, 30\) is clicked both positive and negative"):
        as_clicks(([[30, 30]], [[30.5, 30.2]]))


def test_as_clicks_takes_positive_and_negative_lists():
    positive, negative = as_clicks(([[120, 120], [5.5, 6]], None))
    assert positive.dtype == np.float32 and positive.tolist() == [[120, 120], [5.5, 6]]
    assert negative.shape == (0, 2)
    positive, negative = as_clicks([[], np.array([[60, 60]])])
    assert positive.shape == (0, 2) and negative.tolist() == [[60, 60]]
    positive, negative = as_clicks((torch.tensor([[1.0, 2.0]]), [(3, 4)]))
    assert positive.tolist() == [[1, 2]] and negative.tolist() == [[3, 4]]


@pytest.mark.parametrize(
    "bad",
    [
        [(120, 120), (60, 60)],  # a bare list of two points: not one positive and one negative click
        [(120, 120)],
        [(1, 2), (3, 4), (5, 6)],
        np.array([[120, 120], [60, 60]]),
        (np.array([120, 120]), None),
        ([[1, 2], [3]], None),
        ("ab", None),
        [[[1, 2]], [[3, 4]], []],
        5,
    ],
)
def test_as_clicks_refuses_anything_else_with_what_it_expects(bad):
    expected = "points: expected (positive, negative), each a list of [x, y] pairs, e.g. ([[120, 120]], [])"
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        as_clicks(bad)


def test_as_clicks_names_the_side_of_bad_coordinates():
    with pytest.raises(InputError, match="points: negative clicks contain NaN"):
        as_clicks(([[1, 2]], [[np.nan, 3]]))
    with pytest.raises(InputError, match="points: positive clicks must be a list of numeric"):
        as_clicks(([("a", "b")], None))
