"""Files of a user's clicks: CSV and JSON, written and read back, and every error naming the file."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image

from conftest import write_clicks
from sac.clicks import (
    check_clicks_inside,
    check_clicks_match,
    clicks_for,
    read_clicks,
    read_points_file,
)
from sac.io import InputError
from sac.points import clicks_pixels


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_points_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"points{suffix}"
    write_clicks(path, [(1.5, 2.0), (3, 4)], [(10, 20)])
    positive, negative = read_points_file(path)
    assert positive.tolist() == [[1.5, 2.0], [3, 4]] and negative.tolist() == [[10, 20]]
    assert positive.dtype == np.float32


def test_points_file_hand_written(tmp_path):
    csv_path = tmp_path / "clicks.csv"
    csv_path.write_text("x, y, label\n1,2,0\n\n3,4,1\n")
    positive, negative = read_points_file(csv_path)
    assert positive.tolist() == [[3, 4]] and negative.tolist() == [[1, 2]]
    json_path = tmp_path / "clicks.json"
    json_path.write_text(json.dumps({"positive": [[5, 6]]}))
    positive, negative = read_points_file(json_path)
    assert positive.tolist() == [[5, 6]] and negative.shape == (0, 2)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.csv", "x,y\n1,2\n"),
        ("a.csv", "x,y,label\n1,2,3\n"),
        ("a.csv", "x,y,label\n1,two,1\n"),
        ("a.csv", "x,y,label\n1,nan,1\n"),
        ("a.csv", ""),
        ("a.json", "{not json"),
        ("a.json", '{"positives": [[1, 2]]}'),
        ("a.json", '{"positive": [[1, 2, 3]]}'),
        ("a.txt", "1,2,1"),
    ],
)
def test_points_file_errors_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(name)):
        read_points_file(path)


def test_csv_columns_in_any_order_case_and_spacing(tmp_path):
    """Columns are found by name: any order, any case, spaces around cells, a spreadsheet's byte-order mark."""
    path = tmp_path / "clicks.csv"
    path.write_text(
        "\ufeffImage, X ,y, LABEL\n in/a.png , 1.5 , 2 , 1 \nb,3,4,0.0\n, , , \n", encoding="utf-8"
    )
    clicks = read_clicks(path)
    assert sorted(clicks) == ["b", "in/a.png"]
    assert clicks["in/a.png"][0].tolist() == [[1.5, 2]] and clicks["in/a.png"][1].shape == (0, 2)
    assert clicks["b"][0].shape == (0, 2) and clicks["b"][1].tolist() == [[3, 4]]
    single = tmp_path / "one.csv"
    single.write_text("label,y,x\n1,20,10\n0,40,30\n")
    positive, negative = read_points_file(single)
    assert positive.tolist() == [[10, 20]] and negative.tolist() == [[30, 40]]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "image,x,label\na.png,1,1\n",
            "CSV header: missing column y; expected columns x, y, label and optionally image",
        ),
        ("x,y\n1,2\n", "missing column label"),
        ("x,y,label,colour\n1,2,1,red\n", "unknown column 'colour'"),
        ("x,y,label,x\n1,2,1,3\n", "column x twice"),
        ("image,x,y,label\na.png,1,2\n", r"line 2: expected 4 values \(image,x,y,label\), got 'a.png,1,2'"),
        ("label,x,y\n1,1,2\n1,one,2\n", "line 3: x must be a number, got 'one'"),
        ("x,y,label\n1,inf,1\n", "line 2: y must be a number, got 'inf'"),
        ("x,y,label\n1,2,yes\n", r"line 2: label must be 1 \(positive\) or 0 \(negative\), got 'yes'"),
        ("x,y,label,image\n1,2,1,a.png\n3,4,1, \n", "line 3: no image name"),
    ],
)
def test_csv_errors_name_the_file_the_line_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "clicks.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .*{problem}") as error:
        read_clicks(path)
    assert "\n" not in str(error.value)


