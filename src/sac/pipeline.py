"""The file pipeline behind ``sac predict``: image files and slides in; masks, label TIFFs, tables, GeoJSON and
overlays out.

One loop serves every input: an image is read whole and segmented; an SVS file or a TIFF too large to read whole
is streamed block by block (``sac.wsi``). A batch keeps going past unreadable inputs: each is reported in one
line and returned as a failure, so one corrupt file does not cost the rest of a night's run; and it records what
it finished as it goes (:class:`RunRecord`), so an interrupted run can be resumed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from skimage.segmentation import expand_labels
from tqdm import tqdm

import sac
from sac.clicks import check_clicks_inside, check_clicks_match, clicks_for, read_clicks
from sac.export import (
    DEFAULT_OUTPUTS,
    MASK_OUTPUTS,
    OUTPUT_SUFFIXES,
    output_path,
    output_stem,
    write_geojson,
    write_labels_tif,
    write_mask_png,
    write_nuclei_csv,
    write_overlay,
    write_probability_tif,
)
from sac.io import (
    IMAGE_SUFFIXES,
    InputError,
    as_json,
    atomic_write,
    check_output_dir,
    list_images,
    read_input,
    read_pixel_size,
    sha256sum,
    to_rgb_uint8,
    write_json,
)
from sac.model import SACConfig, model_record
from sac.options import SegmentOptions
from sac.points import Points
from sac.progress import progress_bar
from sac.segmenter import Segmenter
from sac.wsi import SLIDE_SUFFIXES, check_level, is_slide, segment_slide

INPUT_SUFFIXES = tuple(dict.fromkeys((*IMAGE_SUFFIXES, *SLIDE_SUFFIXES)))  # what a folder's files may be

SUMMARY_FILE, RUN_FILE = "sac_summary.csv", "sac_run.json"
SLIDE_OUTPUTS = ("labels", "geojson")  # what sac.wsi.segment_slide writes


@dataclass(frozen=True)
class RunOptions:
    """What a run reads and writes, beside how it segments (``SegmentOptions``): checked once, then passed to every
    file, locally or to dask workers.

    Parameters
    ----------
    points_file : path, optional
        A user's clicks (``sac.clicks.read_clicks``: per image, by name); slides take them in level-0 pixels.
    slides : bool
        Stream every input as a whole-slide image (automatic for SVS and TIFFs over 8192 px a side).
    level : int or None
        Pyramid level of slides; None: the level closest to the model's pixel size.
    recursive : bool
        Also take images in subfolders of folders.
    save : names, optional
        Which outputs to write (keys of ``sac.export.OUTPUT_SUFFIXES``); None: the mask, and with instances the
        labels, table, GeoJSON and overlay. Every run also writes ``sac_summary.csv`` and ``sac_run.json``.
    expand_cells : float, optional
        Grow each nucleus by this distance (µm when the pixel size is known, else pixels) into a cell:
        ``<stem>_cells.tif``, and QuPath cell objects in the GeoJSON.
    resume : bool
        Continue an interrupted run into the same output folder: the images its ``sac_summary.csv`` lists as
        finished are not segmented again. Refused when the model or a setting that changes outputs differs.
    """

    points_file: str | os.PathLike | None = None
    slides: bool = False
    level: int | None = None
    recursive: bool = False
    save: tuple[str, ...] | None = None
    expand_cells: float | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.save is not None:
            object.__setattr__(self, "save", tuple(self.save))
            unknown = [name for name in self.save if name not in OUTPUT_SUFFIXES]
            if unknown or not self.save:
                raise InputError(
                    f"outputs {', '.join(unknown) or 'none'}: choose from {', '.join(OUTPUT_SUFFIXES)}"
                )
        if self.level is not None and self.level < 0:
            raise InputError(f"pyramid level must not be negative, got {self.level}")
        if self.expand_cells is not None and self.expand_cells < 0:
            raise InputError(f"cell expansion must not be negative, got {self.expand_cells}")
        if "cells" in (self.save or ()) and not self.expand_cells:
            raise InputError("the cells output needs a cell expansion distance (--expand-cells D)")

    def instance_outputs(self) -> list[str]:
        """What this run asks for that only instances can give."""
        asked = [name for name in self.save or () if name not in MASK_OUTPUTS]
        return asked + (["cells (--expand-cells)"] if self.expand_cells and "cells" not in asked else [])


# per image: objects found (empty without instances), their mean area, the share of the image the mask covers
SUMMARY_COLUMNS = ("image", "objects", "mean_area_px", "foreground_fraction", "mpp", "scale")
# names of the image files a run writes, which a folder given as input (often the output folder too) may hold
_OUTPUT_IMAGE_ENDINGS = tuple(
    suffix.lower() for suffix in OUTPUT_SUFFIXES.values() if Path(suffix).suffix in (".png", ".tif")
)


class FoundInput(NamedTuple):
    """An input file, whether it is streamed as a slide, where in the output folder its outputs go (the
    subfolder it lies in below a folder given with ``recursive``, ``.`` otherwise, so same-named files of
    different subfolders keep apart), and the user's clicks on it (``check_run`` matches them)."""

    path: Path
    slide: bool
    subfolder: Path = Path()
    clicks: Points | None = None

    def output_dir(self, out_dir: str | os.PathLike) -> Path:
        return Path(out_dir) / self.subfolder

    @property
    def name(self) -> str:
        """The input's name in the run's summary: its file name, below its subfolder."""
        return (self.subfolder / self.path.name).as_posix()


