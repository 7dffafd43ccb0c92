"""Image and mask reading: every supported format and every error path, on files written into tmp_path."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sac.io import (
    InputError,
    atomic_write,
    check_pair,
    check_state_dict,
    first_line,
    is_channel_first,
    leftover_temporaries,
    list_images,
    read_image,
    read_input,
    read_labels,
    read_pixel_size,
    sha256sum,
    stretch,
    to_rgb_uint8,
    transparent_pixels,
    write_json,
)


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path, rgb):
    out = read_image(_png(tmp_path / "a.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (12, 9, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".jpg"])
def test_other_formats(tmp_path, rgb, suffix):
    path = tmp_path / f"a{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, rgb)
    else:
        Image.fromarray(rgb).save(path)
    out = read_image(path)
    assert out.shape == (12, 9, 3) and out.dtype == np.uint8
    if suffix != ".jpg":
        np.testing.assert_array_equal(out, rgb)


def test_rgba_drops_alpha(tmp_path, rgb):
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    np.testing.assert_array_equal(read_image(_png(tmp_path / "a.png", rgba)), rgb)


def test_sixteen_bit_grey_png_is_stretched_to_grey_rgb(tmp_path):
    grey = np.linspace(0, 4000, 200, dtype=np.uint16).reshape(10, 20)
    out = read_image(_png(tmp_path / "g.png", grey))
    assert out.shape == (10, 20, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert out.min() == 0 and out.max() == 255


def test_palette_png_becomes_rgb(tmp_path, rgb):
    path = tmp_path / "p.png"
    Image.fromarray(rgb).convert("P").save(path)
    assert read_image(path).shape == (12, 9, 3)


def test_grey_alpha_png_uses_first_channel(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, np.full_like(grey, 7)]), mode="LA").save(path)
    np.testing.assert_array_equal(read_image(path)[..., 1], grey)


def test_tiff_with_singleton_axes(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    tifffile.imwrite(tmp_path / "a.tif", grey[..., None])
    tifffile.imwrite(tmp_path / "b.tiff", grey[None, None])
    for name in ("a.tif", "b.tiff"):
        np.testing.assert_array_equal(read_image(tmp_path / name)[..., 2], grey)


def test_channel_first_tiff_is_channels_not_colour(tmp_path, rgb):
    """Three grey planes are three channels, not an RGB image: the first is used, with a warning naming them."""
    tifffile.imwrite(tmp_path / "a.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    with pytest.warns(UserWarning, match="3 channels .* no --channel: using channel 0"):
        np.testing.assert_array_equal(read_image(tmp_path / "a.tif")[..., 1], rgb[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif", channel=2)[..., 0], rgb[..., 2])


def test_one_by_n_image_is_read(tmp_path):
    assert read_image(_png(tmp_path / "line.png", np.zeros((1, 40), np.uint8))).shape == (1, 40, 3)


def test_float_tiff_in_unit_range_scaled_by_255(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_or_inf(tmp_path, bad):
    data = np.ones((4, 4), np.float32)
    data[1, 2] = bad
    tifffile.imwrite(tmp_path / "f.tif", data)
    with pytest.raises(InputError, match=r"f\.tif.*NaN or Inf"):
        read_image(tmp_path / "f.tif")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "e.png").touch()
    with pytest.raises(InputError, match=r"e\.png: empty file"):
        read_image(tmp_path / "e.png")


def test_truncated_png(tmp_path, rgb):
    data = (_png(tmp_path / "full.png", rgb)).read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.png: cannot decode image") as info:
        read_image(tmp_path / "t.png")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["junk.png", "junk.tif"])
def test_random_bytes(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(InputError, match="cannot decode image"):
        read_image(tmp_path / name)


def test_folder_is_not_a_file(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_image(tmp_path / "d.png")


def test_stack_with_many_channels_is_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((7, 8, 9), np.uint8))
    with pytest.raises(InputError, match=r"s\.tif: a stack of 7 planes"):
        read_image(tmp_path / "s.tif")


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 128, 255]], np.uint8), [0, 128, 255]),
        (np.array([[False, True, True]]), [0, 255, 255]),
        (np.array([[0.0, 0.25, 1.0]], np.float64), [0, 64, 255]),
        (np.array([[0.0, 0.01, 0.02]], np.float32), [0, 128, 255]),  # dim floats: stretched, not x255
        (np.array([[-5.0, 0.0, 5.0]], np.float32), [0, 128, 255]),
        (np.array([[1000, 1500, 2000]], np.uint16), [0, 128, 255]),
        (np.array([[-70000, 0, 70000]], np.int32), [0, 128, 255]),
        (np.array([[700, 700, 700]], np.uint16), [0, 0, 0]),
        (np.array([[0, 7, 39]], np.uint16), [0, 7, 39]),  # 8-bit values in 16 bits: as the 8-bit image
        (np.array([[0, 128, 255]], np.int64), [0, 128, 255]),  # a Python list's ints
    ],
)
def test_to_rgb_uint8_dtypes(array, expected):
    out = to_rgb_uint8(array)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_to_rgb_uint8_robust_to_a_hot_pixel():
    data = np.full((100, 100), 1000, np.uint16)
    data[:, 50:] = 2000
    data[0, 0] = 65535
    assert to_rgb_uint8(data)[50, 99, 0] == 255


def test_to_rgb_uint8_keeps_uint8_rgb_unchanged(rgb):
    np.testing.assert_array_equal(to_rgb_uint8(rgb), rgb)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((3, 20, 30), True), ((4, 5, 6), True), ((20, 30, 3), False), ((3, 4, 4), False), ((20, 30), False)],
)
def test_is_channel_first(shape, expected):
    assert is_channel_first(shape) is expected


def test_stretch_maps_a_range_to_unit_interval():
    data = np.array([[1000, 1500, 2000, 3000]], np.uint16)
    np.testing.assert_allclose(stretch(data, (1000, 2000)), [[0, 0.5, 1, 1]])
    np.testing.assert_allclose(stretch(data, (0, 4000)), [[0.25, 0.375, 0.5, 0.75]])
    assert stretch(data).min() == 0 and stretch(data).max() == 1  # default: the image's robust range
    assert not stretch(data, (5, 5)).any()  # an empty range is black, not a division by zero


def test_to_rgb_uint8_with_a_fixed_range():
    """A whole slide's range, so that every block gets the same contrast, whatever its own values."""
    block = np.array([[1500, 1750, 2000]], np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(block, value_range=(1000, 2000))[0, :, 0], [128, 191, 255])
    np.testing.assert_array_equal(to_rgb_uint8(block)[0, :, 0], [0, 128, 255])
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)  # floats in [0, 1] too are scaled by the given range
    np.testing.assert_array_equal(to_rgb_uint8(unit, value_range=(0.0, 2.0))[0, :, 0], [0, 64, 128])
    uint8 = np.array([[0, 128, 255]], np.uint8)  # 8-bit data is used as it is
    np.testing.assert_array_equal(to_rgb_uint8(uint8, value_range=(0, 1))[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((0, 5), np.uint8), "empty image"),
        (np.zeros((5, 0, 3), np.uint8), "empty image"),
        (np.array([[1.0, np.nan]]), "image contains NaN or Inf"),
        (np.zeros((4, 4), np.complex64), "unsupported data type"),
        (np.zeros(5, np.uint8), "unsupported image shape"),
        (np.zeros((2, 3, 4, 5), np.uint8), "unsupported image shape"),
    ],
)
def test_to_rgb_uint8_rejects(array, match):
    with pytest.raises(InputError, match=f"^mine: {match}"):
        to_rgb_uint8(array, name="mine")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([[0, 5, 5], [900, 0, 5]], [[0, 1, 1], [2, 0, 1]]),
        ([[2, 2, 3], [3, 4, 4]], [[1, 1, 2], [2, 3, 3]]),
        ([[0, 2, 2], [1, 0, 3]], [[0, 2, 2], [1, 0, 3]]),
        ([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]),
    ],
)
def test_read_labels_numbers_ids_from_one(tmp_path, labels, expected):
    out = read_labels(_png(tmp_path / "m.png", np.array(labels, np.uint16)))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_read_labels_tiff_int32_with_singleton_axis(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.array([[0, 3], [3, 70000]], np.int32)[..., None])
    np.testing.assert_array_equal(read_labels(tmp_path / "m.tif"), [[0, 1], [1, 2]])


