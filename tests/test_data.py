"""Dataset loading, distance targets and the reproducible crop dataset, on synthetic and real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.draw import disk

from sac.data import (
    DATASETS,
    CropDataset,
    NucleiSample,
    default_data_root,
    instance_distance_map,
    load_dataset,
)
from sac.io import InputError


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


def test_load_dataset_unknown_and_missing(tmp_path):
    with pytest.raises(InputError, match="known datasets: monuseg, dsb2018, glas, folder"):
        load_dataset("kaggle", tmp_path, "train")
    with pytest.raises(InputError, match="GlaS is not packaged"):
        load_dataset("glas", tmp_path, "train")
    with pytest.raises(InputError, match="dataset split not found"):
        load_dataset("monuseg", tmp_path, "train")
    with pytest.raises(InputError, match=r"split\.json"):
        load_dataset("dsb2018", tmp_path, "train")
    with pytest.raises(InputError, match="images/ and masks/"):
        load_dataset("folder", tmp_path, "train")
    assert set(DATASETS) == {"monuseg", "dsb2018", "glas", "folder"}


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


def test_crop_dataset_pads_small_images():
    sample = _sample("tiny", (20, 30), False, 4)
    item = CropDataset([sample], crop_size=48, crops_per_epoch=3, augment=False)[0]
    assert len(CropDataset([sample], crop_size=48, crops_per_epoch=3)) == 3
    assert (item["labels"][20:] == 0).all() and (item["labels"][:, 30:] == 0).all()
    np.testing.assert_allclose(item["image"][:, :20, :30].numpy(), sample.image.transpose(2, 0, 1) / 255)


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