# an input and its summary row, or the one line that says why it failed
Outcome = tuple[FoundInput, dict | str]


def find_inputs(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], slides: bool = False, recursive: bool = False
) -> list[FoundInput]:
    """Expand files and folders into :class:`FoundInput`; ``slides`` streams every input as a slide.

    A folder's files named as SAC's outputs (``*_mask.png``, ``*_labels.tif``, ...) are left out, so a run whose
    output folder is its input folder does not segment its previous outputs. Fails at once, before any model
    work, on a missing path or two inputs whose outputs would collide.
    """
    subfolders: dict[Path, Path] = {}  # each file once, in the output subfolder it was first found for
    left_out: list[Path] = []
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:  # one path, or several
        path = Path(item)
        for file in list_images([path], recursive, INPUT_SUFFIXES):
            if file == path or not file.name.lower().endswith(_OUTPUT_IMAGE_ENDINGS):
                subfolders.setdefault(file, file.parent.relative_to(path) if path.is_dir() else Path())
            else:
                left_out.append(file)
    if left_out:
        warnings.warn(
            f"{left_out[0]}{f' and {len(left_out) - 1} more' if len(left_out) > 1 else ''}: named like SAC's "
            "outputs, so not segmented (give such a file by its own path to segment it)",
            stacklevel=2,
        )
    counts = Counter((subfolder, output_stem(file)) for file, subfolder in subfolders.items())
    clashing = [str(file) for file, sub in subfolders.items() if counts[sub, output_stem(file)] > 1]
    if clashing:
        raise InputError(
            f"{', '.join(clashing[:4])}{' ...' * (len(clashing) > 4)}: same file name stem, so their outputs would "
            "collide: rename them, or segment them into separate output folders"
        )
    return [FoundInput(file, slides or is_slide(file), sub) for file, sub in subfolders.items()]


