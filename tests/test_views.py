"""Test-time views: flips and quarter turns, and maps, windows and pixels taken back to the image's frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_nuclei
from sac.model import MAP_NAMES
from sac.train import hv_targets
from sac.views import VIEWS, maps_of_view, pixels_to_view, view_of, window_from_view


def test_views_are_the_eight_distinct_flips_and_turns_the_image_and_its_mirror_first():
    image = np.arange(12).reshape(3, 4)
    seen = {view_of(image, view).tobytes() + bytes(view_of(image, view).shape) for view in VIEWS}
    assert len(seen) == 8 and VIEWS[:2] == ((0, False), (0, True))


@pytest.mark.parametrize("view", VIEWS)
def test_hv_maps_of_a_view_are_turned_back_as_vectors(view):
    """HV maps point from each nucleus's centre: turned back, a view's must equal the image's own."""
    _, labels = synthetic_nuclei(size=40, count=5, seed=2)

    def maps(labels: np.ndarray) -> np.ndarray:
        hv = hv_targets(torch.from_numpy(np.ascontiguousarray(labels)).long()[None])[0].numpy()
        return np.concatenate([np.repeat((labels > 0)[None], len(MAP_NAMES), 0), hv]).astype(np.float32)

    np.testing.assert_allclose(maps_of_view(maps(view_of(labels, view)), view), maps(labels), atol=1e-6)


@pytest.mark.parametrize("view", VIEWS)
def test_pixels_and_windows_go_to_the_view_and_back(view):
    """A pixel's value is where pixels_to_view says; a window of the view, taken back, is the image's window
    at the corner window_from_view gives, also where the window hangs over the image's edge."""
    rng = np.random.default_rng(0)
    image = rng.random((7, 11))
    seen = view_of(image, view)
    pixels = np.stack([rng.integers(0, 7, 20), rng.integers(0, 11, 20)], axis=1)
    moved = pixels_to_view(pixels, image.shape, view)
    np.testing.assert_array_equal(seen[moved[:, 0], moved[:, 1]], image[pixels[:, 0], pixels[:, 1]])
    padded = np.pad(seen, 3, constant_values=-1.0)  # a 4x5 window whose top-left is 2 px outside the view
    window, corner = window_from_view(padded[1:5, 1:6], np.array([-2, -2]), image.shape, view)
    big = np.pad(image, 3, constant_values=-1.0)
    height, width = window.shape
    np.testing.assert_array_equal(
        window, big[corner[0] + 3 : corner[0] + 3 + height, corner[1] + 3 : corner[1] + 3 + width]
    )
