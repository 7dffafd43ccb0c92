"""Nuclei datasets on disk and the random-crop training dataset built from them.

Datasets follow the shared layout ``<name>/<split>/images/<id>.png`` (or ``.jpg``) + ``masks/<id>.png`` (16-bit
instance labels); any dataset in that layout loads by its folder name. DSB2018 keeps every sample under ``train/``
and takes its split from ``split.json``.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage import measure
from skimage.color import hed2rgb, rgb2hed

from sac.export import read_geojson_labels
from sac.io import (
    MPP_RANGE,
    InputError,
    atomic_write,
    check_pair,
    files_by_stem,
    list_images,
    read_image,
    read_labels,
    read_pixel_size,
    sha256sum,
)
from sac.scale import resample_labels, resize_image

# Pixel size (µm/px) of each known dataset, from its release notes. DSB 2018 mixes microscopes and magnifications
# without recording them: None, its images are used at their native scale. A dataset's provenance.csv column
# ``microns_per_pixel`` (CryoNuSeg has one) gives per-image values that take precedence.
DATASET_MPP: dict[str, float | None] = {
    "monuseg": 0.25,
    "consep": 0.25,
    "cryonuseg": 0.25,
    "dsb2018": None,
    "glas": 0.62,
}

# Augmentation strengths: multiplicative ranges are 1 +/- value, HED shift is in optical-density units.
_BRIGHTNESS, _CONTRAST, _SATURATION = 0.15, 0.15, 0.15
_HED_SCALE, _HED_SHIFT = 0.15, 0.01
_GREY_PROBABILITY = 0.1  # an H&E crop shown as grey now and then, so colour alone never decides
_SCALE_PROBABILITY = 0.5  # half of the crops keep the model's scale; the rest are zoomed in [1/max, max]


# ---------------------------------------------------------------------------------------------------------------
# Samples bundled with the package, so a first run needs no data folder (like scikit-image's ``data.cell()``).
# Both come from test splits (never used for training); sources, crop boxes and licences: sac/samples/README.md.


class BundledSample(NamedTuple):
    """One bundled sample: file names inside ``sac/samples/``, pixel size and a one-line description."""

    image: str
    labels: str
    pixel_size_um: float | None
    description: str


SAMPLES: dict[str, BundledSample] = {
    "he": BundledSample(
        "he.jpg",
        "he_labels.png",
        0.25,
        "H&E, 40x: 512x512 crop of MoNuSeg test image TCGA-44-2665 (lymphocytes and tumour cells)",
    ),
    "fluo": BundledSample(
        "fluo.png",
        "fluo_labels.png",
        None,
        "fluorescence (grey): 260x347 DSB 2018 image from the test split, bright nuclei on a dark background",
    ),
}


def _sample(name: str) -> BundledSample:
    try:
        return SAMPLES[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}") from None


def _resource(filename: str) -> Path:
    # files() is a real directory for any pip install (regular or editable); str() also covers Traversables
    # that are not Path objects, which then fail later with a "file not found" naming the path.
    return Path(str(resources.files("sac") / "samples" / filename))


def sample_path(name: str) -> Path:
    """Path of a sample's image file inside the installed package, e.g. to pass to the ``sac`` command line.

    Parameters
    ----------
    name : one of ``SAMPLES`` (``"he"``, ``"fluo"``).

    Returns
    -------
    The image file's path; raises :class:`sac.io.InputError` for an unknown name.
    """
    return _resource(_sample(name).image)


def sample(name: str) -> np.ndarray:
    """A sample image as stored, without conversion, so the grey fluorescence image stays 2-D.

    Parameters
    ----------
    name : one of ``SAMPLES`` (``"he"``, ``"fluo"``).

    Returns
    -------
    uint8 array: (512, 512, 3) RGB for ``"he"``, (260, 347) grey for ``"fluo"``.
    Use :func:`sac.io.read_image` on :func:`sample_path` instead for the RGB array the model gets.
    """
    with Image.open(sample_path(name)) as image:
        return np.array(image)


def sample_labels(name: str) -> np.ndarray:
    """A sample's ground-truth instance labels, to score a segmentation of :func:`sample` against.

    Parameters
    ----------
    name : one of ``SAMPLES`` (``"he"``, ``"fluo"``).

    Returns
    -------
    int32 array of the image's height and width; 0 = background, nuclei numbered 1..N.
    """
    return read_labels(_resource(_sample(name).labels))


def load_samples() -> list[NucleiSample]:
    """The bundled samples as a dataset (``sac evaluate --dataset samples``), RGB like every dataset."""
    return [
        NucleiSample(name, read_image(sample_path(name)), sample_labels(name), entry.pixel_size_um)
        for name, entry in SAMPLES.items()
    ]


# ---------------------------------------------------------------------------------------------------------------


def default_data_root() -> Path | None:
    """Find the shared data folder: ``$SAC_DATA``, else ``../shared/data`` from the cwd or the repository."""
    env = os.environ.get("SAC_DATA")
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    return next((path for path in candidates if path.is_dir()), None)


@dataclass
class NucleiSample:
    """One image (uint8 RGB, H x W x 3) with its int32 instance labels (H x W, 0 = background)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    mpp: float | None = None  # µm per pixel, None when unknown


