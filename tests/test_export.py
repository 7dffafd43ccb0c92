"""Export formats: PNG, TIFF, CSV, GeoJSON round trips and overlays."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from sac.export import (
    BOUNDARY_COLOR,
    OUTPUT_SUFFIXES,
    TABLE_COLUMNS,
    geojson_to_labels,
    labels_to_geojson,
    nuclei_table,
    output_path,
    overlay,
    write_geojson,
    write_labels_tif,
    write_mask_png,
    write_nuclei_csv,
    write_overlay,
    write_probability_tif,
)
from sac.io import InputError, read_pixel_size


def _random_disks(seed: int, shape: tuple[int, int] = (96, 128), count: int = 12) -> np.ndarray:
    """Non-overlapping disks of radius 4..9 with gappy ids, as a segmentation model might return."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    for label in rng.choice(np.arange(1, 1000), size=count, replace=False):
        radius = rng.integers(4, 10)
        center = rng.integers(radius + 1, np.array(shape) - radius - 1)
        rr, cc = disk(center, radius, shape=shape)
        if not labels[rr, cc].any():
            labels[rr, cc] = label
    return labels


def _ids(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels[labels > 0])


def test_output_paths_are_named_after_the_input_stem(tmp_path):
    assert OUTPUT_SUFFIXES == {
        "mask": "_mask.png",
        "prob": "_prob.tif",
        "labels": "_labels.tif",
        "cells": "_cells.tif",
        "table": "_{objects}.csv",
        "geojson": ".geojson",
        "overlay": "_overlay.png",
    }
    source = tmp_path / "in" / "slide.01.svs"
    names = {kind: output_path(tmp_path / "out", source, kind) for kind in OUTPUT_SUFFIXES}
    assert names["labels"] == tmp_path / "out" / "slide.01_labels.tif"
    assert names["geojson"] == tmp_path / "out" / "slide.01.geojson"
    assert names["table"] == tmp_path / "out" / "slide.01_nuclei.csv"
    assert len(set(names.values())) == len(OUTPUT_SUFFIXES)
    assert output_path("out", "a.png", "mask") == output_path("out", tmp_path / "a.tif", "mask")  # same stem
    assert output_path("out", "scan.ome.tif", "labels") == Path("out") / "scan_labels.tif"
    with pytest.raises(KeyError):
        output_path(tmp_path, source, "thumbnail")


def test_write_mask_png(tmp_path):
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    write_mask_png(tmp_path / "mask.png", mask)
    saved = np.asarray(Image.open(tmp_path / "mask.png"))
    assert saved.dtype == np.uint8
    np.testing.assert_array_equal(saved, mask * 255)


def test_a_boolean_mask_is_refused_where_objects_are_counted(tmp_path):
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = mask[5:7, 5:7] = True  # two nuclei, which as labels would be one
    for export in (nuclei_table, labels_to_geojson):
        with pytest.raises(InputError, match="boolean mask, which would count as one object"):
            export(mask)
    with pytest.raises(InputError, match="boolean mask"):
        write_labels_tif(tmp_path / "labels.tif", mask)
    assert overlay(np.zeros((8, 8), np.uint8), mask)[1, 1].tolist() == list(BOUNDARY_COLOR)  # outlines drawn


@pytest.mark.parametrize(("max_id", "dtype"), [(1, np.uint16), (65535, np.uint16), (65536, np.uint32)])
def test_write_labels_tif_dtype(tmp_path, max_id, dtype):
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[1, 1], labels[2, 2] = 3, max_id
    write_labels_tif(tmp_path / "labels.tif", labels)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        saved = tif.asarray()
    assert saved.dtype == dtype
    np.testing.assert_array_equal(saved, labels)


@pytest.mark.parametrize(("max_id", "imagej"), [(7, True), (70000, False)])
def test_labels_tif_records_the_pixel_size_for_fiji_or_as_resolution_tags(tmp_path, max_id, imagej):
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[1, 1] = max_id
    write_labels_tif(tmp_path / "labels.tif", labels, mpp=0.25)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:  # uint16: calibrated in µm as ImageJ writes it
        assert tif.is_imagej == imagej and (tif.imagej_metadata or {}).get("unit") == (
            "um" if imagej else None
        )
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert read_pixel_size(tmp_path / "labels.tif")[0] == pytest.approx(0.25)


