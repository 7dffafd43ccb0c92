"""Moving images, maps, labels and clicks between an image's pixel grid and the model's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import synthetic_nuclei
from sac.scale import at_model_scale, resample_labels, resample_maps, resample_pixels


def test_resampling_maps_round_trip_keeps_the_nuclei():
    """Maps made at twice the size and resampled back give the same nuclei: what a 20x image goes through."""
    from sac.instances import instances_from_maps

    _, labels = synthetic_nuclei(size=128, count=10, seed=4)
    probability = (labels > 0).astype(np.float32)
    centre = ndimage.gaussian_filter(ndimage.distance_transform_edt(labels > 0), 1).astype(np.float32)
    centre /= centre.max()
    maps = np.stack([probability, centre])
    big = resample_maps(maps, (256, 256))
    back = resample_maps(big, (128, 128))
    assert back.shape == maps.shape
    expected = instances_from_maps(maps[0], maps[1]).max()
    assert instances_from_maps(back[0], back[1]).max() == expected
    assert resample_labels(resample_labels(labels, (256, 256)), (128, 128)).max() == labels.max()


@pytest.mark.parametrize("shape", [(37, 53), (61, 71), (128, 96), (200, 300), (251, 333)])
def test_one_masks_pixels_map_as_the_whole_label_image_does(shape):
    source = (100, 120)
    rng = np.random.default_rng(0)
    mask = ndimage.binary_dilation(rng.random(source) > 0.995, iterations=3)
    mask[0, :5] = mask[-1, -5:] = True  # pixels on the border
    expected = resample_labels(mask.astype(np.int32), shape) > 0
    found = np.zeros(shape, bool)
    found[resample_pixels(*np.nonzero(mask), source, shape)] = True
    np.testing.assert_array_equal(found, expected)


def test_the_model_scale_view_of_an_image_and_its_clicks():
    rgb = np.zeros((40, 60, 3), np.uint8)
    labels = np.zeros((40, 60), np.int32)
    labels[10:20, 30:40] = 1
    centre = labels.astype(np.float32)
    seen, seen_labels, seen_centre, points = at_model_scale(
        0.5, rgb, labels, centre, (np.array([[35.0, 15.0]]), None)
    )
    assert seen.shape == (20, 30, 3) and seen_labels.shape == seen_centre.shape == (20, 30)
    x, y = points[0][0]
    assert seen_labels[int(y), int(x)] == 1 and points[1] is None
    assert at_model_scale(1.0, rgb, labels)[1] is labels