def test_read_labels_rejects_rgb_mask(tmp_path, rgb):
    with pytest.raises(InputError, match=r"m\.png: a mask must be a single-channel"):
        read_labels(_png(tmp_path / "m.png", rgb))


def test_read_labels_rejects_negative(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.array([[0, -1]], np.int16))
    with pytest.raises(InputError, match=r"m\.tif: mask contains negative labels"):
        read_labels(tmp_path / "m.tif")


def test_read_labels_rejects_float(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.ones((3, 3), np.float32))
    with pytest.raises(InputError, match="must be integers"):
        read_labels(tmp_path / "m.tif")


def test_a_jpeg_mask_is_refused_and_an_inverted_binary_mask_questioned(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = mask[25:35, 20:30] = 255
    Image.fromarray(mask).save(
        tmp_path / "m.jpg", quality=90
    )  # lossy: the 0/255 come back as many grey levels
    with pytest.raises(InputError, match=r"m\.jpg: a JPEG mask: its lossy compression changes label values"):
        read_labels(tmp_path / "m.jpg")
    (tmp_path / "m.jpg").rename(tmp_path / "named.png")  # by content, whatever the name says
    with pytest.raises(InputError, match="a JPEG mask"):
        read_labels(tmp_path / "named.png")
    with pytest.warns(
        UserWarning, match=r"inverted.png: one piece of the mask covers 88% of the image, from edge"
    ):
        read_labels(_png(tmp_path / "inverted.png", 255 - mask))
    dense = np.zeros((40, 40), np.uint8)
    dense[2:38, 2:19] = dense[2:38, 21:38] = 255  # large objects, but none spanning the image: not questioned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_labels(_png(tmp_path / "dense.png", dense))
    assert not any("inverted" in str(warning.message) for warning in caught)


def test_an_8_bit_mask_whose_ids_wrapped_past_255_is_questioned(tmp_path):
    labels = np.zeros((64, 64), np.uint16)
    for index, (row, col) in enumerate(np.ndindex(16, 16)):  # 256 nuclei of 2x2 pixels, 4 apart
        labels[row * 4 : row * 4 + 2, col * 4 : col * 4 + 2] = index + 1
    labels[62:, 62:] = 257  # one more: saved as 8 bits it becomes id 1, far from nucleus 1
    with pytest.warns(
        UserWarning, match=r"wrapped.png: an 8-bit mask of 255 ids, 1 of them repeated.*wrapped"
    ):
        read_labels(_png(tmp_path / "wrapped.png", (labels % 256).astype(np.uint8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same as 16 bits: nothing to question
        read_labels(_png(tmp_path / "sixteen.png", labels))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nxxxx"])
def test_read_labels_bad_files(tmp_path, content):
    (tmp_path / "m.png").write_bytes(content)
    with pytest.raises(InputError, match=r"m\.png: (empty file|cannot decode)"):
        read_labels(tmp_path / "m.png")


def test_list_images(tmp_path, rgb):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.PNG", "a.tif", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()
    single = _png(tmp_path / "c.jpg", rgb)
    assert list_images([folder, single, folder / "a.tif"]) == [folder / "a.tif", folder / "b.PNG", single]


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list_images([tmp_path / "missing"])
    with pytest.raises(InputError, match="folder contains no images"):
        list_images([tmp_path])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported file type"):
        list_images([tmp_path / "notes.txt"])


def test_check_pair(rgb):
    check_pair(rgb, np.zeros((12, 9), np.int32), "i.png", "m.png")
    with pytest.raises(InputError, match=r"mask size 9x12 differs from image size 12x9 \(m\.png vs i\.png\)"):
        check_pair(rgb, np.zeros((9, 12), np.int32), "i.png", "m.png")


def test_first_line():
    assert first_line(ValueError("bad header\nat byte 12")) == "bad header"
    assert first_line(OSError("x" * 300)) == "x" * 200
    assert first_line(OSError("x" * 300), limit=10) == "x" * 10
    assert first_line(KeyError()) == "KeyError" and first_line(RuntimeError("  \n")) == "RuntimeError"


def test_sha256sum(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)  # more than one read block
    (tmp_path / "blob").write_bytes(data)
    assert sha256sum(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert sha256sum(str(tmp_path / "blob")) == hashlib.sha256(data).hexdigest()


def test_check_state_dict():
    expected = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    check_state_dict({"a.weight": torch.ones(2, 3), "b.bias": torch.ones(4)}, expected, "ok")
    problems = [
        ({"a.weight": torch.zeros(2, 3)}, "1 missing"),
        ({**expected, "c.weight": torch.zeros(1)}, "1 unexpected"),
        (
            {"a.weight": torch.zeros(3, 2), "b.bias": torch.zeros(4)},
            r"1 of wrong shape \(e\.g\. \[\('a\.weight', \(3, 2\)\)\]\)",
        ),
    ]
    for loaded, detail in problems:
        with pytest.raises(
            InputError, match=rf"^weights\.bin: weights do not fit the architecture: .*{detail}"
        ):
            check_state_dict(loaded, expected, "weights.bin")
    with pytest.raises(InputError) as info:
        check_state_dict({}, expected, "weights.bin")
    assert "\n" not in str(info.value)


def test_pixel_size_from_the_three_tiff_records(tmp_path):
    """OME PhysicalSizeX, Aperio's MPP in the description, ImageJ/TIFF resolution tags; DPI defaults ignored."""
    image = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(
        tmp_path / "a.ome.tif", image, metadata={"PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "µm"}
    )
    tifffile.imwrite(
        tmp_path / "b.svs", image, description="Aperio Image Library v12\n1000x800 |AppMag = 20|MPP = 0.499"
    )
    tifffile.imwrite(
        tmp_path / "c.tif", image, imagej=True, resolution=(2.5, 2.5), metadata={"unit": "micron"}
    )
    tifffile.imwrite(tmp_path / "d.tif", image, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "e.tif", image, resolution=(72, 72), resolutionunit="INCH")
    Image.fromarray(image).save(tmp_path / "f.png", dpi=(300, 300))
    found = {
        name: read_pixel_size(tmp_path / name)
        for name in ("a.ome.tif", "b.svs", "c.tif", "d.tif", "e.tif", "f.png")
    }
    assert found["a.ome.tif"] == (pytest.approx(0.3), "OME-TIFF PhysicalSizeX")
    assert found["b.svs"] == (pytest.approx(0.499), "Aperio SVS MPP")
    assert found["c.tif"] == (pytest.approx(0.4), "ImageJ TIFF resolution")
    assert found["d.tif"] == (pytest.approx(0.5), "TIFF resolution tags")
    assert found["e.tif"] is None and found["f.png"] is None  # 72 dpi is no pixel size; PNG dpi neither


def test_read_input_axes_channels_and_names(tmp_path):
    planes = np.stack([np.full((8, 9), 10, np.uint16), np.full((8, 9), 20, np.uint16)])
    tifffile.imwrite(
        tmp_path / "two.ome.tif", planes, metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DAPI"]}}
    )
    with pytest.warns(
        UserWarning, match=r"2 channels \(GFP, DAPI\) and no --channel: using channel 0 \(GFP\)"
    ):
        first = read_input(tmp_path / "two.ome.tif")
    assert first.data.shape == (8, 9) and first.data.max() == 10 and first.raw.shape == (8, 9, 2)
    by_name = read_input(tmp_path / "two.ome.tif", "dapi")
    assert by_name.data.max() == 20 and by_name.note == "channel 1 (DAPI) of 2"
    assert read_input(tmp_path / "two.ome.tif", 1).channel_names == ["GFP", "DAPI"]
    with pytest.raises(InputError, match="no channel named 'Cy5'; channels: GFP, DAPI"):
        read_input(tmp_path / "two.ome.tif", "Cy5")
    with pytest.raises(InputError, match="channel 2 does not exist"):
        read_input(tmp_path / "two.ome.tif", 2)
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 8, 9), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"z\.tif: a Z stack of 3 planes \(axes ZYX\)"):
        read_input(tmp_path / "z.tif")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert read_input(tmp_path / "rgb.png").note == "colour (RGB)"
    fiji = {"axes": "CYX", "Labels": ["GFP", "DAPI"]}  # Fiji's channel labels name channels too
    tifffile.imwrite(tmp_path / "ij.tif", planes, imagej=True, metadata=fiji)
    assert read_input(tmp_path / "ij.tif", "DAPI").note == "channel 1 (DAPI) of 2"


@pytest.mark.parametrize(
    ("samples", "tags", "model_sees", "names"),
    [
        # a grey TIFF of 4 samples is 4 channels: the 4th a marker, not alpha (0 would blank the image there)
        (4, {"photometric": "minisblack"}, "warn", ["0", "1", "2", "3"]),
        (3, {"photometric": "minisblack"}, "warn", ["0", "1", "2"]),
        (2, {"photometric": "minisblack"}, "warn", ["0", "1"]),  # GFP + DAPI, not grey + alpha
        (4, {"photometric": "rgb", "extrasamples": ["unspecified"]}, "rgb", ["red", "green", "blue", "3"]),
        (4, {"photometric": "rgb"}, "rgba", ["red", "green", "blue", "alpha"]),  # tifffile's default: alpha
        (3, {"photometric": "rgb"}, "rgb", ["red", "green", "blue"]),
    ],
)
def test_tiff_samples_are_colour_and_alpha_only_as_its_tags_say(tmp_path, samples, tags, model_sees, names):
    pixels = np.stack([np.full((8, 9), 10 * (i + 1), np.uint8) for i in range(samples)], axis=-1)
    pixels[:, :4, -1] = 0  # the last sample: 0 over the left half
    tifffile.imwrite(tmp_path / "s.tif", pixels, planarconfig="contig", **tags)
    if model_sees == "warn":
        with pytest.warns(
            UserWarning, match=rf"{samples} channels \(0, 1.*\) and no --channel: using channel 0$"
        ):
            found = read_input(tmp_path / "s.tif")
        assert found.data.shape == (8, 9) and found.note == f"channel 0 of {samples}"
    else:
        found = read_input(tmp_path / "s.tif")
        assert found.data.shape == (8, 9, 4 if model_sees == "rgba" else 3) and found.note == "colour (RGB)"
    assert found.channel_names == names and found.raw.shape == (8, 9, samples)
    assert (transparent_pixels(found.data) is not None) == (model_sees == "rgba")


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "run.json"
    write_json(path, {"a": [1, 2]})
    write_json(path, {"where": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"where": str(tmp_path)}
    with pytest.raises(TypeError):
        write_json(path, {"where": tmp_path})  # no default: a value JSON cannot hold is an error ...
    assert json.loads(path.read_text()) == {"where": str(tmp_path)}  # ... and the file is untouched
    assert [f.name for f in path.parent.iterdir()] == ["run.json"]


def test_the_temporary_file_a_killed_write_leaves_is_found(tmp_path):
    target = tmp_path / "out.tif"
    killed = atomic_write(target)
    temporary = killed.__enter__()  # never left: as if the process died while writing
    (tmp_path / ".out.tif.notes").write_text("not ours")
    assert leftover_temporaries(target) == [temporary] and not target.exists()


def test_the_decoder_follows_the_content_not_the_name(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "really_a_png.tif", format="PNG")
    tifffile.imwrite(tmp_path / "really_a_tiff.png", rgb, photometric="rgb")
    for name in ("really_a_png.tif", "really_a_tiff.png"):
        assert np.array_equal(read_image(tmp_path / name), rgb)
    assert read_pixel_size(tmp_path / "really_a_png.tif") is None


def test_a_photos_exif_orientation_is_said_and_its_pixels_kept_as_stored(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (8, 12, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    with pytest.warns(UserWarning, match=r"phone\.jpg: its EXIF orientation \(turned a quarter clockwise\)"):
        assert read_image(tmp_path / "phone.jpg").shape == (8, 12, 3)  # as Fiji, QuPath and napari show it


def test_only_the_first_of_several_images_in_a_tiff_is_segmented_and_that_is_said(tmp_path):
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tif:
        tif.write(np.zeros((4, 4), np.uint8), metadata={"axes": "YX", "Name": "thumbnail"})
        tif.write(np.ones((8, 9), np.uint8), metadata={"axes": "YX", "Name": "main"})
    with pytest.warns(
        UserWarning, match=r"holds 2 images; segmenting the first, thumbnail \(4, 4\), not main"
    ):
        assert read_input(tmp_path / "two.ome.tif").data.shape == (4, 4)


def test_grey_with_alpha_keeps_its_transparency(tmp_path):
    grey = np.full((8, 9), 90, np.uint8)
    alpha = np.full((8, 9), 255, np.uint8)
    alpha[:, :4] = 0
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    found = read_input(tmp_path / "la.png")
    assert found.data.shape == (8, 9, 4) and found.channel_names == ["intensity", "alpha"]
    assert np.array_equal(transparent_pixels(found.data), alpha == 0)
    assert found.note == "grey with alpha" and read_input(tmp_path / "la.png", 0).data.shape == (8, 9)


def test_pixels_that_are_not_square_give_no_pixel_size(tmp_path):
    image = np.zeros((8, 9), np.uint8)
    tifffile.imwrite(tmp_path / "aniso.tif", image, resolution=(40000, 20000), resolutionunit="CENTIMETER")
    with pytest.warns(UserWarning, match=r"not square \(0\.25 µm wide, 0\.5 µm high\)"):
        assert read_pixel_size(tmp_path / "aniso.tif") is None
    tifffile.imwrite(tmp_path / "square.tif", image, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    assert read_pixel_size(tmp_path / "square.tif") == pytest.approx((0.25, "TIFF resolution tags"))


def test_a_stack_names_every_stacked_axis(tmp_path):
    stack = np.zeros((2, 3, 8, 9), np.uint8)
    tifffile.imwrite(tmp_path / "tz.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(
        InputError, match=r"tz\.tif: a Z stack of 3 by a time series of 2 planes \(axes TZYX\)"
    ):
        read_input(tmp_path / "tz.tif")


@pytest.mark.parametrize(
    ("values", "said"), [((0, 255), "only the values 0 and 255"), ((7, 7), "a single value, 7")]
)
def test_a_mask_or_blank_image_is_questioned(values, said):
    from sac.io import warn_if_not_a_micrograph

    image = np.full((8, 9), values[0], np.uint8)
    image[4:] = values[1]
    with pytest.warns(UserWarning, match=f"the image holds {said}: a mask or a blank image"):
        warn_if_not_a_micrograph(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_a_micrograph(np.arange(72, dtype=np.uint8).reshape(8, 9))
