"""``Segmenter``: one image of any size to maps, a mask and labels, with every option declared and checked once."""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import square_answers, synthetic_nuclei, tiny_model
from sac.io import InputError
from sac.model import MAP_NAMES
from sac.options import SegmentOptions
from sac.segmenter import Segmentation, Segmenter, resolve_device
from sac.tiling import DEFAULT_OVERLAP


def test_default_options():
    options = SegmentOptions()
    assert (options.instances, options.threshold, options.mpp) == (None, 0.5, "auto")
    assert (options.overlap, options.batch_size) == (DEFAULT_OVERLAP, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threshold = 0.7  # type: ignore[misc]


@pytest.mark.parametrize(("given", "mode"), [(None, None), (False, None), (True, "fast"), ("sam", "sam")])
def test_instance_modes_are_normalised(given, mode):
    assert SegmentOptions(instances=given).instances == mode


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"instances": "slow"}, "instance mode"),
        ({"threshold": 2.0}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"seed_depth": 1.0}, "seed depth must be in"),
        ({"seed_depth": -0.1}, "seed depth must be in"),
        ({"hv_weight": -1.0}, "hv weight must be at least 0"),
        ({"batch_size": 0}, "batch size"),
        ({"overlap": -1}, "overlap must not be negative"),
        ({"mpp": "20x"}, "mpp must be a pixel size in µm, auto or native"),
        ({"mpp": 250.0}, "outside"),
        ({"mpp": 0}, "outside"),
        ({"tta": 3}, "test-time augmentation takes 1, 2, 4, 8 views; got 3"),
        ({"tta": "many"}, "test-time augmentation takes 1, 2, 4, 8 views; got many"),
        # a NaN would switch the size filter off
        ({"min_size": float("nan")}, "min_size must be a number or null, got nan"),
        ({"max_size": float("nan")}, "max_size must be a number or null"),
        ({"threshold": "0.5"}, "threshold must be a number, got '0.5'"),
        ({"seed_threshold": True}, "seed_threshold must be a number or null, got True"),
        ({"exclude_edges": "no"}, "exclude_edges must be true or false, got 'no'"),  # "no" is truthy
        ({"progress": 1}, "progress must be true or false"),
        ({"batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
        ({"overlap": 2.5}, "overlap must be a whole number"),
        ({"channel": 1.0}, "channel must be a whole number or text or null, got 1.0"),
    ],
)
def test_bad_options_rejected(options, message):
    with pytest.raises(InputError, match=message):
        SegmentOptions(**options)


def test_numpy_scalars_are_options():
    """Values taken from arrays (a threshold from np.quantile, a size from a measurement) are numbers too."""
    options = SegmentOptions(
        threshold=np.float32(0.4),
        min_size=np.float64(10),
        batch_size=np.int64(2),
        exclude_edges=np.bool_(True),
    )
    assert options.threshold == pytest.approx(0.4) and options.batch_size == 2 and options.exclude_edges


@pytest.mark.parametrize(
    ("given", "mpp"), [("auto", "auto"), ("native", "native"), ("0.5", 0.5), (0.25, 0.25)]
)
def test_pixel_size_option(given, mpp):
    assert SegmentOptions(mpp=given).mpp == mpp


@pytest.mark.parametrize(
    ("given", "views"), [(True, 8), (False, 1), (2, 2), (4.0, 4), ("4", 4), (None, None)]
)
def test_tta_option_counts_views(given, views):
    assert SegmentOptions(tta=given).tta == views


def test_segmenter_checks_overlap_against_the_models_input_size(tiny_segmenter):
    model = tiny_segmenter.model  # 64-pixel tiles
    with pytest.raises(InputError, match="overlap must be smaller than the model's 64 px tiles, got 64"):
        Segmenter(model, overlap=64)
    assert Segmenter(model, overlap=63).options.overlap == 63
    with pytest.raises(InputError, match="overlap"):
        tiny_segmenter.with_options(overlap=64)
    with pytest.raises(InputError, match="threshold"):
        Segmenter(model, SegmentOptions(), threshold=3)


def test_options_given_whole_or_by_keyword(tiny_segmenter):
    model = tiny_segmenter.model
    assert Segmenter(model, instances="sam").options == SegmentOptions(instances="sam")
    combined = Segmenter(model, SegmentOptions(threshold=0.3), instances=True)
    assert combined.options == SegmentOptions(instances="fast", threshold=0.3)
    changed = tiny_segmenter.with_options(instances="sam", batch_size=2)
    assert changed.model is model and changed.options == SegmentOptions(instances="sam", batch_size=2)
    assert tiny_segmenter.options == SegmentOptions()  # unchanged


