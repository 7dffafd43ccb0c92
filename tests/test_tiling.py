import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sac.tiling import blend_weight, pad_to, predict_tiled, tile_grid, tile_starts


def pixel_function(batch: np.ndarray, origins) -> np.ndarray:
    """A 'model' whose output at a pixel depends on that pixel only: tiling must not change it."""
    values = batch.astype(np.float32)
    return np.stack([values.mean(-1) / 255, np.sqrt(values[..., 0])], axis=1)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 150),
    width=st.integers(1, 150),
    tile=st.sampled_from([16, 32, 64]),
    overlap_fraction=st.floats(0, 0.5),
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_stitched_pixel_function_equals_untiled(height, width, tile, overlap_fraction, batch_size, seed):
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    overlap = int(overlap_fraction * tile)
    stitched = predict_tiled(pixel_function, image, tile, overlap, batch_size)
    expected = pixel_function(image[None], [(0, 0)])[0]
    np.testing.assert_allclose(stitched, expected, rtol=1e-5, atol=1e-5)


@given(length=st.integers(1, 3000), tile=st.integers(8, 512), overlap_fraction=st.floats(0, 0.9))
def test_tiles_cover_everything_with_the_requested_overlap(length, tile, overlap_fraction):
    overlap = min(tile - 1, int(overlap_fraction * tile))
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + tile >= length and (length <= tile or starts[-1] + tile == length)
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_grid_blend_and_pad():
    assert tile_grid((10, 300), 256, 32) == [(0, 0), (0, 44)]
    weight = blend_weight(64, 16)
    assert weight.shape == (64, 64) and weight.max() == 1 and weight.min() > 0
    np.testing.assert_allclose(weight, weight.T)
    assert pad_to(np.ones((1, 1, 3)), 5, 7).shape == (5, 7, 3)
    assert pad_to(np.arange(6).reshape(2, 3), 9, 4).shape == (9, 4)