def test_missing_points_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.json"):
        read_points_file(tmp_path / "nope.json")


def test_clicks_per_image_from_csv_json_or_folder(tmp_path):
    csv_path = tmp_path / "clicks.csv"
    csv_path.write_text("x,y,label,image\n1,2,1,a.png\n3,4,0,a.png\n5,6,1,b\n")
    clicks = read_clicks(csv_path)
    assert sorted(clicks) == ["a.png", "b"]
    assert clicks["a.png"][0].tolist() == [[1, 2]] and clicks["a.png"][1].tolist() == [[3, 4]]
    json_path = tmp_path / "clicks.json"
    json_path.write_text(json.dumps({"a.png": {"positive": [[1, 2]]}, "b": {"negative": [[7, 8]]}}))
    keyed = read_clicks(json_path)
    assert keyed["b"][0].shape == (0, 2) and keyed["b"][1].tolist() == [[7, 8]]
    folder = tmp_path / "per-image"
    folder.mkdir()
    write_clicks(folder / "a.csv", [(1, 2)], [])
    write_clicks(folder / "b.json", [], [(3, 4)])
    by_file = read_clicks(folder)
    assert sorted(by_file) == ["a", "b"] and by_file["b"][1].tolist() == [[3, 4]]
    unnamed = tmp_path / "one.csv"
    write_clicks(unnamed, [(9, 9)], [])
    assert list(read_clicks(unnamed)) == [None]  # for any one image
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no \.csv, \.json, \.geojson, \.roi, \.zip click files"):
        read_clicks(tmp_path / "empty")
    with pytest.raises(
        InputError, match=r"unknown column 'image'.*a file of one image's clicks has no image column"
    ):
        read_points_file(csv_path)


def test_napari_points_csv_is_read_as_rows_and_columns_with_centres_at_whole_numbers(tmp_path):
    napari = tmp_path / "points.csv"  # what napari's File > Save Selected Layer writes for a Points layer
    napari.write_text("index,axis-0,axis-1\n0,10.0,20.0\n1,30.4,5.6\n")
    positive, negative = read_points_file(napari)
    # axis-0 is the row (y), axis-1 the column (x); napari's pixel 20 spans 19.5-20.5, ours 20-21
    np.testing.assert_allclose(positive, [[20.5, 10.5], [6.1, 30.9]], rtol=1e-6)
    assert not len(negative)
    assert clicks_pixels((positive, None), (40, 40))[0].tolist() == [[10, 20], [30, 6]]
    napari.write_text("index,axis-0,axis-1,label\n0,10,20,1\n1,30,5,0\n")  # a label feature column
    positive, negative = read_points_file(napari)
    assert positive.tolist() == [[20.5, 10.5]] and negative.tolist() == [[5.5, 30.5]]
    napari.write_text("index,axis-0,axis-1,axis-2\n0,1,10,20\n")
    with pytest.raises(InputError, match="napari points of 3 or more dimensions"):
        read_points_file(napari)


