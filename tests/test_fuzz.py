"""Fuzzing the readers with mutated files, and hypothesis properties of conversion and export round trips."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage import measure

from conftest import encode_image, synthetic_nuclei, write_clicks
from sac.clicks import read_points_file
from sac.export import TABLE_COLUMNS, geojson_to_labels, labels_to_geojson, nuclei_table, write_nuclei_csv
from sac.io import InputError, read_image, read_labels, to_rgb_uint8

MUTANTS = 300
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
fewer = settings(fast, max_examples=25)  # each example measures or outlines a dozen nuclei


def _seed_files() -> dict[str, bytes]:
    """Valid files of every format and bit depth the readers take, to mutate."""
    rgb, _ = synthetic_nuclei(size=24, count=3)
    grey, rgba = rgb[..., 0], np.dstack([rgb, rgb[..., 1]])
    return {
        "rgb.png": encode_image(rgb, ".png"),
        "grey.png": encode_image(grey, ".png"),
        "rgba.png": encode_image(rgba, ".png"),
        "grey16.png": encode_image(grey.astype(np.uint16) * 257, ".png"),
        "rgb.jpg": encode_image(rgb, ".jpg"),
        "grey.jpg": encode_image(grey, ".jpg"),
        "rgb.tif": encode_image(rgb, ".tif"),
        "grey.tif": encode_image(grey, ".tif"),
        "rgba.tif": encode_image(rgba, ".tif"),
        "grey16.tif": encode_image(grey.astype(np.uint16) * 257, ".tif"),
        "rgb16-zlib.tif": encode_image(rgb.astype(np.uint16) * 257, ".tif", compression="zlib"),
        "float.tif": encode_image(grey.astype(np.float32) / 255, ".tif"),
    }


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random bit flips, truncations or insertions of random bytes."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(3)
        if kind == 0:
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del data[rng.integers(1, len(data)) :]
        else:
            at = int(rng.integers(len(data) + 1))
            data[at:at] = rng.bytes(int(rng.integers(1, 16)))
    return bytes(data)


@pytest.mark.parametrize(
    ("reader", "valid"),
    [
        (read_image, lambda out: out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3),
        (read_labels, lambda out: out.dtype == np.int32 and out.ndim == 2),
    ],
    ids=["read_image", "read_labels"],
)
def test_mutated_files_decode_or_raise_input_error(tmp_path, reader, valid):
    seeds, rng = _seed_files(), np.random.default_rng(2024)
    if reader is read_labels:  # JPEG masks are refused whole (lossy label values): no mutant could be decoded
        seeds = {name: data for name, data in seeds.items() if not name.endswith(".jpg")}
    names, outcomes = list(seeds), {"decoded": 0, "refused": 0}
    for index in range(MUTANTS):
        name = names[index % len(names)]
        path = tmp_path / f"{index}-{name}"
        path.write_bytes(_mutate(seeds[name], rng))
        try:
            out = reader(path)
        except InputError as error:
            assert str(path) in str(error) and "\n" not in str(error), str(error)
            outcomes["refused"] += 1
        else:
            assert valid(out), (path.name, out.dtype, out.shape)
            outcomes["decoded"] += 1
    # a fuzz that only ever produced garbage or only harmless changes would prove little
    assert min(outcomes.values()) > MUTANTS // 20, outcomes


# --------------------------------------------------------------------------- image conversion
# every dtype but uint8 and bool is stretched between percentiles (floats too, unless within [0, 1])
STRETCHED_INTEGERS = ["int8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
STRETCHED_DTYPES = [*STRETCHED_INTEGERS, "float16", "float32", "float64"]


@st.composite
def any_image(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int], bool]:
    """A finite array in any accepted layout: (image, its (H, W), whether it is grey)."""
    dtype = np.dtype(draw(st.sampled_from(["bool", "uint8", *STRETCHED_DTYPES])))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([0, 1, 2, 3, 4]))
    shape = (height, width) if channels == 0 else (height, width, channels)
    finite = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    array = draw(arrays(dtype, shape, elements=finite if dtype.kind == "f" else None))
    if channels and width > 4 and draw(st.booleans()):
        array = np.moveaxis(array, -1, 0)
    return array, (height, width), channels <= 2


@fast
@given(any_image())
def test_any_supported_array_becomes_uint8_rgb(case):
    array, size, grey = case
    out = to_rgb_uint8(array)
    assert out.dtype == np.uint8 and out.shape == (*size, 3)
    if grey:
        assert (out == out[..., :1]).all()


@st.composite
def two_level_images(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """An image of two values in a dtype that is stretched (not uint8, bool, integers within 0-255 or floats in
    [0, 1]), and the mask of its higher value."""
    dtype = np.dtype(draw(st.sampled_from(STRETCHED_DTYPES)))
    if dtype.kind == "f":
        values = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    else:
        values = st.integers(int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
    if dtype.kind == "f" and low >= 0 and high <= 1:
        high = 2.0
    if dtype.kind in "iu" and low >= 0 and high <= 255:  # 8-bit values in a wider type are taken as they are
        low, high = (low, 256) if dtype.kind == "u" else (-1, high)
    order, count = draw(st.permutations(range(15))), draw(st.integers(1, 14))
    pattern = np.isin(np.arange(15), order[:count]).reshape(3, 5)
    return np.where(pattern, np.array(high, dtype), np.array(low, dtype)), pattern


def _two_levels(low: float, high: float, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A one-row :func:`two_level_images` case."""
    return np.array([[low, high]], dtype), np.array([[False, True]])


