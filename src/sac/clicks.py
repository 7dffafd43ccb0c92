"""Files of a user's clicks: CSV ``x,y,label[,image]`` or JSON ``{"positive": [[x, y], ...], "negative": [...]}``
(or such objects keyed by image name), or a folder with one such file per image (``<image stem>.csv|json``).

Coordinates are (x, y) pixels of the image; for a slide, of its full-resolution level 0 (QuPath's frame).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sac.io import InputError, atomic_write
from sac.points import as_points

Clicks = tuple[np.ndarray, np.ndarray]  # (positive, negative), each float32 (M, 2) (x, y)


def read_clicks(path: str | os.PathLike) -> dict[str | None, Clicks]:
    """Clicks per image name from a file or a folder of files; the key None holds clicks for any image.

    A CSV with an ``image`` column or a JSON object keyed by image name gives clicks per image; a folder gives
    each file's clicks to the image with its stem; a file without names gives clicks for one image.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".json") and p.is_file())
        if not files:
            raise InputError(f"{path}: folder holds no .csv or .json click files")
        return {file.stem: read_points_file(file) for file in files}
    return _read(path, per_image=True)


def clicks_for(clicks: dict[str | None, Clicks], image: Path) -> Clicks | None:
    """The clicks meant for ``image`` (by file name, then stem), or those for any image."""
    for key in (image.name, image.stem, None):
        if key in clicks:
            return clicks[key]
    return None


def check_clicks_match(
    clicks: dict[str | None, Clicks], images: list[Path], source: str | os.PathLike
) -> None:
    """Fail before any work when clicks name no input, or would apply to several images without saying which."""
    names = {name for image in images for name in (image.name, image.stem)}
    unknown = sorted(key for key in clicks if key is not None and key not in names)
    if unknown:
        raise InputError(f"{source}: clicks for {', '.join(unknown[:3])}, which is not among the inputs")
    if None in clicks and len(images) > 1:
        raise InputError(
            f"{source}: clicks without image names but {len(images)} inputs; add an image column (CSV), key them "
            "by image name (JSON), or give a folder with one file per image"
        )


def read_points_file(path: str | os.PathLike) -> Clicks:
    """Read manual ``(positive, negative)`` points, each float32 ``(M, 2)`` in ``(x, y)`` pixels.

    Accepts a CSV with header ``x,y,label`` (label 1 = positive, 0 = negative) or a JSON object
    ``{"positive": [[x, y], ...], "negative": [...]}`` (either key may be omitted).
    """
    clicks = _read(Path(path), per_image=False)
    return clicks[None]


def _read(path: Path, per_image: bool) -> dict[str | None, Clicks]:
    suffix = _points_suffix(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read points file ({error})") from None
    return _parse_csv(text, path, per_image) if suffix == ".csv" else _parse_json(text, path, per_image)


def _parse_csv(text: str, path: Path, per_image: bool) -> dict[str | None, Clicks]:
    rows = list(csv.reader(text.splitlines()))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    named = per_image and header == ["x", "y", "label", "image"]
    if header != ["x", "y", "label"] and not named:
        raise InputError(
            f"{path}: CSV header must be x,y,label" + (" (and optionally image)" if per_image else "")
        )
    points: dict[str | None, dict[int, list[tuple[float, float]]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            x, y, label, *image = row
            point, label = (float(x), float(y)), int(label)
            if len(image) != named:
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}: line {line}: expected numbers {','.join(header)}, got {','.join(row)!r}"
            ) from None
        if label not in (0, 1):
            raise InputError(f"{path}: line {line}: label must be 1 (positive) or 0 (negative), got {label}")
        key = image[0].strip() if named else None
        points.setdefault(key, {1: [], 0: []})[label].append(point)
    if not points:
        points[None] = {1: [], 0: []}
    return {
        key: (as_points(p[1], f"{path}: positive points"), as_points(p[0], f"{path}: negative points"))
        for key, p in points.items()
    }


def _parse_json(text: str, path: Path, per_image: bool) -> dict[str | None, Clicks]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    expected = f'{path}: expected a JSON object with "positive" and/or "negative" lists of [x, y]'
    if not isinstance(data, dict):
        raise InputError(expected)
    keyed = per_image and data and all(isinstance(value, dict) for value in data.values())
    entries = data if keyed else {None: data}
    clicks = {}
    for key, entry in entries.items():
        if not set(entry) <= {"positive", "negative"}:
            raise InputError(expected + (" per image name" if per_image else ""))
        where = f"{path}: {key}" if key else str(path)
        clicks[key] = tuple(
            as_points(entry.get(k, []), f"{where}: {k} points") for k in ("positive", "negative")
        )
    return clicks


def write_points_file(
    path: str | os.PathLike,
    positive: Sequence[Sequence[float]] | np.ndarray,
    negative: Sequence[Sequence[float]] | np.ndarray,
) -> None:
    """Save points in :func:`read_points_file`'s format (chosen by suffix) so prompts can be reused."""
    path = Path(path)
    suffix = _points_suffix(path)
    positive = as_points(positive, "positive points").tolist()
    negative = as_points(negative, "negative points").tolist()
    with atomic_write(path) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps({"positive": positive, "negative": negative}), encoding="utf-8")
        else:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["x", "y", "label"])
                writer.writerows([*([x, y, 1] for x, y in positive), *([x, y, 0] for x, y in negative)])


def _points_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"{path}: points file must end in .csv or .json")
    return suffix
