"""Reading images and masks with clear errors, and writing files atomically.

Every reader returns plain numpy arrays; every writer goes through :func:`atomic_write` so an interrupted
process never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile
from PIL import Image
from skimage import measure
from skimage.segmentation import relabel_sequential

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(ValueError):
    """A user-supplied file or array is unusable; the message names the file and the problem."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line reports of foreign errors."""
    text = str(error)
    return text.splitlines()[0][:limit] if text.strip() else type(error).__name__


_KIND_NAMES = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    type(None): "null",
}


def check_field_types(settings: object) -> None:
    """Refuse a field of a settings dataclass (inference options, model or training config) of the wrong kind in
    one line: a hand-edited JSON's "1e-4" for a number or "no" for a switch, before a comparison raises a
    TypeError or a string passes for true, and a NaN, which would pass every range check (``min_size=nan``
    switches the size filter off). NumPy scalars count as the numbers they are, and are kept as Python ones, so
    the settings save as JSON."""
    hints = typing.get_type_hints(type(settings))
    for settings_field in dataclasses.fields(settings):
        value, hint = getattr(settings, settings_field.name), hints[settings_field.name]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if not any(_is_kind(value, kind) for kind in kinds):
            expected = " or ".join(_KIND_NAMES.get(kind, "a list of names") for kind in kinds)
            raise InputError(f"{settings_field.name} must be {expected}, got {value!r}")
        if isinstance(value, np.generic):  # frozen dataclasses too
            object.__setattr__(settings, settings_field.name, value.item())


def _is_kind(value: object, kind: type) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return kind is bool
    if kind is float:
        return isinstance(value, numbers.Real) and not math.isnan(value)
    if kind is int:
        return isinstance(value, numbers.Integral)
    if typing.get_origin(kind) in (list, tuple):  # lists of names: datasets, LoRA targets, parts to train
        return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
    return value is None if kind is type(None) else isinstance(value, kind)


def sha256sum(path: str | os.PathLike) -> str:
    """The file's sha256 in hex, read in 1 MiB blocks (checkpoints of hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_state_dict(loaded: dict, expected: dict, source: str) -> None:
    """Fail with one line naming ``source`` unless ``loaded`` has exactly ``expected``'s keys and shapes."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    wrong = [k for k in expected if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise InputError(
            f"{source}: weights do not fit the architecture: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(wrong)} of wrong shape "
            f"(e.g. {[(k, tuple(loaded[k].shape)) for k in wrong[:2]]})"
        )