def segment_files(
    segmenter: Segmenter,
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    run: RunOptions | None = None,
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Segment image files, slides and folders of them into ``out_dir`` as ``run`` says; returns the skipped files
    with a one-line reason."""
    run = run or RunOptions()
    found = check_run(inputs, out_dir, run, segmenter.options)
    record = RunRecord(out_dir, model_record(segmenter.model), segmenter.options, run)

    def outcomes(items: list[FoundInput]) -> Iterator[Outcome]:
        for item in items:
            try:
                yield item, segment_file(segmenter, item, out_dir, run, progress)
            except InputError as error:
                yield item, report_skipped(item.path, error)[1]

    return record.run(found, outcomes, progress)


def check_run(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    run: RunOptions,
    options: SegmentOptions,
) -> list[FoundInput]:
    """Everything about a run that can fail before the model is loaded: the inputs (``find_inputs``), the clicks
    against them, the output folder, and outputs that need instances when none are asked for. Returns the
    inputs, each with its clicks."""
    found = find_inputs(inputs, run.slides, run.recursive)
    slides = [item.path.name for item in found if item.slide]
    needing_instances = run.instance_outputs()
    if not options.instances and needing_instances and len(slides) < len(found):
        raise InputError(  # slides always get instances
            f"{', '.join(needing_instances)}: needs instances; add --instances (in Python: instances=True)"
        )
    if run.level is not None and not slides:
        raise InputError(
            "a pyramid level applies to slides, and no input is one (--wsi streams any as a slide)"
        )
    unwritten = [name for name in run.save or () if name not in SLIDE_OUTPUTS]
    if slides and (unwritten or run.expand_cells):
        raise InputError(
            f"{', '.join(slides[:3])}: slides are written as {' and '.join(SLIDE_OUTPUTS)} only, not "
            f"{', '.join(unwritten or ['cells (--expand-cells)'])}"
        )
    if run.level is not None:
        for slide in (item.path for item in found if item.slide):
            check_level(slide, run.level)
    clicks = load_clicks(run.points_file, [item.path for item in found])
    found = [item._replace(clicks=clicks_for(clicks, item.path)) for item in found]
    for item in found:
        check_clicks_inside(item.clicks, item.path)
    check_output_dir(out_dir)
    return found


class RunRecord:
    """A run's ``sac_summary.csv`` (per image: objects found, their mean area, the mask's share, pixel size) and
    ``sac_run.json`` (the model, its sha256, every setting, the versions, the command, whether it finished): what
    a run did, next to what it wrote.

    Both are rewritten while the run goes on (at most every ``FLUSH_SECONDS``, and when it stops, however it
    stops), so a run that is killed loses at most those seconds' rows; with ``RunOptions.resume`` a new run keeps
    the rows of an earlier one made with the same model and settings, and segments only the other images. Use it
    as a context manager around the loop over the inputs.
    """

    FLUSH_SECONDS = 2.0
    # settings that change no output, so a resumed run may differ in them
    # (of RunOptions; SegmentOptions.output_settings leaves out its own)
    _NEUTRAL = frozenset({"recursive", "resume", "points_file"})

    def __init__(
        self, out_dir: str | os.PathLike, model_meta: dict, options: SegmentOptions, run: RunOptions
    ) -> None:
        self.out_dir = Path(out_dir)
        clicks = run.points_file and Path(run.points_file)
        self.settings = as_json(
            {
                "model": model_meta.get("weights_sha256"),
                "options": options.output_settings(),
                "run": {
                    name: value
                    for name, value in dataclasses.asdict(run).items()
                    if name not in self._NEUTRAL
                }
                | {"points_sha256": sha256sum(clicks) if clicks and clicks.is_file() else None},
            }
        )
        self.header = provenance(model_meta, options)
        self.rows: dict[str, dict] = self._previous_rows() if run.resume else {}
        self.failures: list[tuple[Path, str]] = []
        self._flushed = 0.0

    def run(
        self,
        found: list[FoundInput],
        outcomes: Callable[[list[FoundInput]], Iterator[Outcome]],
        progress: bool = True,
    ) -> list[tuple[Path, str]]:
        """The one loop over a run's inputs, wherever they are segmented: ``outcomes`` gets the inputs an earlier
        run did not finish and yields each, in any order, with its summary row or the line saying why it failed.
        Rows are recorded as they come; the failures are returned in the inputs' order."""
        with self:
            left = self.left(found, progress)
            results = outcomes(left)
            # closed however the loop ends, so a cluster behind ``outcomes`` shuts down
            with contextlib.closing(results):
                for item, outcome in progress_bar(
                    results, progress and bool(left), total=len(left), desc="sac predict", unit="file"
                ):
                    if isinstance(outcome, str):
                        self.failures.append((item.path, outcome))
                    else:
                        self.add(outcome)
            order = {item.path: index for index, item in enumerate(left)}
            self.failures.sort(key=lambda failure: order[failure[0]])
        return self.failures

    def left(self, found: list[FoundInput], progress: bool = True) -> list[FoundInput]:
        """The inputs an earlier run of a resumed one did not finish."""
        left = [item for item in found if item.name not in self.rows]
        if progress and len(left) < len(found):
            tqdm.write(
                f"sac: resuming: {len(found) - len(left)} of {len(found)} images were finished by the earlier run",
                file=sys.stderr,
            )
        return left

    def add(self, row: dict) -> None:
        """An image's summary row, once all its outputs are written."""
        self.rows[row["image"]] = row
        if time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.write(finished=False)

    def write(self, finished: bool) -> None:
        with atomic_write(self.out_dir / SUMMARY_FILE) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(sorted(self.rows.values(), key=lambda row: row["image"]))
        record = self.header | {
            "finished": finished,
            "images": len(self.rows),
            "failures": [message for _, message in self.failures],
            "settings": self.settings,
        }
        write_json(self.out_dir / RUN_FILE, record, default=str)
        self._flushed = time.monotonic()

    def __enter__(self) -> RunRecord:
        self.write(finished=False)
        return self

    def __exit__(self, error_type, *_) -> None:
        self.write(finished=error_type is None)

    def _previous_rows(self) -> dict[str, dict]:
        """The rows of the run recorded in the output folder, refused unless it used this run's settings."""
        record_path = self.out_dir / RUN_FILE
        if not record_path.is_file():
            return {}
        try:
            previous = json.loads(record_path.read_text()).get("settings")
            with open(self.out_dir / SUMMARY_FILE, newline="") as handle:
                rows = {row["image"]: row for row in csv.DictReader(handle)}
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise InputError(f"{record_path}: cannot resume from it ({error})") from None
        if previous != self.settings:
            changed = _differences(previous or {}, self.settings)
            raise InputError(
                f"{record_path}: the earlier run differs ({', '.join(changed[:4]) or 'settings not recorded'}); "
                "resuming would mix the two in one folder: leave out "
                "--resume, or write to another folder"
            )
        return rows