def _load_pairs(
    folder: Path,
    ids: Sequence[str] | None = None,
    mpp: dict[str | None, float | None] | None = None,
    user_folder: bool = False,
) -> list[NucleiSample]:
    """Load ``folder/images`` with the same-stem masks of ``folder/masks`` (label images) or, for images without
    one, ``folder/annotations/<id>.geojson`` (QuPath's exported objects, rasterised); optionally only ``ids``.

    ``mpp`` maps ids to their pixel size (``None`` key: the default for ids it does not list); an image it gives
    none for takes the one its file records, if any. A ``user_folder``'s masks of one label in pieces are taken
    as binary masks; a shared dataset's labels are its source's instances, kept as they are.
    """
    mpp = mpp or {}
    images_dir, masks_dir, notes_dir = folder / "images", folder / "masks", folder / "annotations"
    if not images_dir.is_dir() or not (masks_dir.is_dir() or notes_dir.is_dir()):
        raise InputError(f"{folder}: expected images/ with masks/ or annotations/ (GeoJSON) beside it")
    images = files_by_stem(list_images([images_dir]))
    masks = files_by_stem(list_images([masks_dir])) if masks_dir.is_dir() else {}
    notes = files_by_stem(sorted(notes_dir.glob("*.geojson"))) if notes_dir.is_dir() else {}
    both = sorted(set(masks) & set(notes))
    if both and ids is None:
        warnings.warn(
            f"{folder}: {len(both)} image(s) with both a mask and annotations, e.g. {both[0]}: the masks are used",
            stacklevel=2,
        )
    orphans = sorted(set(masks) - set(images))
    if orphans and ids is None:  # a renamed or deleted image would drop its annotation without a word
        warnings.warn(
            f"{masks_dir}: {len(orphans)} mask(s) with no image of the same name, e.g. {orphans[0]}: not used",
            stacklevel=2,
        )
    wanted = sorted(images) if ids is None else list(ids)
    missing = [stem for stem in wanted if stem not in images or (stem not in masks and stem not in notes)]
    if missing:
        # QuPath names an export after the image file: <id>.png.geojson
        named = [note for note in notes if Path(note).stem == missing[0]]
        hint = f" (annotations are named <id>.geojson: found {named[0]}.geojson)" if named else ""
        raise InputError(f"{folder}: no image/mask pair for {len(missing)} id(s), e.g. {missing[0]}{hint}")
    samples = []
    for stem in wanted:
        image = read_image(images[stem])
        if stem in masks:
            labels = read_labels(masks[stem], split_binary=user_folder)
            check_pair(image, labels, images[stem], masks[stem])
        else:
            labels = read_geojson_labels(notes[stem], image.shape[:2])
        size = mpp.get(stem, mpp.get(None))
        if size is None:  # a TIFF may record its own (OME, ImageJ, resolution tags)
            recorded = read_pixel_size(images[stem])
            size = recorded[0] if recorded else None
        samples.append(NucleiSample(stem, image, labels, size))
    return samples