@fast
@given(two_level_images())
@example(_two_levels(-1.7e308, 1.7e308, "float64"))  # the span overflows
@example(_two_levels(1e300, 2e300, "float64"))  # beyond float32
@example(_two_levels(1.0, 1.0 + 1e-12, "float64"))  # closer than float32 resolves
@example(_two_levels(2**30, 2**30 + 1, "int32"))
def test_two_levels_span_black_to_white(case):
    image, pattern = case
    out = to_rgb_uint8(image)
    assert (out[pattern] == 255).all() and (out[~pattern] == 0).all()


# --------------------------------------------------------------------------- label reading
LABEL_FORMATS = [(dtype, ".png") for dtype in ("uint8", "uint16")] + [
    (dtype, ".tif") for dtype in ("uint16", "int32", "uint32", "uint64")
]


@st.composite
def gappy_labels(draw: st.DrawFn) -> tuple[np.ndarray, str]:
    """Labels with arbitrary (gappy, huge) ids in a dtype the suffix can store: (labels, suffix)."""
    dtype, suffix = draw(st.sampled_from(LABEL_FORMATS))
    ids = draw(st.lists(st.integers(1, int(np.iinfo(dtype).max)), min_size=1, max_size=6, unique=True))
    index = draw(arrays(np.int64, (5, 7), elements=st.integers(0, len(ids))))
    return np.array([0, *ids], dtype)[index], suffix


@fast
@given(gappy_labels())
@example((np.array([[0, 2**63 + 5], [7, 7]], np.uint64), ".tif"))  # negative as int64
def test_read_labels_numbers_any_ids_from_one(tmp_path, case):
    labels, suffix = case
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(encode_image(labels, suffix))
    pieces = measure.label(labels > 0, return_num=True)[1]  # as read_labels counts them (8-connected)
    binary = np.unique(labels[labels > 0]).size == 1 and pieces > 1  # one id in pieces: a binary mask
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_labels(path)
    assert out.dtype == np.int32 and out.shape == labels.shape
    assert any("binary mask" in str(w.message) for w in caught) == binary
    pairs = set(zip(labels.ravel().tolist(), out.ravel().tolist(), strict=True))
    if binary:  # split into one instance per connected piece
        assert len({new for _, new in pairs if new}) == pieces
        return
    assert len(pairs) == len({old for old, _ in pairs}) == len({new for _, new in pairs}), "not one-to-one"
    assert all((old == 0) == (new == 0) for old, new in pairs)
    ids = sorted(new for _, new in pairs if new)
    assert ids == list(range(1, len(ids) + 1))


# --------------------------------------------------------------------------- export round trips
@st.composite
def boxes(draw: st.DrawFn) -> np.ndarray:
    """Separate rectangles of any size down to one pixel, with arbitrary ids, one per 8x8 cell."""
    labels = np.zeros((24, 32), np.int32)
    ids = iter(draw(st.lists(st.integers(1, 10**6), min_size=12, max_size=12, unique=True)))
    for top in range(0, 24, 8):
        for left in range(0, 32, 8):
            label = next(ids)
            if draw(st.booleans()):
                r0, c0 = draw(st.integers(0, 6)), draw(st.integers(0, 6))
                r1, c1 = draw(st.integers(r0 + 1, 7)), draw(st.integers(c0 + 1, 7))
                labels[top + r0 : top + r1, left + c0 : left + c1] = label
    return labels


@fewer
@given(boxes())
def test_geojson_round_trip_is_exact_for_rectangles(labels):
    collection = labels_to_geojson(labels)
    np.testing.assert_array_equal(geojson_to_labels(collection, labels.shape), labels)
    areas = {
        feature["properties"]["id"]: feature["properties"]["measurements"]["area"]
        for feature in collection["features"]
    }
    assert areas == {label: int((labels == label).sum()) for label in np.unique(labels[labels > 0])}


@fewer
@given(boxes(), st.booleans())
def test_nuclei_csv_reads_back_as_the_table(tmp_path, labels, with_image):
    image = (
        np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8) if with_image else None
    )
    write_nuclei_csv(tmp_path / "nuclei.csv", labels, image)
    with open(tmp_path / "nuclei.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    intensity = ("mean_red", "mean_green", "mean_blue") if with_image else ()
    assert tuple(reader.fieldnames) == (*TABLE_COLUMNS, *intensity)
    expected = nuclei_table(labels, image)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            if key == "image":
                assert row[key] == value
                continue
            got = float(row[key])
            assert got == value or (math.isnan(got) and math.isnan(value)), key


coordinate = st.floats(-1e6, 1e6, width=32)
finite_points = st.lists(st.tuples(coordinate, coordinate), max_size=5)


@fast
@given(finite_points, finite_points, st.sampled_from([".csv", ".json"]))
def test_points_file_round_trip_is_exact(tmp_path, positive, negative, suffix):
    path = tmp_path / f"points{suffix}"
    write_clicks(path, positive, negative)
    read_positive, read_negative = read_points_file(path)
    assert read_positive.tolist() == [list(point) for point in positive]
    assert read_negative.tolist() == [list(point) for point in negative]