@pytest.mark.parametrize("mpp", [-1, 0, 100, "0.5", float("nan")])
def test_exports_refuse_an_implausible_pixel_size_before_writing(tmp_path, mpp):
    labels = np.zeros((4, 4), dtype=np.uint16)
    labels[1, 1] = 1
    for write in (write_labels_tif, write_probability_tif):
        with pytest.raises(InputError, match="mpp"):
            write(tmp_path / "x.tif", labels, mpp=mpp)
    with pytest.raises(InputError, match="mpp"):  # negative lengths in µm would be a silently wrong table
        nuclei_table(labels, mpp=mpp)
    assert list(tmp_path.iterdir()) == []


def test_write_labels_tif_rejects_huge_and_float_ids(tmp_path):
    with pytest.raises(InputError, match="uint32"):
        write_labels_tif(tmp_path / "a.tif", np.array([[2**32]], dtype=np.int64))
    with pytest.raises(InputError, match="dtype"):
        write_labels_tif(tmp_path / "b.tif", np.ones((2, 2), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_nuclei_table_measurements():
    # A 2-row x 4-column rectangle at rows 1-2, cols 3-6: centroid x = 4.5, y = 1.5, area 8.
    labels = np.zeros((6, 10), dtype=np.uint16)
    labels[1:3, 3:7] = 7
    gray = np.zeros((6, 10), dtype=np.uint16)
    gray[1:3, 3:5] = 1000  # half the nucleus at 1000, half at 0 -> mean 500, in the image's own units
    (row,) = nuclei_table(labels, gray, name="a.tif")
    assert tuple(row) == (*TABLE_COLUMNS, "mean_intensity")
    assert (row["image"], row["id"], row["centroid_x"], row["centroid_y"], row["area"]) == (
        "a.tif",
        7,
        4.5,
        1.5,
        8,
    )
    assert row["mean_intensity"] == pytest.approx(500)
    assert 0 < row["eccentricity"] < 1
    # one column per channel, named; the probability's mean is the confidence; units with a pixel size
    two = np.stack([gray, gray // 10], axis=-1)
    probability = np.where(labels > 0, 0.8, 0.1)
    (row,) = nuclei_table(labels, two, channel_names=["GFP", "DAPI"], probability=probability, mpp=0.5)
    assert (row["mean_GFP"], row["mean_DAPI"]) == (pytest.approx(500), pytest.approx(50))
    assert row["confidence"] == pytest.approx(0.8) and row["area_um2"] == pytest.approx(2.0)
    assert row["centroid_x_um"] == pytest.approx(2.25) and tuple(row)[-3:] == (
        "mean_GFP",
        "mean_DAPI",
        "confidence",
    )
    rgb = nuclei_table(labels, np.stack([gray] * 3, axis=-1))[0]
    assert rgb["mean_red"] == rgb["mean_blue"] == pytest.approx(500)
    assert "mean_intensity" not in nuclei_table(labels)[0]


def test_nuclei_table_bad_input():
    with pytest.raises(InputError, match="does not match"):
        nuclei_table(np.zeros((4, 4), int), np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="2-D"):
        nuclei_table(np.zeros((2, 4, 4), int))


def test_write_nuclei_csv(tmp_path):
    labels = _random_disks(0)
    image = np.random.default_rng(0).integers(0, 256, size=(*labels.shape, 3), dtype=np.uint8)
    write_nuclei_csv(tmp_path / "nuclei.csv", labels, image)
    with open(tmp_path / "nuclei.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    areas = np.bincount(labels.ravel())
    assert len(rows) == _ids(labels).size
    assert {int(row["id"]): int(row["area"]) for row in rows} == {i: areas[i] for i in _ids(labels)}


def test_write_nuclei_csv_without_nuclei_keeps_header(tmp_path):
    write_nuclei_csv(tmp_path / "empty.csv", np.zeros((8, 8), dtype=np.uint8))
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(TABLE_COLUMNS)


def test_geojson_structure():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:6, 3:5] = 4
    collection = labels_to_geojson(labels)
    assert collection["type"] == "FeatureCollection"
    (feature,) = collection["features"]
    ring = feature["geometry"]["coordinates"][0]
    assert feature["geometry"]["type"] == "Polygon"
    assert ring[0] == ring[-1] and len(ring) >= 4
    assert feature["properties"] == {
        "id": 4,
        "objectType": "detection",
        "classification": {"name": "Nucleus", "color": [255, 0, 0]},
        "measurements": {"area": 8},
    }
    # Pixels cover [c, c+1] x [r, r+1] (QuPath), so the outline lies within the pixel squares of the box.
    xs, ys = np.array(ring).T
    assert xs.min() >= 3 and xs.max() <= 5 and ys.min() >= 2 and ys.max() <= 6
    json.dumps(collection)
    (gland,) = labels_to_geojson(labels, objects="glands")["features"]
    assert gland["properties"]["classification"] == {"name": "Gland", "color": [0, 160, 0]}
    assert output_path("out", "he.png", "table", "glands") == Path("out") / "he_glands.csv"


def test_geojson_offset_shifts_coordinates():
    labels = _random_disks(1)
    plain, shifted = labels_to_geojson(labels), labels_to_geojson(labels, offset_xy=(1000, 20))
    for a, b in zip(plain["features"], shifted["features"], strict=True):
        delta = np.array(b["geometry"]["coordinates"][0]) - np.array(a["geometry"]["coordinates"][0])
        np.testing.assert_allclose(delta, np.broadcast_to([1000, 20], delta.shape))


@pytest.mark.parametrize("seed", range(5))
def test_geojson_round_trip(seed):
    labels = _random_disks(seed)
    back = geojson_to_labels(labels_to_geojson(labels), labels.shape)
    np.testing.assert_array_equal(_ids(back), _ids(labels))
    for label in _ids(labels):
        original, restored = labels == label, back == label
        assert np.sum(original & restored) / np.sum(original | restored) > 0.8


def test_geojson_round_trip_of_tiny_and_diagonal_objects():
    # A single pixel and two pixels touching at a corner still come back as one object each.
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[1, 1] = 1
    labels[4, 4] = labels[5, 5] = 2
    np.testing.assert_array_equal(geojson_to_labels(labels_to_geojson(labels), labels.shape), labels)


def test_an_object_with_a_hole_keeps_it_in_its_outline_and_back():
    # A vesicular nucleus drawn as a ring (or a gland around its lumen): QuPath would measure a filled outline
    # larger than the object's area, and the hole would come back filled.
    yy, xx = np.mgrid[:30, :30]
    radius = np.hypot(yy - 12, xx - 12)
    labels = np.where((radius < 9) & (radius >= 4), 7, 0).astype(np.int32)
    labels[25:28, 25:28] = 3
    features = {f["properties"]["id"]: f for f in labels_to_geojson(labels)["features"]}
    ring = features[7]["geometry"]
    assert ring["type"] == "Polygon" and len(ring["coordinates"]) == 2  # outline and hole
    exterior, hole = (np.array(coordinates) for coordinates in ring["coordinates"])

    def signed_area(xy: np.ndarray) -> float:
        return float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1])) / 2

    assert np.sign(signed_area(exterior)) == -np.sign(signed_area(hole))  # holes turn the other way
    area = abs(signed_area(exterior)) - abs(signed_area(hole))
    assert area == pytest.approx(features[7]["properties"]["measurements"]["area"], rel=0.1)
    assert len(features[3]["geometry"]["coordinates"]) == 1
    np.testing.assert_array_equal(geojson_to_labels(labels_to_geojson(labels), labels.shape), labels)


@pytest.mark.parametrize("region_first", [True, False])
def test_a_region_around_the_nuclei_and_point_annotations_are_skipped(region_first):
    labels = _random_disks(3)
    nuclei = labels_to_geojson(labels)["features"]
    side = labels.shape[1]
    region = {
        "type": "Feature",
        "properties": {"classification": {"name": "Tissue"}},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [side, 0], [side, side], [0, side], [0, 0]]],
        },
    }
    point = {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [9, 9]]}}
    features = [region, *nuclei, point] if region_first else [*nuclei, region, point]
    with pytest.warns(UserWarning, match="1 annotation\\(s\\) skipped as regions") as caught:
        back = geojson_to_labels(features, labels.shape, "a.geojson")
    assert any("a.geojson: 1 point or line annotation(s) skipped" in str(w.message) for w in caught)
    np.testing.assert_array_equal(back > 0, geojson_to_labels(nuclei, labels.shape) > 0)