def _pixel_sizes(dataset: Path, name: str) -> dict[str, float | None]:
    """Per-id pixel sizes from ``provenance.csv`` where it has them, else the dataset's documented one.

    The shared datasets' files hold notes such as "~0.25 (not in files)", which are skipped; a user's folder
    holds only what its owner wrote for SAC, so there every row must be a plausible number."""
    sizes: dict[str, float | None] = {None: DATASET_MPP.get(name)}
    provenance = dataset / "provenance.csv"
    if not provenance.is_file():
        return sizes
    with open(provenance, newline="") as handle:
        rows = list(csv.DictReader(handle))
    strict = name == "folder"
    if strict and rows and not {"id", "microns_per_pixel"} <= set(rows[0]):
        raise InputError(
            f"{provenance}: needs the columns id and microns_per_pixel, got {', '.join(rows[0])}"
        )
    for line, row in enumerate(rows, start=2):
        if not row.get("microns_per_pixel"):  # an empty cell: unknown (as sac pack writes it)
            continue
        try:
            size = float(row.get("microns_per_pixel"))
        except (TypeError, ValueError):
            if strict:
                raise InputError(
                    f"{provenance}, line {line}: {row.get('microns_per_pixel')!r} is not a pixel size in µm"
                ) from None
            continue
        if strict and not MPP_RANGE[0] <= size <= MPP_RANGE[1]:
            raise InputError(
                f"{provenance}, line {line}: {size:g} µm/px is outside {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g}"
            )
        if strict and not (row.get("id") or "").strip():
            raise InputError(f"{provenance}, line {line}: no id")
        if strict and sizes.get(row["id"], size) != size:
            raise InputError(
                f"{provenance}, line {line}: id {row['id']} given {sizes[row['id']]:g} µm/px already, now {size:g}"
            )
        sizes[row["id"]] = size
    return sizes