def test_qupath_point_annotations_are_clicks(tmp_path):
    def feature(geometry: dict, name: str | None = None) -> dict:
        properties = {"objectType": "annotation"} | ({"classification": {"name": name}} if name else {})
        return {"type": "Feature", "geometry": geometry, "properties": properties}

    exported = {
        "type": "FeatureCollection",
        "features": [
            feature({"type": "MultiPoint", "coordinates": [[20.5, 10.5], [6.5, 30.5]]}),
            feature({"type": "Point", "coordinates": [3.5, 4.5]}, "Negative"),
        ],
    }
    path = tmp_path / "clicks.geojson"
    path.write_text(json.dumps(exported))
    positive, negative = read_points_file(path)
    assert positive.tolist() == [[20.5, 10.5], [6.5, 30.5]] and negative.tolist() == [[3.5, 4.5]]
    folder = tmp_path / "per_image"
    folder.mkdir()
    (folder / "tile.geojson").write_text(json.dumps(exported["features"]))  # a bare list of features
    assert read_clicks(folder)["tile"][0].tolist() == positive.tolist()
    outline = feature({"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [outline]}))
    with pytest.raises(InputError, match="feature 0 is a Polygon, not a point"):
        read_points_file(path)


def fiji_points(xy: list, counters: list[int] | None = None, name: str = "points") -> roifile.ImagejRoi:
    """A multi-point selection as Fiji saves it: a POINT ROI, whole-number pixels unless given fractions, with the
    counter of each point when the tool's counters were used."""
    roi = roifile.ImagejRoi.frompoints(xy, name=name)
    roi.roitype = roifile.ROI_TYPE.POINT
    if counters is not None:
        roi.counters = np.array(counters, np.uint8)
        roi.counter_positions = np.zeros(len(counters), np.uint32)
    return roi


def test_fiji_point_selections_are_clicks_in_pixels_with_counter_1_negative(tmp_path):
    path = tmp_path / "clicks.roi"
    fiji_points([[20, 10], [6, 30], [3, 4]], counters=[0, 0, 1]).tofile(path)
    positive, negative = read_points_file(path)
    # Fiji's whole-number point 20 names pixel 20, which spans [20, 21) in both frames: its centre is 20.5
    assert positive.tolist() == [[20.5, 10.5], [6.5, 30.5]] and negative.tolist() == [[3.5, 4.5]]
    fiji_points([[20.25, 10.75]]).tofile(
        path
    )  # sub-pixel points (no counters: all positive) are kept as they are
    assert read_points_file(path)[0].tolist() == [[20.25, 10.75]]

    manager = tmp_path / "RoiSet.zip"  # the ROI Manager's set: every point selection in it
    roifile.roiwrite(
        manager, [fiji_points([[1, 2]], name="a"), fiji_points([[5, 6]], [1], name="b")], mode="w"
    )
    positive, negative = read_points_file(manager)
    assert positive.tolist() == [[1.5, 2.5]] and negative.tolist() == [[5.5, 6.5]]
    folder = tmp_path / "per_image"
    folder.mkdir()
    fiji_points([[7, 8]]).tofile(folder / "tile.roi")
    assert read_clicks(folder)["tile"][0].tolist() == [[7.5, 8.5]]
    write_clicks(folder / "tile.csv", [(1, 2)], [])  # the same image's clicks twice: which to apply?
    with pytest.raises(InputError, match=r"per_image/tile.csv and tile.roi share the name tile: keep one"):
        read_clicks(folder)


@pytest.mark.parametrize(
    "roi, problem",
    [
        (
            roifile.ImagejRoi.frompoints([[0, 0], [4, 0], [4, 4]], name="outline"),
            "ROI 'outline' is a freehand",
        ),
        (fiji_points([[1, 1], [2, 2]], counters=[0, 2]), "has points of counter 2; clicks take counter 0"),
        (None, "not an ImageJ ROI file"),
    ],
)
def test_fiji_files_that_hold_no_clicks_are_refused(tmp_path, roi, problem):
    path = tmp_path / "clicks.roi"
    if roi is None:
        path.write_bytes(b"x,y,label\n1,2,1\n")  # a CSV saved under the wrong name
    else:
        roi.tofile(path)
    with pytest.raises(InputError, match=re.escape(f"{path}: ") + ".*" + re.escape(problem)):
        read_points_file(path)


def test_clicks_are_matched_to_images_by_name_then_stem(tmp_path):
    a, b = (np.zeros((1, 2), np.float32), np.zeros((0, 2), np.float32)), (np.ones((1, 2), np.float32),) * 2
    clicks = {"img.png": a, "other": b}
    assert clicks_for(clicks, tmp_path / "img.png") is a
    assert clicks_for(clicks, tmp_path / "other.tif") is b
    assert clicks_for(clicks, tmp_path / "third.png") is None
    assert clicks_for({None: a}, tmp_path / "any.png") is a
    images = [tmp_path / "img.png", tmp_path / "other.tif"]
    check_clicks_match(clicks, images, "clicks.csv")
    with pytest.raises(InputError, match=r"clicks\.csv: clicks for missing, which is not among the inputs"):
        check_clicks_match({"missing": a}, images, "clicks.csv")
    with pytest.raises(InputError, match="clicks without image names but 2 inputs"):
        check_clicks_match({None: a}, images, "clicks.csv")
    check_clicks_match({None: a}, images[:1], "clicks.csv")


def test_clicks_named_by_a_path_match_that_input(tmp_path, monkeypatch):
    """An image column (or JSON key) may hold the input's path, relative, with ./ or absolute: one rule for
    choosing an image's clicks and for checking them against the inputs."""
    monkeypatch.chdir(tmp_path)
    tile, other = Path("in/tile.png"), Path("in/other.png")
    clicks_file = tmp_path / "clicks.csv"
    clicks_file.write_text(
        f"image,x,y,label\nin/tile.png,1,2,1\n./in/other.png,3,4,0\n{tmp_path / 'in' / 'c.tif'},5,6,1\n"
    )
    clicks = read_clicks(clicks_file)
    images = [tile, other, Path("in/c.tif")]
    check_clicks_match(clicks, images, clicks_file)
    assert clicks_for(clicks, tile)[0].tolist() == [[1, 2]]
    assert clicks_for(clicks, other)[1].tolist() == [[3, 4]]
    assert clicks_for(clicks, Path("in/c.tif"))[0].tolist() == [[5, 6]]
    assert clicks_for(clicks, Path("elsewhere/tile.png")) is None  # a path names only its own file
    with pytest.raises(InputError, match=r"clicks for in/tile\.png, which is not among the inputs"):
        check_clicks_match(clicks, [Path("elsewhere/tile.png"), other, Path("in/c.tif")], clicks_file)
    keyed = tmp_path / "clicks.json"
    keyed.write_text(json.dumps({"./in/tile.png": {"positive": [[7, 8]]}}))
    by_path = read_clicks(keyed)
    check_clicks_match(by_path, images, keyed)
    assert clicks_for(by_path, tile)[0].tolist() == [[7, 8]] and clicks_for(by_path, other) is None


def test_clicks_that_name_an_image_twice_or_two_images_are_refused(tmp_path):
    """Clicks under two names of one image, or a name that fits two inputs, would be dropped or doubled
    silently: both fail before any work."""
    a = (np.ones((1, 2), np.float32), np.zeros((0, 2), np.float32))
    image = tmp_path / "in" / "tile.png"
    twice = {"tile.png": a, "tile": a}
    with pytest.raises(InputError, match=r"clicks\.csv: clicks for tile\.png, tile all name .*tile\.png"):
        check_clicks_match(twice, [image], "clicks.csv")
    with pytest.raises(InputError, match="give each image's clicks under one name"):
        clicks_for(twice, image)
    with pytest.raises(
        InputError, match=r"clicks\.csv: clicks for tile\.png match inputs .*; name the image by"
    ):
        check_clicks_match({"tile.png": a}, [image, tmp_path / "tile.png.tif"], "clicks.csv")


def test_clicks_outside_an_image_are_refused_from_its_header(tmp_path):
    png, tif, broken = tmp_path / "wide.png", tmp_path / "planar.tif", tmp_path / "broken.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(png)  # 40 wide, 30 high
    tifffile.imwrite(tif, np.zeros((3, 30, 40), np.uint8), photometric="rgb", planarconfig="separate")
    broken.write_bytes(b"not an image")
    inside = (np.array([[39.5, 29.0]], np.float32), np.array([[0.0, 0.0]], np.float32))
    for path in (png, tif):
        check_clicks_inside(inside, path)
        check_clicks_inside(None, path)
        with pytest.raises(InputError, match=rf"{path.name}: click \(5, 30\) lies outside the 40x30 image"):
            check_clicks_inside((inside[0], np.array([[5.0, 30.0]], np.float32)), path)
    check_clicks_inside(inside, broken)  # left to the reader, which names the file's own problem