def test_an_object_in_pieces_is_one_multipolygon():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[1:3, 1:3] = labels[6:9, 6:9] = 1  # one id, two pieces (labels drawn by hand, say)
    feature = labels_to_geojson(labels)["features"][0]
    assert feature["geometry"]["type"] == "MultiPolygon" and len(feature["geometry"]["coordinates"]) == 2
    np.testing.assert_array_equal(geojson_to_labels([feature], labels.shape), labels)


def test_geojson_ids_that_would_merge_drop_or_break_objects_are_replaced_by_file_order():
    labels = np.zeros((12, 12), dtype=np.uint16)
    labels[1:4, 1:4], labels[6:9, 6:9] = 1, 2
    features = labels_to_geojson(labels)["features"]
    for ids in (["n1", "n2"], [5, 5], [0, 3], [True, 2]):
        for feature, given in zip(features, ids, strict=True):
            feature["properties"]["id"] = given
        with pytest.warns(
            UserWarning, match="a.geojson: properties.id are not distinct positive whole numbers"
        ):
            np.testing.assert_array_equal(geojson_to_labels(features, labels.shape, "a.geojson"), labels)
    features[0]["properties"]["id"], features[1]["properties"] = 7, {}  # an object drawn by hand has none
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = geojson_to_labels(features, labels.shape)
    assert back[2, 2] == 7 and back[7, 7] == 8


