"""How to segment: every inference setting, its default and its check, in one frozen object.

Kept free of torch so that the command line can show the defaults in ``--help`` without loading the model's
libraries; :class:`sac.segmenter.Segmenter` applies the options.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields, replace

from sac.io import InputError, check_field_types, check_pixel_size
from sac.tiling import DEFAULT_OVERLAP

INSTANCE_MODES = ("fast", "sam")
TTA_VIEWS = (1, 2, 4, 8)  # views of an image whose maps test-time augmentation averages (sac.views.VIEWS)
SCALE_MODES = ("auto", "native")


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment: every inference setting, with its default and its check, in one place.

    Parameters
    ----------
    instances : None, True, "fast" or "sam"
        None: a mask only. ``True``/``"fast"``: watershed on the probability seeded by the generator's centres;
        ``"sam"``: one SAM prompt per nucleus.
    threshold : float
        Nuclei probability cut-off, in [0, 1].
    seed_threshold : float or None
        Where the watershed's seeds are cut from the centre map, in (0, 1): higher splits touching nuclei more
        readily, lower merges more. None: the model's own (chosen on its validation images).
    seed_depth : float or None
        A core holding several peaks of the centre map is split between two peaks whose valley is this deep
        below the lower one, in [0, 1); 0 never splits a core. None: the model's own.
    hv_weight : float or None
        For a model with horizontal and vertical maps: how far the boundaries they show lower the centre map
        before the seeds are cut, at least 0 (0: not used). None: the model's own.
    min_size, max_size : float or None
        Instances smaller or larger than this many µm² are dropped (when the pixel size is unknown, the image is
        taken to be at the model's pixel size). ``min_size`` None: the model's own; ``max_size`` None: no bound.
    exclude_edges : bool
        Drop instances that touch the image border (cut nuclei whose measurements would be wrong).
    channel : int, str or None
        The channel the model sees, by index or (for files with OME channel names) by name; None: colour images
        as colour, and of several other channels the first, with a warning.
    mpp : float, "auto" or "native"
        The input's pixel size in µm. A number applies to every image; ``"auto"`` takes the file's own record
        and, where there is none, estimates the scale from the nuclei of a first pass; ``"native"`` never
        resamples. Images are resampled to the model's pixel size, and the maps back to the input's.
    overlap : int
        Blended overlap of neighbouring tiles (of the model's input size), in pixels.
    batch_size : int
        Tiles per forward pass.
    tta : int, bool or None
        Test-time augmentation: the maps averaged over this many views of the image, each view's cost a pass of
        the network: 1 none; 2 the image and its mirror; 4 adds both turned half round; 8 every flip and quarter
        turn. True means 8, False 1. None: the model's own choice (made on its validation images).
    progress : bool
        A progress bar over the tiles of large images.
    """

    instances: str | bool | None = None
    threshold: float = 0.5
    seed_threshold: float | None = None
    seed_depth: float | None = None
    hv_weight: float | None = None
    min_size: float | None = None
    max_size: float | None = None
    exclude_edges: bool = False
    channel: int | str | None = None
    mpp: float | str = "auto"
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4
    tta: float | bool | str | None = None  # a number of views in any form (4, 4.0, "4"): tta_views reads it
    progress: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        mode = {True: "fast", False: None}.get(self.instances, self.instances)  # type: ignore[arg-type]
        if mode is not None and mode not in INSTANCE_MODES:
            raise InputError(
                f"unknown instance mode {self.instances!r}; expected {' or '.join(INSTANCE_MODES)}"
            )
        object.__setattr__(self, "instances", mode)
        if not 0 <= self.threshold <= 1:
            raise InputError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.seed_threshold is not None and not 0 < self.seed_threshold < 1:
            raise InputError(f"seed threshold must be in (0, 1), got {self.seed_threshold}")
        if self.seed_depth is not None and not 0 <= self.seed_depth < 1:
            raise InputError(f"seed depth must be in [0, 1), got {self.seed_depth}")
        if self.hv_weight is not None and not self.hv_weight >= 0:
            raise InputError(f"hv weight must be at least 0, got {self.hv_weight}")
        if (self.min_size or 0) < 0 or (self.max_size is not None and self.max_size <= (self.min_size or 0)):
            raise InputError(f"need 0 <= min size < max size, got {self.min_size} and {self.max_size}")
        if isinstance(self.mpp, str):
            try:
                object.__setattr__(self, "mpp", float(self.mpp))
            except ValueError:
                if self.mpp not in SCALE_MODES:
                    raise InputError(
                        f"mpp must be a pixel size in µm, auto or native; got {self.mpp!r}"
                    ) from None
        if not isinstance(self.mpp, str):
            check_pixel_size(self.mpp)
        if isinstance(self.channel, str) and self.channel.isdigit():
            object.__setattr__(self, "channel", int(self.channel))
        if isinstance(self.channel, int) and self.channel < 0:
            raise InputError(f"channel must be a non-negative index or a name, got {self.channel}")
        if self.tta is not None:
            object.__setattr__(self, "tta", tta_views(self.tta))
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.overlap < 0:
            raise InputError(f"tile overlap must not be negative, got {self.overlap}")

    def changed(self, **changes) -> SegmentOptions:
        """These options with ``changes`` applied and checked again; a name that is no option (a typo) is
        refused in one line, naming the closest option."""
        names = [field.name for field in fields(self)]
        for name in changes:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InputError(f"unknown option {name!r}{hint}; the options are {', '.join(names)}")
        return replace(self, **changes)

    def output_settings(self) -> dict:
        """The settings that change what is segmented (all but ``batch_size`` and ``progress``), so a resumed
        run can tell whether it would make the same outputs."""
        return {name: value for name, value in asdict(self).items() if name not in ("batch_size", "progress")}


def tta_views(value: int | float | str | bool) -> int:
    """How many views test-time augmentation averages: True means all 8, False none (1 view)."""
    if isinstance(value, bool):
        views = 8 if value else 1
    else:
        try:
            views = float(value)
        except (TypeError, ValueError):
            views = None
    if views not in TTA_VIEWS:
        raise InputError(f"test-time augmentation takes {', '.join(map(str, TTA_VIEWS))} views; got {value}")
    return int(views)
