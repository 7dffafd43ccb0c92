"""Reading images and masks with clear errors, and writing files atomically.

Every reader returns plain numpy arrays; every writer goes through :func:`atomic_write` so an interrupted
process never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.segmentation import relabel_sequential

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(ValueError):
    """A user-supplied file or array is unusable; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The output gets the permissions of a plain ``open`` (0o666 less the umask), not the owner-only 0o600 of a
    ``tempfile.mkstemp`` file, nor that of writers that rename their own temporary file onto ours (safetensors).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp_path.stat().st_mode
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


_TIFF_SUFFIXES = (".tif", ".tiff")
# PIL modes whose numpy view is already a usable intensity array; others (palette, CMYK, YCbCr...) go to RGB.
_PIL_ARRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA"})
# the intensity range stretched to 0..1 for non-8-bit data, shared by single images and whole slides
ROBUST_PERCENTILES = (0.1, 99.9)


def check_file(path: Path) -> None:
    """Fail with a one-line message naming ``path`` before a decoder gives a confusing one."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


def _decode(path: Path, *, palette_as_rgb: bool) -> np.ndarray:
    """Decode ``path`` to its raw array; palette images stay indices for masks but become RGB for images."""
    check_file(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array = tifffile.imread(path)
            if array.size == 0:  # tifffile returns an empty array rather than failing on some corrupt files
                raise ValueError("no image data")
            return array
        with Image.open(path) as image:
            if palette_as_rgb and image.mode not in _PIL_ARRAY_MODES:
                image = image.convert("RGB")
            return np.array(image)
    except Exception as exc:  # decoders raise many unrelated types (OSError, SyntaxError, codec errors)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot decode image ({reason})") from exc


def _channels_last(array: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes (TIFF stacks of one) and move a channel-first axis (C<=4) to the end."""
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[2]:
        array = np.moveaxis(array, 0, -1)
    return array


def _stretch(array: np.ndarray) -> np.ndarray:
    """Map the robust range to 0..1 so a few hot pixels in 16-bit or float data do not darken the rest.

    Works in float64 (float32 would merge the values of a narrow range far from zero in 32- and 64-bit data),
    on halved values so that even the span of the largest float64 values stays finite.
    """
    work = array.astype(np.float64)
    work /= 2
    lo, hi = np.percentile(work, ROBUST_PERCENTILES)
    if hi <= lo:
        return np.zeros(array.shape, np.float32)
    work -= lo
    work /= hi - lo
    return np.clip(work, 0.0, 1.0, out=work)


def to_rgb_uint8(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Normalise any supported image array to uint8 RGB (H, W, 3), the single format the model consumes.

    Accepted shapes: (H, W), (H, W, 1), (H, W, 2) (channel 0 is used as grey, the second is taken as alpha or
    an unused channel), (H, W, 3), (H, W, 4) (alpha dropped); also channel-first (C<=4, H, W) and leading
    singleton axes. uint8 is kept, bool becomes 0/255, floats within [0, 1] are scaled by 255 and any other
    data is stretched between its 0.1 and 99.9 percentiles. ``name`` appears in error messages.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported data type {array.dtype}")
    if array.size == 0:
        raise InputError(f"{name}: empty image of shape {array.shape}")
    array = _channels_last(array)
    if array.ndim == 3 and array.shape[2] <= 4:
        array = array[..., :1] if array.shape[2] <= 2 else array[..., :3]
    elif array.ndim != 2:
        raise InputError(
            f"{name}: unsupported image shape {array.shape}; expected (H, W) or (H, W, C) with C <= 4"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{name}: image contains NaN or Inf values")

    if array.dtype == np.uint8:
        out = array
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f" and array.min() >= 0.0 and array.max() <= 1.0:
        out = np.round(array * 255.0).astype(np.uint8)
    else:
        out = np.round(_stretch(array) * 255.0).astype(np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(np.broadcast_to(out, (*out.shape[:2], 3)))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/BMP image as uint8 RGB (H, W, 3); see :func:`to_rgb_uint8` for the conversion."""
    path = Path(path)
    return to_rgb_uint8(_decode(path, palette_as_rgb=True), name=str(path))


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an instance mask as int32 labels renumbered 1..N (0 = background), so ids can index arrays."""
    path = Path(path)
    labels = _decode(path, palette_as_rgb=False)
    while labels.ndim > 2 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2 or labels.size == 0:
        raise InputError(f"{path}: a mask must be a single-channel 2-D label image, got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise InputError(f"{path}: mask labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise InputError(f"{path}: mask contains negative labels (min {labels.min()})")
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    # Most masks are already numbered 1..N; a bincount detects that far faster than relabelling. Ids are
    # cast only once known to be small: uint64 ids from 2**63 up would turn negative as int64.
    if labels.max() < labels.size and np.bincount(labels.ravel().astype(np.intp))[1:].all():
        return labels.astype(np.int32)
    return relabel_sequential(labels)[0].astype(np.int32)


def list_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into image paths; folders give their visible image files in sorted order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise InputError(f"{path}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{path}: unsupported file type; expected {', '.join(IMAGE_SUFFIXES)}")
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def check_pair(
    image: np.ndarray, labels: np.ndarray, image_path: str | os.PathLike, mask_path: str | os.PathLike
) -> None:
    """Fail early on a mask that does not match its image, naming both files."""
    if image.shape[:2] != labels.shape[:2]:
        raise InputError(
            f"mask size {labels.shape[0]}x{labels.shape[1]} differs from image size "
            f"{image.shape[0]}x{image.shape[1]} ({mask_path} vs {image_path})"
        )