def test_misspelled_options_and_a_path_for_an_image_are_refused_in_one_line(tiny_segmenter):
    import sac

    assert sac.InputError is InputError  # what a caller catches, from the package's top
    with pytest.raises(InputError, match=r"unknown option 'min_szie' \(did you mean min_size\?\)"):
        tiny_segmenter.with_options(min_szie=5)
    with pytest.raises(InputError, match="unknown option 'min_szie'"):
        Segmenter(tiny_segmenter.model, min_szie=5)
    with pytest.raises(InputError, match="unknown option 'colour'; the options are instances, threshold"):
        tiny_segmenter.predict(np.zeros((8, 8, 3), np.uint8), colour=True)
    for path in ("tile.png", Path("tile.png")):
        with pytest.raises(InputError, match=r"tile\.png: segment takes an image array, not a path"):
            tiny_segmenter.predict(path)


def test_an_array_of_one_or_two_values_is_questioned(tiny_segmenter):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    with pytest.warns(
        UserWarning, match="the image holds only the values 0 and 255: a mask or a blank image"
    ):
        tiny_segmenter.predict(mask)


def test_load(tiny_checkpoint, tmp_path):
    segmenter = Segmenter.load(tiny_checkpoint, device="cpu", instances="fast", threshold=0.4)
    assert segmenter.options == SegmentOptions(instances="fast", threshold=0.4)
    sha = segmenter.model.meta["weights_sha256"][:12]
    assert repr(segmenter).startswith(
        f"Segmenter(nuclei model at None µm/px, weights sha256 {sha}, SegmentOptions("
    )
    assert not segmenter.model.training and segmenter.model.pixel_mean.device.type == "cpu"
    with pytest.raises(InputError, match="missing: no such model; shipped models: nuclei"):
        Segmenter.load(tiny_checkpoint / "missing")
    with pytest.raises(InputError, match="not a SAC checkpoint"):
        Segmenter.load(tmp_path)  # a folder, but no checkpoint in it
    with pytest.raises(InputError, match="unknown device"):
        Segmenter.load(tiny_checkpoint, device="tpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            resolve_device("cuda")


def test_predict_any_size_and_manual_points():
    segmenter = Segmenter(tiny_model().eval(), overlap=8)
    image, _ = synthetic_nuclei(100)
    mask = segmenter.predict(image)
    assert mask.shape == (100, 100) and mask.dtype == bool
    maps = segmenter.maps(image[:30, :7])
    assert maps.shape == (len(MAP_NAMES), 30, 7) == (4, 30, 7)
    assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with_points = segmenter.maps(image, points=(np.array([[50.0, 50.0]]), None))
    assert with_points.shape == (4, 100, 100)
    alone = segmenter.maps(image, points=(np.array([[50.0, 50.0]]), None), generate_points=False)
    assert not np.allclose(alone, with_points)
    labels = segmenter.predict(image, instances=True)
    assert labels.dtype == np.int32 and labels.shape == (100, 100)
    assert segmenter.options.instances is None  # a per-call change does not stick


def test_maps_leave_a_training_model_in_training_mode():
    model = tiny_model()
    assert model.training
    Segmenter(model).maps(synthetic_nuclei(64)[0])
    assert model.training


def test_segment_labels_match_mask_shape(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    result = tiny_segmenter.with_options(instances="sam").segment(image[:50])
    assert isinstance(result, Segmentation)
    mask, labels = result.mask, result.labels
    assert mask.dtype == bool and labels.dtype == np.int32 and labels.shape == mask.shape == (50, 64)
    assert result.maps.shape == (4, 50, 64)


def test_segment_mask_labels_and_maps_agree(tiny_segmenter):
    image, _ = synthetic_nuclei(size=80, count=6)
    segmenter = tiny_segmenter.with_options(instances="fast", threshold=0.4)
    result = segmenter.segment(image)
    mask, labels, maps = result.mask, result.labels, result.maps
    np.testing.assert_array_equal(maps, tiny_segmenter.maps(image))  # the options change labels, not maps
    assert labels.any()
    np.testing.assert_array_equal(mask, labels > 0)  # with labels, the mask is their union
    np.testing.assert_array_equal(segmenter.predict(image), labels)
    plain = tiny_segmenter.segment(image)
    assert plain.labels is None and np.array_equal(plain.mask, maps[0] >= 0.5)
    np.testing.assert_array_equal(tiny_segmenter.predict(image), plain.mask)


def test_instances_resplit_maps_with_the_options_seed_settings(tiny_segmenter):
    yy, xx = np.mgrid[:40, :60]
    peaks = [np.exp(-((xx - x) ** 2 + (yy - 20) ** 2) / 60) for x in (22, 38)]
    maps = np.zeros((4, 40, 60), np.float32)
    maps[0] = np.maximum(*peaks) > 0.1  # two touching nuclei, one foreground region
    maps[2] = np.maximum(*peaks)  # their centres: one core at 0.3, its two peaks 0.66 above the valley
    counts = {
        depth: len(
            np.unique(tiny_segmenter.with_options(seed_threshold=0.3, seed_depth=depth).instances(maps))
        )
        - 1
        for depth in (0.0, 0.2)
    }
    assert counts == {0.0: 1, 0.2: 2}


def test_relabel_gives_what_segment_gives_with_the_same_options(tiny_segmenter):
    rgb, _ = synthetic_nuclei(size=96, count=14, seed=4)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[50, :] = 0  # a transparent line cuts nuclei: relabel cuts them as segment does
    image = np.dstack([rgb, alpha])
    result = tiny_segmenter.with_options(instances=True).segment(image)
    for changes in ({}, {"seed_threshold": 0.3, "min_size": 40.0}, {"exclude_edges": True, "threshold": 0.4}):
        other = tiny_segmenter.with_options(instances=True, **changes)
        np.testing.assert_array_equal(other.relabel(result), other.segment(image).labels)
    with pytest.raises(InputError, match="relabel redraws watershed labels; SAM instances need the model"):
        tiny_segmenter.relabel(result, instances="sam")  # changes for one call, as segment takes them
    np.testing.assert_array_equal(
        tiny_segmenter.relabel(result, instances=True, seed_threshold=0.3),
        tiny_segmenter.with_options(instances=True, seed_threshold=0.3).relabel(result),
    )
    with pytest.raises(InputError, match="relabel takes the Segmentation that segment returns, not ndarray"):
        tiny_segmenter.relabel(result.labels)
    mask_only = tiny_segmenter.segment(rgb, mpp=0.25)  # no watershed ran: no HV maps to relabel with
    if tiny_segmenter.model.config.hv_maps:
        with pytest.raises(InputError, match="segment with instances"):
            tiny_segmenter.relabel(mask_only)


def test_threads_sharing_a_model_get_what_a_serial_run_gets(tiny_segmenter, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    images = [synthetic_nuclei(size=96, count=10, seed=seed)[0] for seed in range(4)]
    segmenter = tiny_segmenter.with_options(instances=True, batch_size=1)

    def maps(image: np.ndarray) -> np.ndarray:  # the maps: prompts move them even where labels do not change
        return segmenter.segment(image).maps

    serial = [maps(image) for image in images]
    model, sample_prompts = segmenter.model, segmenter.model._prompts

    def slow_prompts(*args, **kwargs):  # the model reads its tile's point stream after another thread could
        time.sleep(0.002)  # have set its own (each image's tiles draw generated points from their streams)
        return sample_prompts(*args, **kwargs)

    monkeypatch.setattr(model, "_prompts", slow_prompts)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(maps, images * 2))
    for expected, got in zip(serial * 2, threaded, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_a_models_lock_lives_as_long_as_the_model():
    import gc

    from sac import segmenter as module

    model, other = tiny_model(), tiny_model()
    lock = module._lock(model)
    assert module._lock(model) is lock and module._lock(other) is not lock
    del model
    gc.collect()  # a dead model's lock is gone, not left for a new model that reuses its id
    assert all(kept is not lock for kept in module._LOCKS.values())


def test_segment_takes_option_changes_for_one_call(tiny_segmenter):
    rgb, _ = synthetic_nuclei(size=64, count=6)
    changed = tiny_segmenter.segment(rgb, instances=True, threshold=0.4)
    np.testing.assert_array_equal(
        changed.labels, tiny_segmenter.with_options(instances=True, threshold=0.4).segment(rgb).labels
    )
    assert tiny_segmenter.options.instances is None  # the segmenter itself is unchanged


def test_segment_with_clicks(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    clicks = (np.array([[20.0, 30.0]], np.float32), np.array([[5.0, 5.0]], np.float32))
    fast = tiny_segmenter.with_options(instances="fast")
    result = fast.segment(image, clicks)
    assert result.labels.dtype == np.int32 and result.labels.shape == (64, 64)
    np.testing.assert_array_equal(result.mask, result.labels > 0)
    negative_only = fast.segment(image, (None, clicks[1]))
    assert negative_only.labels[5, 5] == 0  # a negative click removes the object under it
    plain = fast.segment(image).labels
    removed = plain[5, 5]
    expected = np.where(plain == removed, 0, plain) if removed else plain
    np.testing.assert_array_equal(negative_only.labels > 0, expected > 0)
    # without an instance mode, labels are made for the clicks but only the mask is returned
    mask_only = tiny_segmenter.segment(image, clicks)
    assert mask_only.labels is None
    np.testing.assert_array_equal(mask_only.mask, result.mask)
    np.testing.assert_array_equal(tiny_segmenter.predict(image, clicks), result.mask)


@pytest.mark.parametrize(
    "points",
    [
        [(40, 40), (10, 10)],  # a bare list of points, once read as one positive and one negative click
        [(40, 40)],  # once a TypeError with instances, and accepted silently without
        np.array([[40.0, 40.0]]),
        ([40, 40], None),
    ],
)
def test_points_other_than_positive_and_negative_lists_are_refused_before_the_model_runs(
    tiny_segmenter, monkeypatch, points
):
    fast, mask_only = tiny_segmenter.with_options(instances="fast"), tiny_segmenter.with_options()
    for segmenter in (fast, mask_only):
        monkeypatch.setattr(segmenter, "maps", lambda *args, **kwargs: pytest.fail("the model ran"))
    image, _ = synthetic_nuclei(size=64, count=4)
    expected = "points: expected (positive, negative), each a list of [x, y] pairs, e.g. ([[120, 120]], [])"
    for call in (fast.predict, mask_only.predict, fast.segment):
        with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
            call(image, points)
    with pytest.raises(InputError, match=re.escape(expected)):
        tiny_segmenter.maps(image, points)
    with pytest.raises(InputError, match=r"click \(64, 10\) lies outside the 64x64 image"):
        fast.predict(image, ([[10, 10]], [[64, 10]]))


def test_clicks_as_lists_or_arrays_are_the_same_clicks(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    fast = tiny_segmenter.with_options(instances="fast")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model may find no nucleus under a click
        arrays = fast.predict(image, (np.array([[20.0, 30.0]]), np.array([[5.0, 5.0]])))
        np.testing.assert_array_equal(fast.predict(image, ([[20, 30]], [[5, 5]])), arrays)
    negative_only = fast.predict(image, points=(None, [[5, 5]]))
    np.testing.assert_array_equal(fast.predict(image, points=([], [[5, 5]])), negative_only)


def test_clicks_on_a_rescaled_image_change_nothing_they_do_not_reach():
    """Clicks are answered at the model's scale, but painted at the image's: a click elsewhere leaves every
    other object's pixels as they were (resampling the labels there and back would coarsen them all)."""
    segmenter = Segmenter(tiny_model(mpp=0.5, instance_window=16).eval(), instances="fast", min_size=0)
    image, _ = synthetic_nuclei(size=96, count=8)
    plain = segmenter.segment(image, mpp=0.25)
    assert plain.zoom == 0.5
    background = np.argwhere(ndimage.binary_dilation(plain.labels > 0, iterations=3) == 0)[0]
    negative = segmenter.segment(image, (None, background[None, ::-1].astype(np.float32)), mpp=0.25)
    np.testing.assert_array_equal(negative.labels, plain.labels)
    click = np.array([[48.0, 48.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model may find no nucleus under it
        positive = segmenter.segment(image, (click, None), mpp=0.25)
    reach = (segmenter.model.config.instance_window / 2 + 1) / plain.zoom  # half a window, in image pixels
    rows, cols = np.nonzero(positive.labels != plain.labels)
    assert rows.size and (np.hypot(rows - 48, cols - 48) <= reach).all()


def test_any_image_layout_and_dtype_gives_the_same_as_uint8_rgb(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    grey = image[..., 1]
    expected = tiny_segmenter.maps(np.dstack([grey] * 3))
    np.testing.assert_array_equal(tiny_segmenter.maps(grey), expected)
    np.testing.assert_array_equal(tiny_segmenter.maps(grey.astype(np.float32) / 255), expected)
    np.testing.assert_array_equal(tiny_segmenter.maps(np.moveaxis(image, -1, 0)), tiny_segmenter.maps(image))
    with pytest.raises(InputError):
        tiny_segmenter.predict(np.zeros((8, 8, 6), np.uint8))


def test_batch_size_only_groups_tiles(tiny_segmenter):
    image, _ = synthetic_nuclei(size=96, count=6)
    maps = tiny_segmenter.maps(image)
    # the same maps, up to the generated points (see the next test)
    np.testing.assert_allclose(tiny_segmenter.with_options(batch_size=1).maps(image), maps, atol=2e-3)
    # the overlap changes how tiles are laid and blended, not the maps' shape
    assert tiny_segmenter.with_options(overlap=32).maps(image).shape == maps.shape


def test_scale_without_a_model_pixel_size_is_native(tiny_segmenter):
    assert tiny_segmenter.model.config.mpp is None
    image, _ = synthetic_nuclei(size=64, count=4)
    result = tiny_segmenter.segment(image, mpp=0.5)
    assert (result.zoom, result.mpp) == (1.0, 0.5) and "native scale" in result.scale_note
    np.testing.assert_array_equal(result.maps, tiny_segmenter.maps(image))


def test_images_are_resampled_to_the_models_pixel_size():
    segmenter = Segmenter(tiny_model(mpp=0.5).eval())
    image, _ = synthetic_nuclei(size=96, count=8)
    native = segmenter.with_options(mpp="native").segment(image)
    assert native.zoom == 1 and "native" in native.scale_note
    from_file = segmenter.segment(image, mpp=0.25)  # 0.25 µm pixels, shown to the model at 0.5: half size
    assert from_file.zoom == 0.5 and from_file.mpp == 0.25 and "the image's own" in from_file.scale_note
    # maps and mask come back at the input's size
    assert from_file.maps.shape == (4, 96, 96) and from_file.mask.shape == (96, 96)
    with pytest.warns(
        UserWarning, match=r"the mpp option \(1 µm/px, for every image\) overrides this image's 0.25"
    ):
        given = segmenter.with_options(mpp=1.0, instances="fast").segment(image, mpp=0.25)  # the option wins
    assert given.zoom == 2 and given.mpp == 1.0 and "given" in given.scale_note
    assert given.labels.shape == (96, 96)
    with pytest.raises(InputError, match=r"20 µm/px \(given\) would enlarge the image 40x"):
        segmenter.with_options(mpp=20)  # "20x" typed as a pixel size: refused as the option is set
    with pytest.raises(InputError, match=r"20 µm/px \(the image's own\) would enlarge"):
        segmenter.segment(image, mpp=20)  # a file's bogus record: refused before any pass
    for bad in (
        0,
        -0.25,
        float("nan"),
        "0.25",
    ):  # a pixel size given with the image is checked as the option is
        with pytest.raises(InputError, match="mpp"):
            segmenter.segment(image, mpp=bad)
    with pytest.warns(UserWarning, match="enlarges the image 5.0x"):
        segmenter.segment(image[:24, :24], mpp=2.5)
    close = segmenter.segment(image, mpp=0.505)  # within 2% of the model's: not worth resampling
    assert close.zoom == 1
    np.testing.assert_array_equal(close.maps, native.maps)


def test_the_estimated_scale_enlarges_small_nuclei_and_shrinks_large_ones_at_most_twofold(monkeypatch):
    segmenter = Segmenter(tiny_model(mpp=0.25, nucleus_area=50.0, min_size=0.1).eval())
    image, _ = synthetic_nuclei(size=96, count=4)
    # 9 px nuclei: enlarged; 400 px: 0.35x, capped at 0.5x
    for side, zoom in ((3, np.sqrt(50 / 9)), (20, 0.5)):
        labels = np.zeros((96, 96), np.int32)
        for index in range(12):
            row, col = divmod(index, 4)
            labels[row * 24 : row * 24 + side, col * 24 : col * 24 + side] = index + 1
        monkeypatch.setattr(segmenter, "instances", lambda maps, zoom=1.0, labels=labels: labels)
        result = segmenter.segment(image)
        assert result.zoom == pytest.approx(zoom) and "estimated from nucleus size" in result.scale_note
    # the note gives the estimate itself (400 px nuclei: 0.25 * sqrt(50 / 400) µm/px), and that the zoom was limited
    assert "about 0.088 µm/px" in result.scale_note and "limited to 0.5-4x" in result.scale_note
    unmeasured = Segmenter(tiny_model(mpp=0.25, min_size=0.1).eval())  # a model with no nucleus size: says so
    monkeypatch.setattr(unmeasured, "instances", lambda maps, zoom=1.0, labels=labels: labels)
    assert "records no nucleus size" in unmeasured.segment(image).scale_note


def test_the_estimate_takes_a_second_look_at_the_scale_it_chose(monkeypatch):
    """A 10x image: seen at its own scale, touching nuclei merge into objects four times a nucleus's area, so the
    first estimate enlarges 2x; at 2x they come apart, still half the model's size across: 4x in all."""
    segmenter = Segmenter(tiny_model(mpp=0.25, nucleus_area=64.0, min_size=0.1).eval())
    image, _ = synthetic_nuclei(size=96, count=4)

    def squares(side: int) -> np.ndarray:
        labels = np.zeros((96, 96), np.int32)
        for index in range(16):
            row, col = divmod(index, 4)
            labels[row * 24 : row * 24 + side, col * 24 : col * 24 + side] = index + 1
        return labels

    merged, apart = squares(4), squares(2)  # 16 px objects at the image's scale, 4 px nuclei once apart
    looks = []

    def instances(maps, zoom=1.0):
        looks.append(zoom)
        return merged if zoom == 1 else apart

    monkeypatch.setattr(segmenter, "instances", instances)
    result = segmenter.segment(image)
    assert result.zoom == pytest.approx(4.0) and looks[:2] == [1.0, 2.0]
    assert "about 1 µm/px" in result.scale_note  # 0.25 µm/px times 4


def test_too_few_nuclei_at_the_native_scale_get_a_look_at_twice_it(monkeypatch):
    """Nuclei a few pixels across (a 10x fluorescence image) go unseen at the native scale: at 2x, enough of
    them of the model's size are kept; enough of them too large there (a sparse image of big nuclei) are not."""
    segmenter = Segmenter(tiny_model(mpp=0.25, nucleus_area=64.0, min_size=0.1).eval())
    image, _ = synthetic_nuclei(size=96, count=4)

    def squares(count: int, side: int) -> np.ndarray:
        labels = np.zeros((96, 96), np.int32)
        for index in range(count):
            row, col = divmod(index, 4)
            labels[row * 24 : row * 24 + side, col * 24 : col * 24 + side] = index + 1
        return labels

    for closer, zoom in ((squares(16, 4), 2.0), (squares(16, 12), 1.0)):  # 4x4 px: 64 model px at 2x
        looks = []

        def instances(maps, zoom=1.0, closer=closer, looks=looks):
            looks.append(zoom)
            return squares(3, 4) if zoom == 1 else closer  # 3 objects at the native scale: too few

        monkeypatch.setattr(segmenter, "instances", instances)
        result = segmenter.segment(image)
        assert result.zoom == zoom and looks[:2] == [1.0, 2.0]
    assert "too few nuclei to estimate" in result.scale_note


def test_batch_size_does_not_change_the_maps(tiny_segmenter):
    image, _ = synthetic_nuclei(size=96, count=6)
    np.testing.assert_allclose(
        tiny_segmenter.with_options(batch_size=1).maps(image), tiny_segmenter.maps(image), atol=1e-5
    )


def test_test_time_augmentation_is_equivariant(tiny_segmenter):
    """The averaged maps of a turned image are the turned maps: every view is turned back before averaging."""
    image, _ = synthetic_nuclei(size=64, count=5)
    tta = tiny_segmenter.with_options(tta=True)
    plain, averaged = tiny_segmenter.maps(image), tta.maps(image)
    assert averaged.shape == plain.shape and not np.allclose(averaged, plain)
    turned = tta.maps(np.ascontiguousarray(np.rot90(image)))
    np.testing.assert_allclose(np.rot90(averaged, axes=(1, 2)), turned, atol=1e-4)
    with pytest.raises(InputError, match="test-time augmentation"):
        tta.maps(image, points=(np.array([[5.0, 5.0]]), None))


def test_a_model_with_hv_maps_returns_them_averaged_over_views():
    model = tiny_model(hv_maps=True).eval()
    image, _ = synthetic_nuclei(size=64, count=5)
    segmenter = Segmenter(model, tta=True, instances="fast")
    result = segmenter.segment(image)
    assert result.maps.shape == (len(model.config.map_names), 64, 64)
    turned = segmenter.maps(np.ascontiguousarray(np.rot90(image)))
    # turning the image turns the offsets too: (h, v) becomes (v, -h)
    expected = np.rot90(result.maps, axes=(1, 2)).copy()
    expected[4:] = expected[5], -expected[4]
    np.testing.assert_allclose(turned, expected, atol=1e-4)


def test_a_semantic_mask_skips_the_hv_head_and_matches_the_mask_of_the_full_maps():
    model = tiny_model(hv_maps=True).eval()
    image, _ = synthetic_nuclei(size=64, count=5)
    segmenter = Segmenter(model)
    semantic = segmenter.segment(image)
    full = segmenter.maps(image)
    assert semantic.maps.shape == (len(MAP_NAMES), 64, 64) and len(full) == len(model.config.map_names)
    np.testing.assert_allclose(semantic.maps, full[: len(MAP_NAMES)], atol=1e-6)
    with pytest.raises(InputError, match="lack the model's HV maps"):
        segmenter.instances(semantic.maps)


def test_instances_of_a_model_with_hv_maps_use_them_with_its_weight_or_the_options():
    """Two touching disks under one centre core: the model's HV weight splits them, the option 0 does not."""
    from sac.data import instance_distance_map
    from sac.train import hv_targets

    yy, xx = np.mgrid[:48, :64]
    truth = np.where((yy - 24) ** 2 + (xx - 20) ** 2 <= 100, 1, 0)
    truth[(yy - 24) ** 2 + (xx - 36) ** 2 <= 100] = 2
    foreground = (truth > 0).astype(np.float32)
    centre = instance_distance_map((truth > 0).astype(np.int32))
    hv = hv_targets(torch.from_numpy(truth).long()[None])[0].numpy()
    maps = np.concatenate([[foreground, foreground, centre, foreground], hv])
    segmenter = Segmenter(tiny_model(hv_maps=True, hv_weight=2.0), seed_threshold=0.2)
    assert segmenter.instances(maps).max() == 2
    assert segmenter.with_options(hv_weight=0.0).instances(maps).max() == 1
    # maps of an image seen at 4x its size: the boundaries' slopes per pixel are 4x steeper than the model's
    assert segmenter.instances(maps, zoom=4.0).max() == 1


def test_two_views_average_the_image_and_its_mirror(tiny_segmenter):
    """The cheapest augmentation: the maps of the image and of its mirror (flipped back), so a mirrored image
    gets mirrored maps."""
    image, _ = synthetic_nuclei(size=64, count=5)
    two = tiny_segmenter.with_options(tta=2)
    plain, mirrored = tiny_segmenter.maps(image), tiny_segmenter.maps(np.ascontiguousarray(image[:, ::-1]))
    np.testing.assert_allclose(two.maps(image), (plain + mirrored[:, :, ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(
        two.maps(np.ascontiguousarray(image[:, ::-1])), two.maps(image)[:, :, ::-1], atol=1e-5
    )


def test_a_model_that_prefers_tta_gets_it_unless_the_user_says_no():
    """The gland model averages its maps by default (chosen on validation); tta=False still turns it off."""
    model = tiny_model(tta=True).eval()
    image, _ = synthetic_nuclei(size=64, count=5)
    default, on, off = Segmenter(model), Segmenter(model, tta=True), Segmenter(model, tta=False)
    assert (default.tta, on.tta, off.tta) == (8, 8, 1)
    np.testing.assert_array_equal(default.maps(image), on.maps(image))
    assert not np.allclose(default.maps(image), off.maps(image))


def test_a_model_run_at_another_scale_keeps_its_reference_area_in_microns():
    config = tiny_model(mpp=1.0, nucleus_area=100.0).config.at_scale(2.0)
    assert config.mpp == 2.0 and config.nucleus_area == 25.0


def test_a_model_that_cannot_estimate_scale_says_so_and_keeps_the_native_scale():
    """The gland model's case: no pixel size known, and object sizes do not tell the scale."""
    segmenter = Segmenter(tiny_model(mpp=0.5, nucleus_area=50.0, estimate_scale=False).eval())
    image, _ = synthetic_nuclei(64)
    with pytest.warns(UserWarning, match="cannot estimate it: assuming 0.5 µm/px; give --mpp"):
        result = segmenter.segment(image)
    assert result.zoom == 1 and result.mpp is None and "assumed 0.5 µm/px" in result.scale_note
    assert segmenter.segment(image, mpp=0.25).zoom == 0.5  # a known pixel size is used as ever


def test_nothing_is_segmented_where_an_rgba_image_is_transparent(tiny_segmenter):
    rgb, _ = synthetic_nuclei(size=64, count=8)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :24] = 0  # e.g. an annotation exported with the tissue outside it cleared
    rgba = np.dstack([rgb, alpha])
    everywhere = tiny_segmenter.with_options(threshold=0.0)  # every pixel is foreground to the model
    mask = everywhere.predict(rgba)
    np.testing.assert_array_equal(mask, alpha > 0)
    labels = everywhere.predict(rgba, instances=True)
    assert not labels[:, :24].any() and labels[:, 24:].all()
    alpha[40, :] = 0  # a transparent line: what it cuts apart become separate nuclei
    labels = everywhere.predict(np.dstack([rgb, alpha]), instances=True)
    assert not labels[40].any() and all(
        ndimage.label(labels == i)[1] == 1 for i in np.unique(labels[labels > 0])
    )
    np.testing.assert_array_equal(everywhere.predict(rgb), np.ones(rgb.shape[:2], bool))  # RGB: no alpha
    opaque = np.dstack([rgb, np.zeros_like(alpha)])  # alpha 0 everywhere means nothing: ignored
    np.testing.assert_array_equal(everywhere.predict(opaque), everywhere.predict(rgb))


def test_the_channel_option_picks_a_channel_of_channels_first_arrays_too(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    image[..., 0] = 255  # channel 1 is the one that holds the nuclei
    pick = tiny_segmenter.with_options(channel=1, mpp="native")
    last, first = pick.predict(image), pick.predict(np.moveaxis(image, -1, 0))
    assert first.shape == last.shape == (64, 64)
    np.testing.assert_array_equal(first, last)
    np.testing.assert_array_equal(last, tiny_segmenter.with_options(mpp="native").predict(image[..., 1]))


def test_a_two_channel_array_warns_which_channel_is_segmented(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    two = np.stack([image[..., 0], image[..., 1]])  # e.g. (cytoplasm, DAPI), channels first
    with pytest.warns(
        UserWarning, match=r"2 channels \(shape \(64, 64, 2\)\): segmenting channel 0; give channel="
    ):
        tiny_segmenter.predict(two)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_segmenter.predict(two, channel=1)  # chosen: no warning


def test_a_mode_is_not_an_images_pixel_size(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    with pytest.raises(InputError, match=r"mpp='native': give this image's pixel size .* with_options"):
        tiny_segmenter.predict(image, mpp="native")


def test_correct_applies_a_round_of_clicks_to_a_result_without_another_pass(tiny_segmenter, monkeypatch):
    square_answers(monkeypatch)
    image, truth = synthetic_nuclei(size=64, count=6)
    fast = tiny_segmenter.with_options(instances=True)
    automatic = fast.segment(image)._replace(labels=truth.astype(np.int32), mask=truth > 0)  # as if found
    first = fast.correct(image, automatic, ([[10.5, 50.5]], []))
    with pytest.raises(InputError, match="not the one the segmentation was made from"):
        fast.correct(image[:32], first, ([[5, 5]], []))
    with pytest.raises(InputError, match="needs a segmentation with labels"):
        tiny_segmenter.correct(image, tiny_segmenter.segment(image), ([[5, 5]], []))
    passes = []
    monkeypatch.setattr(Segmenter, "maps", lambda *args, **kwargs: passes.append(1))
    removed = min(set(np.unique(first.labels)) - {0, *first.clicked})  # an automatic nucleus
    target = np.argwhere(first.labels == removed)[0]
    second = fast.correct(image, first, ([[40.5, 8.5]], [[target[1] + 0.5, target[0] + 0.5]]))
    assert not passes  # no automatic pass: only the clicks were answered
    assert removed not in second.labels
    assert len(second.clicked) == 2 and first.clicked[0] in second.clicked  # both rounds' nuclei
    np.testing.assert_array_equal(second.mask, second.labels > 0)


def test_a_later_round_keeps_apart_from_the_nuclei_earlier_rounds_clicked(tiny_segmenter, monkeypatch):
    """As when both clicks are given at once: the earlier click is a negative of SAM for the new one (nothing
    under it is removed), so a new click beside an earlier nucleus does not swallow it."""
    import sac.instances

    told = []
    answer = sac.instances.segment_at_points

    def spy(model, image, clicks, negatives, batch_size=64):
        told.append(negatives[negatives[..., 0] >= 0].tolist())
        return answer(model, image, clicks, negatives, batch_size)

    square_answers(monkeypatch)
    answer = sac.instances.segment_at_points
    monkeypatch.setattr(sac.instances, "segment_at_points", spy)
    image, truth = synthetic_nuclei(size=64, count=6)
    fast = tiny_segmenter.with_options(instances=True, mpp="native")
    automatic = fast.segment(image)._replace(labels=truth.astype(np.int32), mask=truth > 0)
    first = fast.correct(image, automatic, ([[20.5, 20.5]], []))
    second = fast.correct(image, first, ([[30.5, 24.5]], []))
    assert [20, 20] not in told[0] and [20, 20] in told[
        1
    ]  # round 2 was told of round 1's click (row, column)
    assert second.points[0].tolist() == [[20.5, 20.5], [30.5, 24.5]] and second.points[1] is None
    together = fast.segment(image, ([[20.5, 20.5], [30.5, 24.5]], []))
    assert together.points[0].tolist() == second.points[0].tolist()
    assert len(second.clicked) == 2 and second.labels[20, 20] != second.labels[24, 30]


def test_a_four_channel_array_whose_fourth_is_no_alpha_warns(tiny_segmenter):
    image, _ = synthetic_nuclei(size=64, count=4)
    marker = np.dstack([image, np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)])
    with pytest.warns(UserWarning, match="its 4th channel is not an alpha"):
        tiny_segmenter.predict(marker)
    alpha = np.dstack([image, np.where(np.arange(64) < 20, 0, 255).astype(np.uint8)[None].repeat(64, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_segmenter.predict(alpha)  # a true alpha: no warning