_TOKEN_BYTES = 6  # random bytes in atomic_write's temporary names


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The output gets the permissions of a plain ``open`` (0o666 less the umask), not the owner-only 0o600 of a
    ``tempfile.mkstemp`` file, nor that of writers that rename their own temporary file onto ours (safetensors).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp{path.suffix}")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp_path.stat().st_mode
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` left beside ``path`` when a process writing it was killed."""
    path = Path(path)
    name = re.compile(
        rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp{re.escape(path.suffix)}"
    )
    return [entry for entry in path.parent.glob(f".{path.name}.*") if name.fullmatch(entry.name)]


def as_json(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists, other objects as text), so a recorded setting and a
    new one compare equal."""
    return json.loads(json.dumps(value, default=str))


def write_json(
    path: str | os.PathLike, data: object, default: Callable[[object], object] | None = None
) -> None:
    """``data`` as indented JSON at ``path``, written atomically (:func:`atomic_write`); ``default`` as in
    :func:`json.dumps`, for values JSON has no type for."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=default))


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


_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# EXIF orientations other than 1 (as stored), as viewers that apply the tag would show the pixels
_EXIF_ORIENTATIONS = {
    2: "mirrored",
    3: "turned half round",
    4: "flipped upside down",
    5: "mirrored and turned",
    6: "turned a quarter clockwise",
    7: "mirrored and turned",
    8: "turned a quarter anticlockwise",
}


def _is_tiff(path: Path) -> bool:
    """Whether the file's content is a TIFF, whatever its name says (a PNG saved as ``.tif`` is not)."""
    return _starts_with(path, _TIFF_SIGNATURES)


def _starts_with(path: Path, signatures: tuple[bytes, ...]) -> bool:
    """Whether the file's first bytes are one of ``signatures`` (all of one length): its format by content."""
    with open(path, "rb") as handle:
        return handle.read(len(signatures[0])) in signatures


def _decode(path: Path, *, palette_as_rgb: bool) -> np.ndarray:
    """Decode ``path`` to its raw array; palette images stay indices for masks but become RGB for images. The
    decoder follows the content, not the name, so a PNG named ``.tif`` reads as the PNG it is."""
    check_file(path)
    try:
        if _is_tiff(path):
            array = tifffile.imread(path)
            if array.size == 0:  # tifffile returns an empty array rather than failing on some corrupt files
                raise ValueError("no image data")
            return array
        with Image.open(path) as image:
            _warn_exif_orientation(image, path)
            if palette_as_rgb and image.mode not in _PIL_ARRAY_MODES:
                image = image.convert("RGB")
            return np.array(image)
    except Exception as exc:  # decoders raise many unrelated types (OSError, SyntaxError, codec errors)
        raise InputError(f"{path}: cannot decode image ({first_line(exc)})") from exc


def _warn_exif_orientation(image: Image.Image, path: Path) -> None:
    """Say when a photo's EXIF tag asks viewers to turn or mirror it: SAC keeps the pixels as stored (the frame
    of every output and coordinate), as image-analysis readers such as tifffile and imageio do by default."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in _EXIF_ORIENTATIONS:
        warnings.warn(
            f"{path}: its EXIF orientation ({_EXIF_ORIENTATIONS[orientation]}) is not applied: it is segmented, "
            "and its outputs written, as its pixels are stored (a photo viewer shows it turned against them)",
            stacklevel=4,
        )


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image or slide (its full-resolution level) from the file's header, without decoding
    its pixels, so clicks can be checked against every input before any work; None when the header does not
    say, leaving the problem to the reader."""
    path = Path(path)
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                sizes = dict(zip(tif.series[0].axes, tif.series[0].shape, strict=True))
            return (sizes["Y"], sizes["X"]) if "Y" in sizes and "X" in sizes else None
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # decoders raise many unrelated types; the reader reports the file's problem
        return None


def is_channel_first(shape: tuple[int, ...]) -> bool:
    """The guess for a 3-D array: channels first when the first axis is short (C<=4) and the last is not."""
    return len(shape) == 3 and shape[0] <= 4 < shape[2]


# floats within [0, 1] whose 99.9th percentile lies below this are stretched like 16-bit data, not scaled by 255
DIM_FLOAT_LIMIT = 1 / 16


def channels_last(array: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes (TIFF stacks of one) and move a channel-first axis (C<=4) to the end."""
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if is_channel_first(array.shape):
        array = np.moveaxis(array, 0, -1)
    return array


def stretch(array: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map ``value_range`` (default: the image's 0.1 and 99.9 percentiles) to 0..1, clipping the rest, so a few hot
    pixels in 16-bit or float data do not darken everything else.

    Works in float64 (float32 would merge the values of a narrow range far from zero in 32- and 64-bit data),
    on halved values so that even the span of the largest float64 values stays finite.
    """
    offset = 0
    if array.dtype.kind in "iu" and array.size and max(abs(int(array.min())), int(array.max())) > 2**53:
        offset = array.min()  # shift such integers exactly first: float64 holds only 53 bits
        array = array.astype(np.uint64) - np.array(offset).astype(
            np.uint64
        )  # modulo 2**64: exact differences
    work = array.astype(np.float64)
    work /= 2
    if value_range is None:
        lo, hi = np.percentile(work, ROBUST_PERCENTILES)
    else:
        lo, hi = (float(value_range[0]) - float(offset)) / 2, (float(value_range[1]) - float(offset)) / 2
    if hi <= lo:
        return np.zeros(array.shape, np.float32)
    work -= lo
    work /= hi - lo
    return np.clip(work, 0.0, 1.0, out=work)


def to_rgb_uint8(
    array: np.ndarray, name: str = "array", value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Normalise any supported image array to uint8 RGB (H, W, 3), the single format the model consumes.

    Accepted shapes: (H, W), (H, W, 1), (H, W, 2) (channel 0 is used as grey, the second is taken as alpha or
    an unused channel), (H, W, 3), (H, W, 4) (alpha dropped: :func:`transparent_pixels`); also channel-first
    (C<=4, H, W) and leading singleton axes. uint8 is kept, as are integers of any type whose values all lie in
    0-255 (so a 16-bit copy of an 8-bit image segments as the 8-bit one); bool becomes 0/255; floats within
    [0, 1] are scaled by 255 (unless nearly all of them lie below ``DIM_FLOAT_LIMIT``, as a 12-bit camera's
    counts over 65535 do: 8 bits would keep under 16 grey levels of them); any other data is stretched between
    its 0.1 and 99.9 percentiles, or ``value_range`` when given (a whole slide's, so all of its blocks get the
    same contrast). ``name`` appears in error messages. This is the one place where inputs are normalised for
    the model.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported data type {array.dtype}")
    if array.size == 0:
        raise InputError(f"{name}: empty image of shape {array.shape}")
    array = channels_last(array)
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
    elif value_range is None and array.dtype.kind in "iu" and array.min() >= 0 and array.max() <= 255:
        # 8-bit values in a wider type (a 16-bit copy of an 8-bit image): as 8-bit
        out = array.astype(np.uint8)
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif (
        value_range is None
        and array.dtype.kind == "f"
        and array.min() >= 0.0
        and array.max() <= 1.0
        and np.percentile(array, ROBUST_PERCENTILES[1]) >= DIM_FLOAT_LIMIT
    ):
        out = np.round(array * 255.0).astype(np.uint8)
    else:
        out = np.round(stretch(array, value_range) * 255.0).astype(np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[2] == 3:
        return np.ascontiguousarray(out)
    return np.repeat(out, 3, axis=2)


def warn_if_not_a_micrograph(array: np.ndarray) -> None:
    """Warn when an image holds one or two values: a mask or a blank picture, not a micrograph, whose "nuclei"
    would be whatever the model makes of its edges."""
    array = np.asarray(array)
    low, high = array.min(), array.max()
    if not ((array != low) & (array != high)).any():
        values = f"only the values {low} and {high}" if high != low else f"a single value, {low}"
        warnings.warn(f"the image holds {values}: a mask or a blank image, not a micrograph?", stacklevel=3)


def transparent_pixels(array: np.ndarray) -> np.ndarray | None:
    """Where an RGBA image is fully transparent (alpha 0): no tissue was exported there, whatever colour its
    pixels hold, so nothing is segmented there. None without an alpha channel, or when alpha is 0 everywhere (an
    alpha channel that means nothing)."""
    array = channels_last(np.asarray(array))
    if array.ndim != 3 or array.shape[2] != 4:
        return None
    clear = array[..., 3] == 0
    return clear if clear.any() and not clear.all() else None


class InputImage(NamedTuple):
    """An image file as the model and the measurements need it."""

    data: (
        np.ndarray
    )  # what the model sees: (H, W) one channel, or (H, W, 3|4) colour, in the file's own units
    raw: np.ndarray  # (H, W) or (H, W, C): every channel, for measurements in the file's units
    channel_names: list[str]  # one per channel of ``raw`` (none for a single-channel image)
    note: str  # which channel the model sees, and why


_RGB_NAMES = ("red", "green", "blue", "alpha")
_STACK_AXES = {"Z": "a Z stack", "T": "a time series", "I": "a stack", "R": "a stack of tiles"}


def read_input(path: str | os.PathLike, channel: int | str | None = None) -> InputImage:
    """Read an image file, deciding each axis from its metadata (OME, ImageJ, TIFF samples), and pick the
    channel the model sees: ``channel`` by index or by name (OME channel names, ImageJ labels), else colour as colour and, for
    several non-colour channels, the first one with a warning. Z stacks and time series are refused.

    A TIFF's samples are colour only when its photometric tag says RGB, and a last sample is alpha only when
    its extra-samples tag says so; a four-channel grey (``minisblack``) TIFF is four channels, not RGBA.
    """
    path = Path(path)
    array, axes, names, samples = _decode_with_axes(path)
    keep = [
        i for i, (axis, size) in enumerate(zip(axes, array.shape, strict=True)) if size > 1 or axis in "YX"
    ]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    stacks = [
        f"{kind} of {array.shape[axes.index(axis)]}" for axis, kind in _STACK_AXES.items() if axis in axes
    ]
    if stacks:
        raise InputError(
            f"{path}: {' by '.join(stacks)} planes (axes {axes}); sac segments 2-D images: save the planes (or a "
            "projection) as separate images"
        )
    extra = [axis for axis in axes if axis not in "YX"]
    if len(extra) > 1 or axes.replace("".join(extra), "") != "YX":
        raise InputError(f"{path}: unsupported image axes {axes} of shape {array.shape}")
    if not extra:
        return InputImage(array, array, [], choose_channel(1, [], Samples(False, False), channel, path)[2])
    raw = np.moveaxis(array, axes.index(extra[0]), -1)
    on_samples = extra[0] == "S"  # colour and alpha are samples (interleaved), never separate channels
    choice, names, note = choose_channel(
        raw.shape[-1],
        names,
        Samples(on_samples and samples.colour, on_samples and samples.alpha),
        channel,
        path,
    )
    data = raw[..., choice]
    if data.ndim == 3 and data.shape[-1] == 2:  # grey with alpha, as RGBA, whose alpha the segmenter honours
        data = np.concatenate([np.repeat(data[..., :1], 3, axis=-1), data[..., 1:]], axis=-1)
    return InputImage(data, raw, names, note)


def choose_channel(
    count: int, names: list[str], samples: Samples, channel: int | str | None, path: str | os.PathLike
) -> tuple[int | slice, list[str], str]:
    """Which of an image's ``count`` channels (its last axis) the model sees, the channels' names and a note.

    ``channel`` by index or by name (``names``, else numbers, with R, G, B and alpha for colour samples);
    without it colour stays colour (with its alpha, where nothing is segmented), and of several other channels
    the first is taken, with a warning. Returns an index, or a slice of the colour samples.
    """
    if count == 1:
        if channel not in (None, 0, "0"):
            raise InputError(f"{path}: --channel {channel}, but the image has a single channel")
        return 0, names, "single channel"
    colour = samples.colour and count >= 3
    alpha = samples.alpha and count in (2, 4)  # grey + alpha, or RGB + alpha
    if len(names) != count:
        names = [str(i) for i in range(count)]
        if colour:
            names[:3] = _RGB_NAMES[:3]
        if alpha:
            names[-1] = "alpha"
            names[0] = names[0] if count > 2 else "intensity"  # grey with alpha: a table's mean_intensity
    if channel is None:
        if colour:
            return slice(0, 4 if alpha else 3), names, "colour (RGB)"
        if alpha and count == 2:  # grey with alpha, kept together: nothing is segmented where it is clear
            return slice(0, 2), names, "grey with alpha"
        warnings.warn(
            f"{path}: {count} channels ({', '.join(names)}) and no --channel: using channel 0"
            + (f" ({names[0]})" if names[0] != "0" else ""),
            stacklevel=3,
        )
        return 0, names, _channel_note(0, names)
    index = _channel_index(channel, names, Path(path))
    return index, names, _channel_note(index, names)


def _channel_note(index: int, names: list[str]) -> str:
    named = f" ({names[index]})" if names[index] != str(index) else ""
    return f"channel {index}{named} of {len(names)}"


def _channel_index(channel: int | str, names: list[str], path: Path) -> int:
    lowered = [name.lower() for name in names]
    if str(channel).lower() in lowered:
        return lowered.index(str(channel).lower())
    try:
        index = int(channel)
    except ValueError:
        raise InputError(f"{path}: no channel named {channel!r}; channels: {', '.join(names)}") from None
    if not 0 <= index < len(names):
        raise InputError(
            f"{path}: channel {index} does not exist; channels 0-{len(names) - 1}: {', '.join(names)}"
        )
    return index


class Samples(NamedTuple):
    """What a file's samples axis (``S``) holds: colour (RGB first), and an alpha sample last."""

    colour: bool
    alpha: bool


def _decode_with_axes(path: Path) -> tuple[np.ndarray, str, list[str], Samples]:
    """The file's pixels, the axis of each dimension (tifffile's letters), its channel names if any (OME, or
    ImageJ's slice labels, which :func:`read_input` uses when there is one per channel), and what its samples
    are."""
    check_file(path)
    if not _is_tiff(path):
        array = _decode(path, palette_as_rgb=True)  # PIL modes: L, LA, RGB, RGBA (others become RGB)
        channels = 1 if array.ndim == 2 else array.shape[2]
        return array, "YX" if array.ndim == 2 else "YXS", [], Samples(channels >= 3, channels in (2, 4))
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            names, samples = tiff_channels(tif)
            others = [f"{other.name or index} {other.shape}" for index, other in enumerate(tif.series[1:], 1)]
    except Exception as exc:  # decoders raise many unrelated types (OSError, codec errors, ValueError)
        raise InputError(f"{path}: cannot decode image ({first_line(exc)})") from exc
    if array.size == 0:
        raise InputError(f"{path}: cannot decode image (no image data)")
    if "Q" in axes:  # tifffile could not tell: the old rule, a short first axis holds channels
        axes = axes.replace("Q", "C" if is_channel_first(array.shape) else "I")
    if others:  # a file of several images (OME series, a slide's label and macro pictures): say which is used
        warnings.warn(
            f"{path}: holds {len(others) + 1} images; segmenting the first, {series.name or 0} {series.shape}, "
            f"not {', '.join(others[:3])}{' ...' * (len(others) > 3)}",
            stacklevel=4,
        )
    return array, axes, names, samples


def tiff_channels(tif: tifffile.TiffFile) -> tuple[list[str], Samples]:
    """A TIFF's channel names (OME, or Fiji's slice labels; empty when it names none) and what its samples are,
    from its metadata alone: the photometric tag decides colour, the extra-samples tag alpha."""
    names = (
        _ome_channel_names(tif)
        if tif.is_ome
        else [str(label) for label in (tif.imagej_metadata or {}).get("Labels", [])]
    )
    page = tif.series[0].keyframe
    samples = Samples(
        page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR),
        any(kind in (1, 2) for kind in page.extrasamples),  # associated or unassociated alpha
    )
    return names, samples


def _ome_channel_names(tif: tifffile.TiffFile) -> list[str]:
    channels = _find_key(tifffile.xml2dict(tif.ome_metadata or "<OME/>"), "Channel") or []
    channels = channels if isinstance(channels, list) else [channels]
    return [str(c.get("Name", i)) if isinstance(c, dict) else str(i) for i, c in enumerate(channels)]


def read_image(path: str | os.PathLike, channel: int | str | None = None) -> np.ndarray:
    """Read an image file as the uint8 RGB (H, W, 3) the model consumes (see :func:`read_input` for the channel
    and :func:`to_rgb_uint8` for the conversion)."""
    return to_rgb_uint8(read_input(path, channel).data, name=str(path))


def read_labels(path: str | os.PathLike, split_binary: bool = True) -> np.ndarray:
    """Read an instance mask as int32 labels renumbered 1..N (0 = background), so ids can index arrays.

    ``split_binary``: a single label in separate pieces is taken as a binary mask (:func:`split_binary_mask`);
    off for curated instance labels, whose source may give one object in pieces (GlaS's testB_3 is one).
    """
    path = Path(path)
    check_file(path)
    if _starts_with(path, (_JPEG_SIGNATURE,)):
        raise InputError(
            f"{path}: a JPEG mask: its lossy compression changes label values (a 0/255 mask comes back with "
            "dozens of grey levels, each taken as an object); save masks as PNG or TIFF"
        )
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
    if split_binary and labels.dtype == np.uint8 and labels.max() >= WRAPPED_IDS:
        _warn_if_wrapped(labels, path)
    # Most masks are already numbered 1..N; a bincount detects that far faster than relabelling. Ids are
    # cast only once known to be small: uint64 ids from 2**63 up would turn negative as int64.
    if labels.max() < labels.size and np.bincount(labels.ravel().astype(np.intp))[1:].all():
        labels = labels.astype(np.int32)
    else:
        labels = relabel_sequential(labels)[0].astype(np.int32)
    return split_binary_mask(labels, path) if split_binary else labels


# an 8-bit mask using ids this high may be labels past 255 saved as 8 bits, which wrap (256 becomes 0, 257 1, ...)
WRAPPED_IDS = 250


def _warn_if_wrapped(labels: np.ndarray, path: Path) -> None:
    """Warn when a full 8-bit mask holds ids in several separate pieces: more likely a 16-bit mask saved as 8 bits,
    its ids past 255 wrapped onto others (distant nuclei merged, some taken as background), than hand-made."""
    regions = measure.label(labels, background=0, connectivity=2).max()
    objects = np.count_nonzero(np.bincount(labels.ravel())[1:])
    if regions > objects:
        warnings.warn(
            f"{path}: an 8-bit mask of {objects} ids, {regions - objects} of them repeated in separate pieces: ids "
            "past 255 wrapped (saved as 8 bits)? save the labels as 16-bit PNG or TIFF",
            stacklevel=3,
        )


BINARY_MASK_PARTS = 2  # one label in this many disconnected pieces is a binary mask, not one object
# one piece of a binary mask spanning the image from edge to edge over at least this share of it: more likely the
# background (the mask inverted) than one object
INVERTED_MASK_SHARE = 0.4


def split_binary_mask(labels: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """A mask with a single label in disconnected pieces (a 0/255 mask, the most common home-made format) as one
    instance per connected piece, with a warning; any other mask unchanged.

    A label image of one object in pieces is rare, a binary mask of a few nuclei in a small crop is not; taking
    it as one instance would make every instance metric and the training targets silently wrong.
    """
    if labels.max() != 1:
        return labels
    pieces, count = measure.label(labels > 0, return_num=True)
    largest = np.bincount(pieces.ravel())[1:].argmax() + 1
    edges = (pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1])
    share = float((pieces == largest).mean())
    if share >= INVERTED_MASK_SHARE and all((edge == largest).any() for edge in edges):
        warnings.warn(
            f"{source}: one piece of the mask covers {share:.0%} of the image, from edge to edge: inverted "
            "(objects 0, background set)?",
            stacklevel=2,
        )
    if count < BINARY_MASK_PARTS:
        return labels
    warnings.warn(
        f"{source}: one label in {count} separate pieces: taken as a binary mask, one instance per piece",
        stacklevel=2,
    )
    return pieces.astype(np.int32)


# A plausible pixel size, µm: outside it a file's resolution tags are DPI defaults (72 dpi = 353 µm), not a scale.
MPP_RANGE = (0.05, 20.0)


def check_pixel_size(mpp: object) -> float:
    """A pixel size in µm, refused with a one-line error unless it is a number within ``MPP_RANGE``."""
    if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real):
        raise InputError(f"mpp must be a pixel size in µm (a number), got {mpp!r}")
    if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:  # NaN fails this too
        raise InputError(
            f"mpp {mpp:g} µm/px is outside {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g}; "
            "give the pixel size in micrometres, e.g. 0.25 at 40x, 0.5 at 20x"
        )
    return float(mpp)


_UNIT_MICRONS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "\u03bcm": 1.0,  # Greek mu, which some writers use for the micro sign
    "\\u00B5m": 1.0,  # ImageJ's escaped form
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
}


def read_pixel_size(path: str | os.PathLike) -> tuple[float, str] | None:
    """The pixel size (µm/px) a TIFF records, and where: OME ``PhysicalSizeX``, Aperio SVS ``MPP``, ImageJ
    ``unit``, or resolution tags in centimetres. None for other formats, no record, or an implausible value."""
    path = Path(path)
    try:
        if not _is_tiff(path):
            return None
        with tifffile.TiffFile(path) as tif:
            found = _tiff_pixel_size(tif)
    except Exception:  # unreadable metadata is not a reason to refuse an image the decoder may still read
        return None
    if found is None or not MPP_RANGE[0] <= found[0] <= MPP_RANGE[1]:
        return None
    width, height, source = found
    if abs(height - width) > 0.01 * width:  # resampled as square, nuclei would be squashed and areas wrong
        warnings.warn(
            f"{path}: its pixels are not square ({width:.4g} µm wide, {height:.4g} µm high), so its pixel size "
            "is not used; resample it to square pixels, or give --mpp",
            stacklevel=2,
        )
        return None
    return width, source


def _tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float, str] | None:
    """The pixel's width and height in µm (the same where only one is recorded) and where they come from."""
    if tif.is_ome and tif.ome_metadata:
        pixels = _find_key(tifffile.xml2dict(tif.ome_metadata), "Pixels")
        if isinstance(pixels, list):
            pixels = pixels[0]
        if isinstance(pixels, dict) and "PhysicalSizeX" in pixels:
            unit = _UNIT_MICRONS.get(str(pixels.get("PhysicalSizeXUnit", "µm")))
            unit_y = _UNIT_MICRONS.get(str(pixels.get("PhysicalSizeYUnit", "µm")))
            if unit:
                width = float(pixels["PhysicalSizeX"]) * unit
                height = (
                    float(pixels["PhysicalSizeY"]) * unit_y if "PhysicalSizeY" in pixels and unit_y else width
                )
                return width, height, "OME-TIFF PhysicalSizeX"
    page = tif.pages.first
    if tif.is_svs:  # Aperio writes "...|AppMag = 20|MPP = 0.4990|..." into the first page's description
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description)
        if match:
            return float(match[1]), float(match[1]), "Aperio SVS MPP"
    tags = page.tags
    if "XResolution" not in tags:
        return None
    per_pixel = []  # units per pixel, across and down
    for name in ("XResolution", "YResolution"):
        numerator, denominator = tags[name if name in tags else "XResolution"].value
        if not numerator:
            return None
        per_pixel.append(denominator / numerator)
    if tif.is_imagej and (tif.imagej_metadata or {}).get("unit") in _UNIT_MICRONS:
        unit, source = _UNIT_MICRONS[tif.imagej_metadata["unit"]], "ImageJ TIFF resolution"
    elif tags.get("ResolutionUnit") is not None and tags["ResolutionUnit"].value == 3:  # centimetre
        unit, source = 1e4, "TIFF resolution tags"
    else:
        return None
    return per_pixel[0] * unit, per_pixel[1] * unit, source


def _find_key(tree: object, key: str) -> object:
    """The first value stored under ``key`` anywhere in a nested dict/list tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder now, so a path that is a file or cannot be written fails before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder; choose another output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{path}: cannot create the output folder ({error.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the output folder is not writable")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Fail before any work when a file could not be written at ``path`` (its folder is made if missing)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    check_output_dir(path.parent)
    return path


def files_by_stem(paths: list[Path]) -> dict[str, Path]:
    """Files by name without suffix; two files of one name (``a.png`` and ``a.jpg``) are refused, since which
    one pairs with a mask or takes the clicks would be a guess."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise InputError(f"{found[path.stem]} and {path.name} share the name {path.stem}: keep one")
        found[path.stem] = path
    return found


def list_images(
    inputs: Iterable[str | os.PathLike], recursive: bool = False, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[Path]:
    """Expand files and folders into image paths; folders give their visible files of the image ``suffixes``
    in sorted order (and, with ``recursive``, those of their subfolders)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in (path.rglob("*") if recursive else path.iterdir())
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
            )
            if not files:
                raise InputError(f"{path}: folder contains no images ({', '.join(suffixes)})")
            found.extend(files)
        elif path.is_file():
            if path.suffix.lower() not in suffixes:
                raise InputError(f"{path}: unsupported file type; expected {', '.join(suffixes)}")
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