_UNSHOWN = {"model": "the model", "points_sha256": "the clicks"}  # differences named, not shown


_MODEL_OWN = {field.name for field in dataclasses.fields(SegmentOptions)} & {
    field.name for field in dataclasses.fields(SACConfig)
}


def _differences(before: dict, now: dict) -> list[str]:
    """What differs between two runs' settings, e.g. ``threshold 0.5 -> 0.6``."""
    changed = []
    for name in sorted(before.keys() | now.keys()):
        old, new = before.get(name), now.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _differences(old, new)
        elif old != new:
            # None, for a setting the model's config also holds, means the model's own
            shown = ("the model's" if value is None and name in _MODEL_OWN else value for value in (old, new))
            changed.append(_UNSHOWN.get(name) or f"{name} {' -> '.join(map(str, shown))}")
    return changed


def provenance(model_meta: dict, options: SegmentOptions) -> dict:
    """What produced a result: the model (sha256, config, metrics), every setting, the versions and the command."""
    return {
        "sac": sac.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "model": {key: model_meta.get(key) for key in ("weights_sha256", "model", "metrics")},
        "options": dataclasses.asdict(options),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


def load_clicks(points_file: str | os.PathLike | None, paths: list[Path]) -> dict:
    """The clicks of ``points_file`` by image, checked against the inputs before any work starts."""
    if points_file is None:
        return {}
    clicks = read_clicks(points_file)
    check_clicks_match(clicks, paths, points_file)
    return clicks


def segment_file(
    segmenter: Segmenter,
    item: FoundInput,
    out_dir: str | os.PathLike,
    run: RunOptions | None = None,
    progress: bool = True,
) -> dict:
    """One input file to its outputs, in its subfolder of the run's ``out_dir``: the unit of work of a local run
    and of a dask task alike. Returns its line of the run's summary table."""
    run = run or RunOptions()
    path, out_dir = item.path, item.output_dir(out_dir)
    if item.slide:
        summary = segment_slide(
            segmenter, path, out_dir, run.level, clicks=item.clicks, progress=progress, resume=run.resume
        )
        nuclei, (height, width) = summary["nuclei"], summary["shape"]
        return {
            "image": item.name,
            "objects": nuclei,
            "mean_area_px": summary["area_px"] / nuclei if nuclei else None,
            "foreground_fraction": round(summary["area_px"] / (height * width), 6),
            "mpp": summary["mpp"],
            "scale": f"slide level {summary['level']}",
        }
    found = read_input(path, segmenter.options.channel)
    image = to_rgb_uint8(found.data, str(path))  # a bad image (NaN, ...) is named before the model runs
    recorded = read_pixel_size(path)
    overridden = not isinstance(segmenter.options.mpp, str)  # --mpp applies to every file: noted, not warned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segmenter.segment(
            found.data, item.clicks, recorded[0] if recorded and not overridden else None
        )
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        warnings.warn(f"{path}: {message}", stacklevel=2)  # a batch's log says which file each is about
    note = result.scale_note.replace("the image's own", recorded[1]) if recorded else result.scale_note
    if recorded and result.mpp is not None and abs(result.mpp - recorded[0]) > 1e-3 * recorded[0]:
        note += f" (the file records {recorded[0]:g} µm/px)"
    if progress:
        augmented = f"; maps averaged over {segmenter.tta} views (TTA)" if segmenter.tta > 1 else ""
        tqdm.write(f"sac: {path.name}: {found.note}; {note}{augmented}", file=sys.stderr)
    wanted = set(run.save or DEFAULT_OUTPUTS) & (
        set(OUTPUT_SUFFIXES) if result.labels is not None else MASK_OUTPUTS
    )
    labels = result.labels
    objects = segmenter.model.config.objects
    cells = None
    if (
        run.expand_cells and labels is not None
    ):  # µm with a known pixel size, else px (StarDist's QuPath cells)
        if result.mpp is None and progress:
            tqdm.write(
                f"sac: {path.name}: cells grown by {run.expand_cells:g} pixels, not µm: the pixel size is "
                "unknown (give --mpp)",
                file=sys.stderr,
            )
        cells = expand_labels(labels, run.expand_cells / (result.mpp or 1.0))
        wanted.add("cells")
    writers = {
        "mask": lambda target: write_mask_png(target, result.mask),
        "prob": lambda target: write_probability_tif(target, result.maps[0], result.mpp),
        "labels": lambda target: write_labels_tif(target, labels, result.mpp),
        "table": lambda target: write_nuclei_csv(
            target,
            labels,
            found.raw,
            mpp=result.mpp,
            channel_names=found.channel_names,
            probability=result.maps[0],
            name=item.name,
            clicked=result.clicked,
        ),
        "cells": lambda target: write_labels_tif(target, cells, result.mpp),
        "geojson": lambda target: write_geojson(
            target, labels, probability=result.maps[0], cells=cells, objects=objects, clicked=result.clicked
        ),
        "overlay": lambda target: write_overlay(target, image, labels),
    }
    for kind in sorted(wanted, key=list(OUTPUT_SUFFIXES).index):
        writers[kind](output_path(out_dir, path, kind, objects))
    row = {
        "image": item.name,
        "foreground_fraction": round(float(result.mask.mean()), 6),
        "mpp": result.mpp,
        "scale": note,
    }
    if labels is not None:  # ids need not be contiguous (clicks remove objects and add new ones)
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas > 0]
        row |= {"objects": areas.size, "mean_area_px": float(areas.mean()) if areas.size else None}
    return row


def report_skipped(path: Path, error: InputError) -> tuple[Path, str]:
    """Say on stderr that ``path`` was skipped, in one line that names it; returns (path, message)."""
    message = str(error).splitlines()[0]
    message = message if str(path) in message else f"{path}: {message}"
    tqdm.write(f"sac: skipped {message}", file=sys.stderr)
    return path, message
