"""Bundled sample images: they load from the installed package with the documented shapes, dtypes and labels."""

from __future__ import annotations

import numpy as np
import pytest

from sac.data import SAMPLES, sample, sample_labels, sample_path
from sac.io import InputError, read_image

EXPECTED = {"he": ((512, 512, 3), 0.25), "fluo": ((260, 347), None)}
MAX_BYTES = 300 * 1024


def test_documented_samples():
    assert set(SAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_image(name):
    shape, pixel_size = EXPECTED[name]
    image = sample(name)
    assert image.dtype == np.uint8 and image.shape == shape
    assert image.flags.writeable
    assert image.std() > 0  # real content, not a blank file
    assert SAMPLES[name].pixel_size_um == pixel_size
    # the path form feeds the normal reader, which gives the model's RGB input
    assert read_image(sample_path(name)).shape == (*shape[:2], 3)


def test_fluo_is_dark_background_bright_nuclei():
    image, labels = sample("fluo"), sample_labels("fluo")
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_labels(name):
    labels = sample_labels(name)
    assert labels.dtype == np.int32 and labels.shape == EXPECTED[name][0][:2]
    count = labels.max()
    assert count >= 30
    np.testing.assert_array_equal(np.unique(labels), np.arange(count + 1))  # 0 and consecutive 1..N


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_files_exist_and_are_small(name):
    path = sample_path(name)
    assert path.is_file() and path.parent.name == "samples"
    labels_path = path.with_name(SAMPLES[name].labels)
    for file in (path, labels_path):
        assert file.is_file() and 0 < file.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("function", [sample, sample_labels, sample_path])
def test_unknown_name_lists_available(function):
    with pytest.raises(InputError, match=r"'cells'.*he, fluo") as info:
        function("cells")
    assert "\n" not in str(info.value)
