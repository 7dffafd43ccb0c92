"""Dataset loading, distance targets and the reproducible crop dataset, on synthetic and real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import measure
from skimage.draw import disk

from conftest import synthetic_nuclei
from sac.data import (
    DATASET_MPP,
    CropDataset,
    NucleiSample,
    default_data_root,
    instance_distance_map,
    load_dataset,
    median_nucleus_area,
    pack_datasets,
)
from sac.export import labels_to_geojson
from sac.io import InputError
from sac.metrics import dice


def _nuclei(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Random non-overlapping-ish disks as instance labels (later disks overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for index in range(1, count + 1):
        centre = rng.integers(0, shape)
        labels[disk(tuple(centre), rng.integers(3, 8), shape=shape)] = index
    return labels


def _sample(name: str, shape: tuple[int, int], grey: bool, seed: int) -> NucleiSample:
    rng = np.random.default_rng(seed)
    labels = _nuclei(shape, 15, seed)
    if grey:
        image = np.repeat(rng.integers(0, 256, (*shape, 1), dtype=np.uint8), 3, axis=2)
    else:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return NucleiSample(name, image, labels)


def _write_folder(root, samples: list[NucleiSample]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for sample in samples:
        Image.fromarray(sample.image).save(root / "images" / f"{sample.name}.png")
        Image.fromarray(sample.labels.astype(np.uint16)).save(root / "masks" / f"{sample.name}.png")


@pytest.fixture
def samples() -> list[NucleiSample]:
    return [_sample("big", (90, 120), False, 1), _sample("small", (40, 50), True, 2)]


def test_load_folder_dataset(tmp_path, samples):
    _write_folder(tmp_path, samples)
    loaded = load_dataset("folder", tmp_path, "ignored")
    assert [s.name for s in loaded] == ["big", "small"]
    for got, want in zip(loaded, samples, strict=True):
        np.testing.assert_array_equal(got.image, want.image)
        assert got.labels.dtype == np.int32 and got.labels.max() == len(np.unique(want.labels)) - 1
        np.testing.assert_array_equal(got.labels > 0, want.labels > 0)


def test_load_folder_prefers_split_subfolder(tmp_path, samples):
    _write_folder(tmp_path / "test", samples[1:])
    assert [s.name for s in load_dataset("folder", tmp_path, "test")] == ["small"]


def test_load_folder_errors(tmp_path, samples):
    _write_folder(tmp_path, samples)
    (tmp_path / "masks" / "small.png").unlink()
    with pytest.raises(InputError, match="no image/mask pair for 1 id"):
        load_dataset("folder", tmp_path, "train")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(tmp_path / "masks" / "small.png")
    with pytest.raises(InputError, match=r"mask size 5x5 differs from image size 40x50 .*small\.png"):
        load_dataset("folder", tmp_path, "train")
    (tmp_path / "masks" / "small.png").unlink()
    (tmp_path / "images" / "small.png").rename(tmp_path / "images" / "small.jpg.bak")  # an image gone
    Image.fromarray(np.zeros((40, 50), np.uint16)).save(tmp_path / "masks" / "renamed.png")
    with pytest.warns(UserWarning, match="1 mask\\(s\\) with no image of the same name, e.g. renamed"):
        assert [s.name for s in load_dataset("folder", tmp_path, "train")] == ["big"]


def test_a_folders_split_is_its_own_or_refused_and_scoring_an_unsplit_folder_is_noted(tmp_path):
    sample = _sample("a", (20, 20), False, 0)
    _write_folder(tmp_path / "flat", [sample])
    with pytest.warns(UserWarning, match="flat: no test/ split: all its images are scored"):
        assert [s.name for s in load_dataset("folder", tmp_path / "flat", "test")] == ["a"]
    _write_folder(tmp_path / "split" / "train", [sample])
    with pytest.raises(InputError, match=r"split: no test/ split; it has train/$"):
        load_dataset("folder", tmp_path / "split", "test")
    with pytest.raises(InputError, match=r"unknown dataset 'foldr' \(did you mean folder\?\)"):
        load_dataset("foldr", tmp_path, "train")


def test_a_folders_ambiguous_or_misnamed_files_are_refused_or_noted(tmp_path, samples):
    _write_folder(tmp_path, samples)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "big.geojson").write_text(json.dumps(labels_to_geojson(samples[0].labels)))
    with pytest.warns(
        UserWarning, match="1 image\\(s\\) with both a mask and annotations, e.g. big: the masks"
    ):
        load_dataset("folder", tmp_path)
    (tmp_path / "masks" / "small.png").unlink()
    (tmp_path / "annotations" / "small.png.geojson").write_text(
        "{}"
    )  # QuPath names exports by image file name
    with pytest.raises(InputError, match=r"e\.g\. small \(annotations are named <id>\.geojson: found small"):
        load_dataset("folder", tmp_path)
    Image.fromarray(samples[0].image).save(tmp_path / "images" / "big.jpg")
    with pytest.raises(InputError, match=r"big\.jpg and big\.png share the name big: keep one"):
        load_dataset("folder", tmp_path)


def test_load_dataset_unknown_and_missing(tmp_path):
    _write_folder(tmp_path / "mine" / "train", [_sample("a", (20, 20), False, 0)])
    (tmp_path / "notes").mkdir()  # neither train/ nor test/: not a dataset
    with pytest.raises(InputError, match=r"unknown dataset 'kaggle': no folder .*kaggle; found mine$"):
        load_dataset("kaggle", tmp_path, "train")
    with pytest.raises(InputError, match="unknown dataset 'glas'"):
        load_dataset("glas", tmp_path, "train")
    with pytest.raises(InputError, match="found none"):
        load_dataset("monuseg", tmp_path / "notes", "train")
    with pytest.raises(InputError, match="dataset split not found"):
        load_dataset("mine", tmp_path, "test")
    (tmp_path / "dsb2018" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match=r"split\.json"):
        load_dataset("dsb2018", tmp_path, "train")
    with pytest.raises(InputError, match="expected images/ with masks/ or annotations/"):
        load_dataset("folder", tmp_path, "train")


def test_one_label_in_pieces_is_split_in_a_users_folder_and_kept_in_a_shared_dataset(tmp_path, samples):
    # GlaS's testB_3 gives 7 separate regions one label, as its source annotates them; its figures must score that
    pieces = NucleiSample("pieces", samples[0].image, (samples[0].labels > 0).astype(np.int32))
    _write_folder(tmp_path / "glas" / "test", [pieces])
    (shared,) = load_dataset("glas", tmp_path, "test")
    assert shared.labels.max() == 1
    count = measure.label(pieces.labels).max()  # touching nuclei make one piece
    with pytest.warns(UserWarning, match=f"one label in {count} separate pieces: taken as a binary mask"):
        (folder,) = load_dataset("folder", tmp_path / "glas", "test")
    assert folder.labels.max() == count > 1
    np.testing.assert_array_equal(folder.labels > 0, shared.labels > 0)


def test_any_dataset_in_the_shared_layout_loads_by_name_with_its_pixel_size(tmp_path, samples):
    _write_folder(tmp_path / "mine" / "train", samples)
    _write_folder(tmp_path / "monuseg" / "test", samples[:1])
    loaded = load_dataset("mine", tmp_path, "train")
    assert [(s.name, s.mpp) for s in loaded] == [("big", None), ("small", None)]  # unknown pixel size
    assert [(s.name, s.mpp) for s in load_dataset("monuseg", tmp_path, "test")] == [
        ("big", DATASET_MPP["monuseg"])
    ]
    # provenance.csv gives per-image values; notes that are not numbers fall back to the documented one
    provenance = "id,microns_per_pixel\nbig,0.5\nsmall,~0.25 (not in files)\n"
    (tmp_path / "mine" / "provenance.csv").write_text(provenance)
    assert [s.mpp for s in load_dataset("mine", tmp_path, "train")] == [0.5, None]
    (tmp_path / "monuseg" / "provenance.csv").write_text(provenance)
    assert [s.mpp for s in load_dataset("monuseg", tmp_path, "test")] == [0.5]
    assert NucleiSample("x", samples[0].image, samples[0].labels).mpp is None
    # a folder dataset reads the same provenance.csv (numbers only), and a TIFF's own record for images it omits
    (tmp_path / "mine" / "provenance.csv").write_text("id,microns_per_pixel\nbig,0.5\n")
    assert [s.mpp for s in load_dataset("folder", tmp_path / "mine", "train")] == [0.5, None]
    tifffile.imwrite(
        tmp_path / "mine" / "train" / "images" / "small.tif",
        samples[1].image,
        resolution=(1e4 / 0.4, 1e4 / 0.4),
        resolutionunit="CENTIMETER",
    )
    (tmp_path / "mine" / "train" / "images" / "small.png").unlink()
    assert [s.mpp for s in load_dataset("folder", tmp_path / "mine", "train")] == [0.5, pytest.approx(0.4)]


@pytest.mark.parametrize(
    ("provenance", "error"),
    [
        ("id,microns_per_pixel\nbig,abc\n", r"line 2: 'abc' is not a pixel size"),
        ("id,microns_per_pixel\nbig,-0.3\n", r"line 2: -0.3 µm/px is outside"),
        ("id,microns_per_pixel\nbgi,0.5\n", r"id bgi names no image"),
        ("image,mpp\nbig,0.5\n", r"needs the columns id and microns_per_pixel"),
        ("id,microns_per_pixel\nbig,0.25\nbig,0.5\n", r"line 3: id big given 0.25 µm/px already, now 0.5"),
        ("id,microns_per_pixel\nbig,0.25\n,0.5\n", r"line 3: no id"),
    ],
)
def test_a_folders_pixel_sizes_are_checked(tmp_path, samples, provenance, error):
    _write_folder(tmp_path, samples)
    (tmp_path / "provenance.csv").write_text(provenance)
    with pytest.raises(InputError, match=error):
        load_dataset("folder", tmp_path)


def test_median_nucleus_area_at_the_model_scale_or_at_the_images_own():
    labels = np.zeros((20, 20), np.int32)
    labels[:4, :4], labels[10:12, 10:12] = 1, 2  # 16 px and 4 px nuclei
    image = np.zeros((20, 20, 3), np.uint8)
    known, unknown = NucleiSample("a", image, labels, 0.5), NucleiSample("b", image, labels * 0)
    assert median_nucleus_area([known, unknown], 0.25) == 40.0  # 10 px at 0.5 µm/px is 40 px at 0.25
    assert median_nucleus_area([NucleiSample("c", image, labels)], 0.25) == 10.0  # none known: as trained
    assert median_nucleus_area([known], None) is None


def test_instance_distance_map():
    labels = _nuclei((64, 64), 20, 3)
    labels[labels == 4] = 0  # a gap in the ids must be harmless
    distance = instance_distance_map(labels)
    assert distance.dtype == np.float32 and distance.shape == labels.shape
    assert distance.min() >= 0 and distance.max() <= 1
    assert (distance[labels == 0] == 0).all() and (distance[labels > 0] > 0).all()
    for index in np.unique(labels[labels > 0]):
        assert distance[labels == index].max() == pytest.approx(1.0)


def test_instance_distance_map_centre_of_square():
    labels = np.zeros((9, 9), np.int32)
    labels[2:7, 2:7] = 1
    distance = instance_distance_map(labels)
    assert distance[4, 4] == 1 and distance[2, 4] == pytest.approx(1 / 3)


def test_crop_dataset_items(samples):
    dataset = CropDataset(samples, crop_size=64, seed=0)
    assert len(dataset) == 2 * 2 + 1 * 1
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert item["image"].min() >= 0 and item["image"].max() <= 1
        assert item["mask"].shape == item["distance"].shape == (1, 64, 64)
        assert item["labels"].shape == (64, 64) and item["labels"].dtype == torch.int64
        assert torch.equal(item["mask"][0], (item["labels"] > 0).float())
        assert torch.equal(item["distance"][0] > 0, item["labels"] > 0)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_crop_dataset_is_deterministic_per_epoch(samples):
    first, second = CropDataset(samples, crop_size=32, seed=5), CropDataset(samples, crop_size=32, seed=5)
    first.set_epoch(3)
    second.set_epoch(3)
    for index in (0, 7):
        a, b = first[index], second[index]
        assert all(torch.equal(a[key], b[key]) for key in a)
    second.set_epoch(4)
    assert not torch.equal(first[0]["image"], second[0]["image"])


@pytest.mark.parametrize("mpp", [None, 2.0])  # at its own scale, and shrunk to half (a zoomed crop)
def test_crop_dataset_pads_small_images_with_their_nuclei_mirrored(mpp):
    labels = np.zeros((20, 30), np.int32)
    labels[4:10, 4:10] = 1
    labels[10:16, 24:30] = 2  # on the right edge: it and its reflection are one nucleus
    image = np.where(labels[..., None] > 0, 40, 220).astype(np.uint8).repeat(3, axis=2)
    dataset = CropDataset([NucleiSample("tiny", image, labels, mpp)], 48, 3, augment=False, target_mpp=4.0)
    item = dataset[0]
    got = item["labels"].numpy()
    if mpp is None:
        np.testing.assert_allclose(item["image"][:, :20, :30].numpy(), image.transpose(2, 0, 1) / 255)
        # what the padding shows as a nucleus is labelled one (before, it was taught as background)
        np.testing.assert_array_equal(got > 0, item["image"][0].numpy() < 0.5)
        assert got[12, 29] == got[12, 31] > 0
    else:
        assert (got[10:, :] > 0).any() and (
            got[:, 15:] > 0
        ).any()  # the half-size crop's padding holds nuclei
        dark = item["image"][0].numpy() < 0.5  # the resampled image and labels stay on one grid
        assert np.mean(dark == (got > 0)) > 0.95
    ids = np.unique(got[got > 0])
    pieces = measure.label(got > 0, connectivity=2).max()
    assert len(ids) == pieces > 2  # every mirrored copy an instance of its own, each in one piece
    assert torch.equal(item["distance"][0] > 0, item["labels"] > 0)  # the centre target follows them
    for index in ids:
        assert item["distance"][0][item["labels"] == index].max() == pytest.approx(1.0)


def test_crop_dataset_keeps_grey_images_grey():
    dataset = CropDataset([_sample("grey", (50, 50), True, 6)], crop_size=32, crops_per_epoch=8)
    for index in range(len(dataset)):
        image = dataset[index]["image"]
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_crop_dataset_samples_by_area(samples):
    """The colour sample has 90x120 pixels and the grey one 40x50, so about 84% of crops should be colour."""
    dataset = CropDataset(samples, crop_size=16, crops_per_epoch=300, augment=False)
    colour = [not torch.equal(dataset[i]["image"][0], dataset[i]["image"][1]) for i in range(len(dataset))]
    assert 0.76 < np.mean(colour) < 0.92


def _whole_nucleus_areas(labels: torch.Tensor) -> list[int]:
    """Pixel counts of the nuclei of a crop that do not touch its border (cut nuclei would look small)."""
    labels = labels.numpy()
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    counts = np.bincount(labels.ravel())
    return [int(counts[i]) for i in np.flatnonzero(counts) if i and i not in border]


def _grid_of_disks(mpp: float | None) -> NucleiSample:
    """Disks of radius 4 (45 pixels) every 16 pixels, so every crop holds several whole ones."""
    labels = np.zeros((128, 128), np.int32)
    for index, (row, col) in enumerate(np.ndindex(8, 8), start=1):
        labels[disk((row * 16 + 8, col * 16 + 8), 4)] = index
    image = np.where(labels[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
    return NucleiSample("grid", image, labels, mpp)


def test_crop_dataset_resamples_to_the_target_pixel_size():
    native = CropDataset([_grid_of_disks(0.5)], crop_size=64, crops_per_epoch=6, augment=False, seed=3)
    zoomed = CropDataset(
        [_grid_of_disks(0.5)], crop_size=64, crops_per_epoch=6, augment=False, seed=3, target_mpp=0.25
    )
    unknown = CropDataset(
        [_grid_of_disks(None)], crop_size=64, crops_per_epoch=6, augment=False, seed=3, target_mpp=0.25
    )
    native_areas = [a for i in range(6) for a in _whole_nucleus_areas(native[i]["labels"])]
    zoomed_areas = [a for i in range(6) for a in _whole_nucleus_areas(zoomed[i]["labels"])]
    assert set(native_areas) == {45} and len(zoomed_areas) >= 6
    # 0.5 µm pixels shown at 0.25 µm: nuclei twice as wide, four times the area
    assert np.mean(zoomed_areas) / np.mean(native_areas) == pytest.approx(4, rel=0.1)
    item = zoomed[0]
    assert item["image"].shape == (3, 64, 64) and item["labels"].shape == (64, 64)
    assert torch.equal(item["mask"][0], (item["labels"] > 0).float())
    assert torch.equal(item["distance"][0] > 0, item["labels"] > 0)
    again = CropDataset(
        [_grid_of_disks(0.5)], crop_size=64, crops_per_epoch=6, augment=False, seed=3, target_mpp=0.25
    )
    assert all(torch.equal(zoomed[i][key], again[i][key]) for i in range(6) for key in item)  # by seed
    for i in range(6):  # a sample without a pixel size is used at its own scale
        assert torch.equal(unknown[i]["labels"], native[i]["labels"])


def test_crop_dataset_zoom_augmentation():
    sample = _grid_of_disks(None)
    zoom = CropDataset([sample], crop_size=64, crops_per_epoch=24, seed=1, max_zoom=2.0)
    areas = [np.mean(_whole_nucleus_areas(zoom[i]["labels"]) or [0]) for i in range(len(zoom))]
    assert min(areas) < 40 and max(areas) > 60  # both zoomed out and zoomed in
    again = CropDataset([sample], crop_size=64, crops_per_epoch=24, seed=1, max_zoom=2.0)
    assert all(torch.equal(zoom[i]["labels"], again[i]["labels"]) for i in range(len(zoom)))
    with pytest.raises(InputError, match="max_zoom must be at least 1"):
        CropDataset([sample], max_zoom=0.5)


@pytest.fixture(scope="module")
def data_root():
    root = default_data_root()
    if root is None:
        pytest.skip("real datasets not found: set SAC_DATA or place them in ../shared/data")
    return root


@pytest.mark.data
def test_real_monuseg(data_root):
    train = load_dataset("monuseg", data_root, "train")
    assert len(train) == 30
    assert all(s.image.shape == (1000, 1000, 3) and s.labels.shape == (1000, 1000) for s in train)
    assert len(load_dataset("monuseg", data_root, "test")) == 14


@pytest.mark.data
def test_real_dsb2018_split(data_root):
    test = load_dataset("dsb2018", data_root, "test")
    train = load_dataset("dsb2018", data_root, "train")
    assert (len(train), len(test)) == (536, 134)
    assert not {s.name for s in train} & {s.name for s in test}


def test_default_data_root_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SAC_DATA", str(tmp_path))
    assert default_data_root() == tmp_path


def test_folder_dataset_from_qupath_geojson_annotations(tmp_path):
    """`sac train` on images with QuPath's exported objects beside them (annotations/<id>.geojson)."""
    from sac.export import labels_to_geojson

    image, labels = synthetic_nuclei(64, 6, seed=5)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations" / "a.geojson").write_text(json.dumps(labels_to_geojson(labels)))
    (sample,) = load_dataset("folder", tmp_path)
    assert sample.labels.max() == len(np.unique(labels)) - 1
    assert dice(sample.labels > 0, labels > 0) > 0.95