def test_geojson_outlines_off_the_image_are_refused_or_warned_about():
    labels = np.zeros((12, 12), dtype=np.uint16)
    labels[1:4, 1:4], labels[6:9, 6:9] = 1, 2
    collection = labels_to_geojson(labels, offset_xy=(5000, 3000))  # a slide's coordinates, given for a tile
    with pytest.raises(
        InputError, match="all 2 outlines lie outside the 12x12 image: coordinates of a larger"
    ):
        geojson_to_labels(collection, labels.shape)
    collection["features"][0] = labels_to_geojson(labels)["features"][0]
    with pytest.warns(UserWarning, match="a.geojson: 1 of 2 outlines lie outside the image"):
        assert geojson_to_labels(collection, labels.shape, "a.geojson").max() == 1
    with pytest.warns(UserWarning, match="a.geojson: no outlines: taken as holding no objects"):
        assert (
            geojson_to_labels({"type": "FeatureCollection", "features": []}, (4, 4), "a.geojson").max() == 0
        )


def test_geojson_to_labels_bad_input():
    with pytest.raises(InputError, match="FeatureCollection"):
        geojson_to_labels({"type": "Feature"}, (4, 4))
    ellipse = {"type": "Feature", "geometry": {"type": "Ellipse", "coordinates": [1, 1]}, "properties": {}}
    with pytest.raises(InputError, match="feature 0: geometry type 'Ellipse' is not a Polygon"):
        geojson_to_labels({"type": "FeatureCollection", "features": [ellipse]}, (4, 4))


def test_write_geojson(tmp_path):
    labels = _random_disks(2)
    write_geojson(tmp_path / "nuclei.geojson", labels, offset_xy=(5, 6))
    assert json.loads((tmp_path / "nuclei.geojson").read_text()) == labels_to_geojson(labels, (5, 6))


@pytest.mark.parametrize("channels", [(), (3,)])
def test_overlay(channels):
    labels = np.zeros((9, 9), dtype=np.int32)
    labels[2:7, 2:7] = 1
    image = np.full((9, 9, *channels), 140, dtype=np.uint8)
    result = overlay(image, labels)
    assert result.shape == (9, 9, 3) and result.dtype == np.uint8
    assert tuple(result[2, 4]) == (0, 255, 0)  # inner boundary of the nucleus
    assert tuple(result[4, 4]) == (140, 140, 140)  # interior untouched
    assert tuple(result[0, 0]) == (140, 140, 140)  # background untouched


