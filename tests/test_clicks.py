"""Files of a user's clicks: CSV and JSON, written and read back, and every error naming the file."""

import json
import re

import numpy as np
import pytest

from sac.clicks import check_clicks_match, clicks_for, read_clicks, read_points_file, write_points_file
from sac.io import InputError


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_points_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"points{suffix}"
    write_points_file(path, [(1.5, 2.0), (3, 4)], [(10, 20)])
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
    write_points_file(folder / "a.csv", [(1, 2)], [])
    write_points_file(folder / "b.json", [], [(3, 4)])
    by_file = read_clicks(folder)
    assert sorted(by_file) == ["a", "b"] and by_file["b"][1].tolist() == [[3, 4]]
    unnamed = tmp_path / "one.csv"
    write_points_file(unnamed, [(9, 9)], [])
    assert list(read_clicks(unnamed)) == [None]  # for any one image
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no \.csv or \.json click files"):
        read_clicks(tmp_path / "empty")
    with pytest.raises(InputError, match="CSV header must be x,y,label"):
        read_points_file(csv_path)  # a single image's file has no image column


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