def test_packed_training_splits_load_from_the_zip(tmp_path):
    """`sac pack`: training splits only, labels exact, images close (JPEG), pixel sizes kept; read from the zip."""
    smooth = [
        NucleiSample(name, *synthetic_nuclei(96, 10, seed=i)) for i, name in enumerate(["big", "small"])
    ]
    _write_folder(tmp_path / "data" / "mine" / "train", smooth)
    _write_folder(tmp_path / "data" / "mine" / "test", smooth[:1])
    (tmp_path / "data" / "mine" / "provenance.csv").write_text("id,microns_per_pixel\nbig,0.5\n")
    _write_folder(tmp_path / "data" / "dsb2018" / "train", smooth)
    (tmp_path / "data" / "dsb2018" / "split.json").write_text(
        json.dumps({"train": ["big"], "test": ["small"]})
    )
    archive = tmp_path / "train.zip"
    size = pack_datasets(["mine", "dsb2018"], archive, tmp_path / "data")
    assert size == archive.stat().st_size
    for name, wanted in (("mine", smooth), ("dsb2018", smooth[:1])):
        packed = load_dataset(name, archive, "train")
        assert [s.name for s in packed] == [s.name for s in wanted]
        for got, original in zip(packed, wanted, strict=True):
            np.testing.assert_array_equal(got.labels, original.labels)
            # JPEG smooths the synthetic pixel noise, and keeps the colours
            assert np.abs(got.image.astype(int) - original.image).mean() < 8
            assert np.abs(got.image.mean(axis=(0, 1)) - original.image.mean(axis=(0, 1))).max() < 1
    assert [s.mpp for s in load_dataset("mine", archive, "train")] == [0.5, None]
    with pytest.raises(InputError, match="dataset split not found"):
        load_dataset("mine", archive, "test")
    assert load_dataset("dsb2018", archive, "test") == []
    # a folder dataset packs and trains from its zip too, with its pixel sizes (unknown ones left empty)
    folder_zip = tmp_path / "folder.zip"
    pack_datasets(["folder"], folder_zip, tmp_path / "data" / "mine")
    assert [(s.name, s.mpp) for s in load_dataset("folder", folder_zip)] == [("big", 0.5), ("small", None)]
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a data archive"):
        load_dataset("mine", tmp_path / "broken.zip")