def test_overlay_brightens_a_dim_image_for_display():
    labels = np.zeros((9, 9), dtype=np.int32)
    labels[2:7, 2:7] = 1
    image = np.full((9, 9), 10, dtype=np.uint8)
    image[3:6, 3:6] = 40  # a dim fluorescence nucleus: 40 of 255 at its brightest
    result = overlay(image, labels)
    assert tuple(result[4, 4]) == (255, 255, 255) and tuple(result[0, 0]) == (64, 64, 64)
    assert tuple(result[2, 4]) == (0, 255, 0)


def test_overlay_outlines_large_objects_wider_inside_them():
    labels = np.zeros((300, 300), dtype=np.int32)
    rows, cols = np.ogrid[:300, :300]
    labels[(rows - 150) ** 2 + (cols - 150) ** 2 <= 60**2] = 1  # a gland-sized object, 120 px across
    drawn = np.all(overlay(np.full((300, 300), 200, np.uint8), labels) == (0, 255, 0), axis=2)
    assert drawn[150, 90:93].all() and not drawn[150, 93]  # 3 px wide (120 / 40)
    assert not drawn[labels == 0].any()


def test_overlay_bad_input():
    with pytest.raises(InputError, match="uint8"):
        overlay(np.zeros((4, 4), np.float32), np.zeros((4, 4), int))
    with pytest.raises(InputError, match="gray"):
        overlay(np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), int))


def test_write_overlay(tmp_path):
    labels = _random_disks(3)
    image = np.random.default_rng(3).integers(0, 256, size=labels.shape, dtype=np.uint8)
    write_overlay(tmp_path / "overlay.png", image, labels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overlay.png")), overlay(image, labels))


def test_writes_leave_only_their_outputs(tmp_path, monkeypatch):
    labels = _random_disks(4)
    write_mask_png(tmp_path / "mask.png", labels > 0)
    write_labels_tif(tmp_path / "labels.tif", labels)
    write_nuclei_csv(tmp_path / "nuclei.csv", labels)
    write_geojson(tmp_path / "nuclei.geojson", labels)
    write_overlay(tmp_path / "overlay.png", np.zeros(labels.shape, np.uint8), labels)
    expected = {"mask.png", "labels.tif", "nuclei.csv", "nuclei.geojson", "overlay.png"}
    assert {path.name for path in tmp_path.iterdir()} == expected

    # A writer dying half-way leaves neither a partial file nor a temporary behind.
    def crash(obj, handle):
        handle.write('{"type": ')
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(RuntimeError):
        write_geojson(tmp_path / "broken.geojson", labels)
    assert {path.name for path in tmp_path.iterdir()} == expected


def test_cells_are_qupath_cell_objects_with_their_nucleus():
    from skimage.segmentation import expand_labels

    labels = _random_disks(2)
    cells = expand_labels(labels, 3)
    collection = labels_to_geojson(labels, cells=cells)
    assert len(collection["features"]) == _ids(labels).size
    for feature in collection["features"]:
        assert feature["properties"]["objectType"] == "cell" and "nucleusGeometry" in feature
    # the nucleus rasterises back to the nucleus, even from a cell object
    np.testing.assert_array_equal(geojson_to_labels(collection, labels.shape), labels)


def test_qupath_exports_read_as_labels(tmp_path):
    from sac.export import read_geojson_labels

    square = [[[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]]]
    other = [[[6, 6], [9, 6], [9, 9], [6, 9], [6, 6]]]
    features = [  # QuPath writes a bare list of features; annotations may be MultiPolygons
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [other]}, "properties": {}},
    ]
    (tmp_path / "a.geojson").write_text(json.dumps(features))
    labels = read_geojson_labels(tmp_path / "a.geojson", (12, 12))
    assert labels.max() == 2 and (labels == 1).sum() == 9 and (labels == 2).sum() == 9
    (tmp_path / "bad.geojson").write_text("{nope")
    with pytest.raises(InputError, match=r"bad\.geojson: cannot read GeoJSON"):
        read_geojson_labels(tmp_path / "bad.geojson", (12, 12))