def load_dataset(name: str, root: Path | str | None = None, split: str = "train") -> list[NucleiSample]:
    """Load every sample of a dataset split into memory (the datasets are small, and training revisits them).

    ``root`` is the shared data folder (default :func:`default_data_root`); for ``folder`` it is the folder
    holding ``images/`` and ``masks/`` itself, or their parent ``<root>/<split>`` when that exists.
    """
    if name == "samples":
        return load_samples()
    if name == "folder" and root is None:
        raise InputError("the folder dataset needs its folder: pass a root (--data-root DIR)")
    if root is not None and not Path(root).exists():
        raise InputError(f"{root}: no such file or folder")
    if root is None:
        root = default_data_root()
        if root is None:
            raise InputError("no data folder found: pass a root or set SAC_DATA")
    packed = str(root).endswith(".zip")
    root = unpacked(Path(root)) if packed else Path(root)
    if name == "folder" and packed:  # sac pack stores a folder dataset under its name, as any other
        root = root / name
    if name == "folder":  # pixel sizes as in the shared layout: provenance.csv's id, microns_per_pixel
        sizes = _pixel_sizes(root, name)
        splits = [part for part in ("train", "test") if (root / part).is_dir()]
        if splits and split not in splits:
            raise InputError(f"{root}: no {split}/ split; it has {', '.join(f'{part}/' for part in splits)}")
        if split == "test" and not splits:
            warnings.warn(
                f"{root}: no test/ split: all its images are scored, which a model tuned on this folder has seen",
                stacklevel=2,
            )
        samples = _load_pairs(root / split if splits else root, mpp=sizes, user_folder=True)
        images = [
            root / part / "images" for part in ("", "train", "test") if (root / part / "images").is_dir()
        ]
        unknown = sorted(set(sizes) - {None} - {path.stem for path in list_images(images)})
        if unknown:  # a typo would leave that image's pixel size unknown without a word
            raise InputError(f"{root / 'provenance.csv'}: id {unknown[0]} names no image of {root}")
        return samples
    if not (root / name).is_dir():
        known = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
        close = difflib.get_close_matches(name, [*known, "folder", "samples"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(
            f"unknown dataset {name!r}{hint}: no folder {root / name}; found {', '.join(known) or 'none'}"
        )
    mpp = _pixel_sizes(root / name, name)
    if name == "dsb2018":
        split_file = root / name / "split.json"
        if not split_file.is_file():
            raise InputError(f"{split_file}: not found; DSB2018 needs it to define its train/test split")
        splits = json.loads(split_file.read_text())
        if split not in ("train", "test"):
            raise InputError(f"{split_file}: unknown split {split!r}; expected train or test")
        return _load_pairs(root / name / "train", splits[split], mpp)
    folder = root / name / split
    if not folder.is_dir():
        raise InputError(f"{folder}: dataset split not found")
    return _load_pairs(folder, mpp=mpp)


PACK_LIMIT_MIB = 64  # what travels with a run to another machine (e.g. a lent GPU)


def pack_datasets(
    names: Sequence[str], out: Path | str, root: Path | str | None = None, quality: int = 90
) -> int:
    """Write the *training* splits of datasets into one zip in the shared layout, so a training run can move to
    another machine: ``sac train --data-root FILE.zip`` reads it as it reads the data folder. Returns its size.

    Images are stored as JPEG of ``quality`` (those that are JPEG already are re-encoded too: one rule), labels as
    16-bit PNG, each image's pixel size in ``provenance.csv``. Test splits are never packed.
    """
    members: list[tuple[str, bytes]] = []
    for name in names:
        samples = load_dataset(name, root, "train")
        for sample in samples:
            if sample.labels.max() > np.iinfo(np.uint16).max:
                raise InputError(f"{name}/{sample.name}: more than 65535 labels do not fit a 16-bit PNG")
            members.append(
                (f"{name}/train/images/{sample.name}.jpg", _encoded(sample.image, "JPEG", quality))
            )
            members.append(
                (f"{name}/train/masks/{sample.name}.png", _encoded(sample.labels.astype(np.uint16), "PNG"))
            )
        rows = "".join(f"{s.name},{'' if s.mpp is None else s.mpp}\n" for s in samples)
        members.append((f"{name}/provenance.csv", f"id,microns_per_pixel\n{rows}".encode()))
        if name == "dsb2018":  # its loader reads the split from split.json
            split = {"train": [s.name for s in samples], "test": []}
            members.append((f"{name}/split.json", json.dumps(split).encode()))
    with atomic_write(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for member, data in members:  # JPEG and PNG are compressed already
            archive.writestr(member, data)
    return Path(out).stat().st_size


def _encoded(array: np.ndarray, form: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, form, **({"quality": quality} if form == "JPEG" else {}))
    return buffer.getvalue()


def unpacked(archive: Path) -> Path:
    """The folder a packed data zip is extracted to (once per content: the folder is named by its sha256)."""
    if not archive.is_file():
        raise InputError(f"{archive}: no such data archive")
    folder = Path(tempfile.gettempdir()) / f"sac-data-{sha256sum(archive)[:16]}"
    if not folder.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(partial)
        except zipfile.BadZipFile as error:
            shutil.rmtree(partial)
            raise InputError(f"{archive}: not a data archive ({error})") from None
        partial.rename(folder)
    return folder


def rescale_sample(sample: NucleiSample, scale: float) -> NucleiSample:
    """The sample as if scanned at ``scale`` times its resolution: area-averaged (or bilinear, when enlarging)
    image, nearest-neighbour labels, pixel size divided by ``scale``."""
    if scale == 1:
        return sample
    shape = tuple(max(1, round(side * scale)) for side in sample.labels.shape)
    image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None].float()
    mode = {"mode": "area"} if scale < 1 else {"mode": "bilinear", "align_corners": False}
    image = (
        torch.nn.functional.interpolate(image, size=shape, **mode)[0].permute(1, 2, 0).round().byte().numpy()
    )
    labels = torch.from_numpy(sample.labels)[None, None].float()
    labels = torch.nn.functional.interpolate(labels, size=shape, mode="nearest-exact")[0, 0].int().numpy()
    return NucleiSample(sample.name, image, labels, None if sample.mpp is None else sample.mpp / scale)


def median_nucleus_area(samples: Sequence[NucleiSample], mpp: float | None) -> float | None:
    """Median nucleus area in pixels at pixel size ``mpp``, over the samples whose pixel size is known: the
    size ``--mpp auto`` compares an image's nuclei with. When none is known, the model trains on every image at
    its own scale, so their own areas are that reference. None for a model without a pixel size."""
    if mpp is None:
        return None
    known = [sample for sample in samples if sample.mpp is not None]
    areas = [
        np.bincount(sample.labels.ravel())[1:] * (1.0 if sample.mpp is None else sample.mpp / mpp) ** 2
        for sample in known or samples
    ]
    areas = [a[a > 0] for a in areas]
    return float(np.median(np.concatenate(areas))) if areas else None


def _pad_crop(image: np.ndarray, labels: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """A crop smaller than ``size`` padded at its bottom and right by mirroring (``mode`` of ``np.pad``; inference
    pads small images by reflection too), its labels mirrored with it: the nuclei the padding shows are labelled as
    nuclei, each mirrored copy an instance of its own (one straddling the edge stays one), not taught as background."""
    pad = ((0, size - labels.shape[0]), (0, size - labels.shape[1]))
    image = np.pad(image, (*pad, (0, 0)), mode=mode)
    return image, measure.label(np.pad(labels, pad, mode=mode), connectivity=2).astype(np.int32)


def instance_distance_map(labels: np.ndarray) -> np.ndarray:
    """Per-nucleus distance to its border scaled to 1 at its centre: the prompt generator's centre target.

    Each nucleus is transformed inside its own bounding box, so the cost scales with nucleus area, not with
    image area times nucleus count.
    """
    out = np.zeros(labels.shape, np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == index
        # The one-pixel zero border makes pixels on the box edge (or image edge) count as next to background.
        distance = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        out[box][inside] = distance[inside] / distance.max()
    return out


def _stain_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Perturb haematoxylin/eosin/DAB amounts so the model sees the colour spread of different labs."""
    hed = rgb2hed(image)
    hed = hed * rng.uniform(1 - _HED_SCALE, 1 + _HED_SCALE, 3) + rng.uniform(-_HED_SHIFT, _HED_SHIFT, 3)
    return hed2rgb(hed)


def _colour_jitter(image: np.ndarray, rng: np.random.Generator, colour: bool) -> np.ndarray:
    """Brightness and contrast for all images; saturation only for colour so grey images stay grey."""
    image = image * rng.uniform(1 - _BRIGHTNESS, 1 + _BRIGHTNESS)
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - _CONTRAST, 1 + _CONTRAST) + mean
    if colour:
        grey = image.mean(axis=2, keepdims=True)
        image = (image - grey) * rng.uniform(1 - _SATURATION, 1 + _SATURATION) + grey
    return image


class CropDataset(torch.utils.data.Dataset):
    """Random fixed-size crops with their targets, reproducible from ``(seed, epoch, index)``.

    Images are drawn with probability proportional to their area so large images are not under-sampled.
    Because every item's randomness comes only from ``(seed, epoch, index)``, a resumed run that calls
    :meth:`set_epoch` sees the same batches. Call it before creating the DataLoader iterator for the epoch
    (workers copy the dataset when the iterator starts).
    """

    def __init__(
        self,
        samples: Sequence[NucleiSample],
        crop_size: int = 256,
        crops_per_epoch: int | None = None,
        augment: bool = True,
        seed: int = 0,
        target_mpp: float | None = None,
        max_zoom: float = 1.0,
    ) -> None:
        if not samples:
            raise InputError("CropDataset needs at least one sample")
        if max_zoom < 1:
            raise InputError(f"max_zoom must be at least 1, got {max_zoom}")
        self.samples = list(samples)
        self.crop_size = crop_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.target_mpp = target_mpp
        self.max_zoom = max_zoom
        self._distances = [instance_distance_map(sample.labels) for sample in self.samples]
        shapes = [sample.labels.shape for sample in self.samples]
        areas = np.array([h * w for h, w in shapes], np.float64)
        self._probabilities = areas / areas.sum()
        if crops_per_epoch is None:
            crops_per_epoch = sum(math.ceil(h / crop_size) * math.ceil(w / crop_size) for h, w in shapes)
        self.crops_per_epoch = crops_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.crops_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"crop index {index} out of range for {len(self)} crops")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        which = rng.choice(len(self.samples), p=self._probabilities)
        zoom = self._zoom(self.samples[which], rng)
        image, labels, distance = self._crop(which, rng) if zoom == 1 else self._zoomed_crop(which, zoom, rng)
        if self.augment:
            image, labels, distance = self._augment(image, labels, distance, rng)
        else:
            image = image / 255.0
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)),
            "mask": torch.from_numpy((labels > 0)[None].astype(np.float32)),
            "distance": torch.from_numpy(np.ascontiguousarray(distance[None], np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, np.int64)),
        }

    def _zoom(self, sample: NucleiSample, rng: np.random.Generator) -> float:
        """Model pixels per image pixel: the pixel-size ratio, times a random zoom for half of the crops."""
        zoom = 1.0
        if self.target_mpp is not None and sample.mpp is not None:
            zoom = sample.mpp / self.target_mpp
        if self.augment and self.max_zoom > 1 and rng.random() < _SCALE_PROBABILITY:
            zoom *= math.exp(rng.uniform(-math.log(self.max_zoom), math.log(self.max_zoom)))
        return zoom

    def _zoomed_crop(
        self, which: int, zoom: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A crop of ``crop_size / zoom`` image pixels resampled to ``crop_size``; targets rebuilt at that scale."""
        sample, size = self.samples[which], self.crop_size
        source = max(1, round(size / zoom))
        height, width = sample.labels.shape
        top = int(rng.integers(0, max(height - source, 0) + 1))
        left = int(rng.integers(0, max(width - source, 0) + 1))
        window = np.s_[top : top + source, left : left + source]
        image, labels = sample.image[window], sample.labels[window]
        zoomed = resize_image(image, zoom)  # as inference resamples an image to the model's scale
        labels = resample_labels(labels, zoomed.shape[:2])
        image, labels = zoomed[:size, :size], labels[:size, :size]  # rounding may give a pixel past the crop
        image, labels = _pad_crop(image, labels, size, "symmetric")
        return image, labels, instance_distance_map(labels)

    def _crop(self, which: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut a random window; an image smaller than the crop is padded by reflection, its labels with it."""
        sample, distance, size = self.samples[which], self._distances[which], self.crop_size
        height, width = sample.labels.shape
        top = int(rng.integers(0, max(height - size, 0) + 1))
        left = int(rng.integers(0, max(width - size, 0) + 1))
        window = np.s_[top : top + size, left : left + size]
        image, labels, distance = sample.image[window], sample.labels[window], distance[window]
        if labels.shape != (size, size):
            image, labels = _pad_crop(image, labels, size, "reflect")
            distance = instance_distance_map(labels)
        return image, labels, distance

    @staticmethod
    def _augment(
        image: np.ndarray, labels: np.ndarray, distance: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flip/rotate all three arrays together, then jitter colours; returns the image as floats in 0..1."""
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        arrays = [np.rot90(array, turns, axes=(0, 1)) for array in (image, labels, distance)]
        if flip:
            arrays = [array[:, ::-1] for array in arrays]
        image, labels, distance = arrays
        colour = bool((image != image[..., :1]).any())
        image = image / 255.0
        if colour:
            image = _stain_jitter(image, rng)
            if rng.random() < _GREY_PROBABILITY:
                image, colour = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2), False
        image = np.clip(_colour_jitter(image, rng, colour), 0.0, 1.0)
        return image, labels, distance
