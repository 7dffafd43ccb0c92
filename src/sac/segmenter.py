"""Segmenting images with a loaded model: the one place that turns an image into maps, a mask and labels.

As segment_anything's ``SamPredictor`` owns "set image, predict", a :class:`Segmenter` owns "segment this image":
it holds a model and one :class:`SegmentOptions`, normalises the input, tiles it, adds the user's clicks, and
makes instances. The Python API, the file pipeline, whole slides, dask workers, evaluation and the benchmarks
all go through it, so each setting is declared, defaulted and validated once.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from skimage import measure

from sac.instances import (
    apply_clicks,
    filter_instances,
    instances_from_maps,
    sam_instances,
)
from sac.io import (
    InputError,
    channels_last,
    check_pixel_size,
    to_rgb_uint8,
    transparent_pixels,
    warn_if_not_a_micrograph,
)
from sac.model import MAP_NAMES, SACOutput, SegmentAnyCell, precision
from sac.options import SCALE_MODES, SegmentOptions, tta_views
from sac.points import Points, as_clicks, clicks_in_window, clicks_pixels, combine_points
from sac.scale import at_model_scale, resample_labels, resample_maps, resize_image
from sac.tiling import predict_tiled
from sac.views import VIEWS, maps_of_view, view_of

DEVICES = ("auto", "cpu", "cuda", "mps")
# Automatic scale: rescale only when the nuclei's median area is off by more than this factor from the model's
# (a factor 1.25 in diameter), and within what the estimate can be trusted for; fewer nuclei than this: no estimate.
AUTO_AREA_TOLERANCE = 1.25**2
# An estimate enlarges up to 4x, but shrinks at most 2x: the models were trained on nuclei up to twice their scale
# (zoom augmentation 0.5-2x), and shrinking further only blurs large nuclei's outlines (benchmarks/RESULTS.md)
AUTO_ZOOM_RANGE = (0.5, 4.0)
AUTO_MIN_NUCLEI = 10
# a given or recorded pixel size that would enlarge the image more than this is refused as a mistake
MAX_ENLARGEMENT = 8.0
ZOOM_TOLERANCE = 0.02  # zooms closer to 1 than this run at the native scale


class Segmentation(NamedTuple):
    """What one image gives (:meth:`Segmenter.segment`).

    Attributes
    ----------
    mask : (H, W) bool
        The nuclei; with labels, exactly ``labels > 0``.
    labels : (H, W) int32 or None
        Nucleus ids, 0 background (None without instances); ids may have gaps after clicks.
    maps : (C, H, W) float32
        The maps behind both, named by the model's ``SACConfig.map_names``: nuclei probability, generator
        probability, centre map, SAM's own probability, and the two HV maps when a watershed ran.
    mpp : float or None
        The input's pixel size in µm, given or recorded in its file; None when unknown (estimated or assumed).
    zoom : float
        Model pixels per input pixel: the scale the model saw the image at.
    scale_note : str
        Where the scale came from, in words.
    transparent : (H, W) bool or None
        Where an RGBA input is fully transparent (nothing segmented there).
    clicked : tuple of int, or None
        The ids of the nuclei the user's positive clicks added (None without clicks).
    points : (positive, negative) or None
        The clicks applied, over every round of :meth:`Segmenter.correct`.
    """

    mask: np.ndarray
    labels: np.ndarray | None
    maps: np.ndarray
    mpp: float | None
    zoom: float
    scale_note: str
    transparent: np.ndarray | None = None
    clicked: tuple[int, ...] | None = None
    points: Points | None = None


def resolve_device(name: str) -> torch.device:
    """The torch device for ``auto|cpu|cuda|mps``; ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        return torch.device(next(kind for kind, present in available.items() if present))
    if name not in available:
        raise InputError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    if not available[name]:
        raise InputError(f"device {name} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


class Segmenter:
    """A loaded model with its options; :meth:`segment` any image, of any size and pixel size.

    Parameters
    ----------
    model : SegmentAnyCell
        The network (call ``prepare_for_inference`` first for speed; a model in training works too).
    options : SegmentOptions, optional
        Settings; keyword ``settings`` build one instead (``Segmenter(model, instances="fast")``).
    """

    def __init__(self, model: SegmentAnyCell, options: SegmentOptions | None = None, **settings) -> None:
        self.model = model
        self.options = (options or SegmentOptions()).changed(**settings)
        if self.options.overlap >= model.config.image_size:
            raise InputError(
                f"tile overlap must be smaller than the model's {model.config.image_size} px tiles, "
                f"got {self.options.overlap}"
            )
        if not isinstance(self.options.mpp, str) and model.config.mpp is not None:
            _zoom_to_model(self.options.mpp, "given", model.config.mpp)  # a mistaken --mpp fails at once

    def __repr__(self) -> str:
        config, meta = self.model.config, getattr(self.model, "meta", {})
        weights = f", weights sha256 {meta['weights_sha256'][:12]}" if "weights_sha256" in meta else ""
        return f"Segmenter({config.objects} model at {config.mpp} µm/px{weights}, {self.options!r})"

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", **settings) -> Segmenter:
        """The checkpoint folder at ``path`` (None or ``"nuclei"``: the model shipped with the package;
        ``"glands"``: the gland model) on ``device`` (``auto``: CUDA, else Apple's MPS, else the CPU), with
        ``settings`` as :class:`SegmentOptions` fields."""
        model = SegmentAnyCell.load(path, device=resolve_device(device)).prepare_for_inference()
        return cls(model, **settings)

    def with_options(self, **changes) -> Segmenter:
        """The same model with some settings changed (validated again)."""
        return type(self)(self.model, self.options.changed(**changes))

    def setting(self, name: str):
        """A setting both the options and the model's config hold (``seed_threshold``, ``min_size``, ``tta``, ...):
        the options' value when given, else the model's own, chosen on its validation images."""
        value = getattr(self.options, name)
        return getattr(self.model.config, name) if value is None else value

    @property
    def tta(self) -> int:
        """Over how many views (:data:`VIEWS`) maps are averaged: the options' choice, else the model's."""
        return tta_views(self.setting("tta"))

    # ------------------------------------------------------------------ public
    def predict(
        self, image: np.ndarray, points: Points | None = None, mpp: float | None = None, **changes
    ) -> np.ndarray:
        """A boolean nuclei mask, or with ``instances`` int32 labels, for one image.

        Parameters
        ----------
        image, points, mpp
            As for :meth:`segment`.
        **changes
            Options for this call only (any field of :class:`SegmentOptions`, e.g. ``instances=True``).

        Returns
        -------
        (H, W) bool mask, or (H, W) int32 labels (0 background; ids may have gaps after clicks).
        """
        result = self.segment(image, points, mpp, **changes)
        return result.mask if result.labels is None else result.labels

    def segment(
        self, image: np.ndarray, points: Points | None = None, mpp: float | None = None, **changes
    ) -> Segmentation:
        """Mask, labels and maps from a single pass of the model; the mask is ``labels > 0`` whenever labels
        are made, so written masks, labels and evaluated Dice always agree.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array of any dtype
            RGBA: nothing is segmented where alpha is 0 (``sac.io.transparent_pixels``).
        points : (positive, negative), optional
            Each a list of [x, y] clicks (an (M, 2) array) or None; anything else is refused. A positive click
            adds the nucleus under it as its own instance (SAM answers the click), a negative click removes the
            object under it. With clicks, labels are made (fast mode) even when only a mask is asked for.
        mpp : float, optional
            The image's pixel size as its file records it. The ``mpp`` option, when a number, applies to every
            image and overrides it (with a warning where they differ).
        **changes
            Options for this call only (fields of :class:`SegmentOptions`).

        Returns
        -------
        :class:`Segmentation`

        On CUDA the model runs under bfloat16 autocast, which halves memory and time with no visible loss. One
        model serves one image at a time: threads sharing it (or Segmenters made from it) take turns.
        """
        if changes:
            return self.with_options(**changes).segment(image, points, mpp)
        if mpp in SCALE_MODES:  # the option's modes are not an image's pixel size
            raise InputError(
                f"mpp={mpp!r}: give this image's pixel size in µm; for the {mpp} mode use mpp as an option: "
                f"with_options(mpp={mpp!r})"
            )
        mpp = None if mpp is None else check_pixel_size(mpp)
        option = self.options.mpp
        if mpp is not None and not isinstance(option, str) and abs(mpp - option) > 0.01 * option:
            warnings.warn(
                f"the mpp option ({option:g} µm/px, for every image) overrides this image's {mpp:g} µm/px; to "
                "give each image its own, keep the option at 'auto'",
                stacklevel=2,
            )
        rgb, transparent, points = self._prepared(image, points)
        options = self.options
        mode = options.instances or ("fast" if points is not None else None)
        with _lock(self.model), precision(self.model.pixel_mean.device):
            zoom, mpp, note, maps = self._scale(rgb, mpp)
            if maps is None:
                maps = self._maps_at(rgb, zoom, hv=mode is not None)
            labels = None if mode is None else self.instances(maps, zoom)
            if mode == "sam":
                labels = self._sam_instances(rgb, labels, maps[2], zoom)
            if labels is not None:
                labels = self._finished(labels, transparent, mpp, zoom)
            clicked = None
            if points is not None:  # after the filters: what a user clicks stays, whatever its size or place
                labels, clicked = self._clicked(rgb, labels, points, maps, zoom)
        if labels is None:
            mask = maps[0] >= options.threshold
            mask = mask if transparent is None else mask & ~transparent
        else:
            mask = labels > 0
        labels = labels if options.instances else None
        return Segmentation(mask, labels, maps, mpp, zoom, note, transparent, clicked, points)

    def correct(self, image: np.ndarray, result: Segmentation, points: Points) -> Segmentation:
        """``result``, a segmentation of ``image`` with instances, corrected by more clicks without another
        automatic pass: each round of an interactive session costs only its clicks, and keeps the ids of what
        earlier rounds left. (The command line keeps no state between runs, so there a round gives all clicks
        so far, answered together.)

        Parameters
        ----------
        image : the array ``result`` was made from.
        result : :class:`Segmentation` with labels (from :meth:`segment` or an earlier :meth:`correct`).
        points : (positive, negative) clicks, as for :meth:`segment`.

        Returns
        -------
        :class:`Segmentation` with the new labels, mask and ``clicked`` ids.
        """
        if result.labels is None:
            raise InputError("correct() needs a segmentation with labels: segment with instances=True")
        rgb, _, points = self._prepared(image, points)
        if rgb.shape[:2] != result.labels.shape:
            raise InputError(
                f"the image ({rgb.shape[0]}x{rgb.shape[1]}) is not the one the segmentation was made from "
                f"({result.labels.shape[0]}x{result.labels.shape[1]})"
            )
        earlier = result.points or (None, None)
        with _lock(self.model), precision(self.model.pixel_mean.device):
            labels, clicked = self._clicked(rgb, result.labels, points, result.maps, result.zoom, earlier[0])
        kept = {*(result.clicked or ()), *clicked} & set(np.unique(labels).tolist())
        every = tuple(_joined(before, now) for before, now in zip(earlier, points, strict=True))
        return result._replace(mask=labels > 0, labels=labels, clicked=tuple(sorted(kept)), points=every)

    def _prepared(
        self, image: np.ndarray, points: Points | None
    ) -> tuple[np.ndarray, np.ndarray | None, Points | None]:
        """The image as the model sees it (RGB uint8), where it is transparent, and the clicks checked against
        it, before the model runs: a click outside the image is an error, not a no-op."""
        if isinstance(image, (str, os.PathLike)):
            raise InputError(
                f"{image}: segment takes an image array, not a path; read the file with sac.io.read_image"
            )
        image = self._channel(channels_last(np.asarray(image)))
        warn_if_not_a_micrograph(image)
        if image.ndim == 3 and image.shape[-1] == 4 and not _is_alpha(image[..., 3]):
            warnings.warn(
                f"a 4-channel array (shape {image.shape}) is taken as RGBA, but its 4th channel is not an alpha "
                "(it holds more than two levels): give channel= to segment one channel of a multi-channel image",
                stacklevel=3,
            )
        rgb, transparent = to_rgb_uint8(image), transparent_pixels(image)
        if points is not None:
            points = as_clicks(points)
            clicks_pixels(points, rgb.shape[:2])
        return rgb, transparent, points

    def _clicked(
        self,
        rgb: np.ndarray,
        labels: np.ndarray,
        points: Points,
        maps: np.ndarray,
        zoom: float,
        earlier: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """``labels`` corrected by the clicks (:func:`sac.instances.apply_clicks`; ``earlier``: positive clicks
        of earlier rounds), and the ids the positive clicks added (above every id before them)."""
        before = int(labels.max(initial=0))
        labels = apply_clicks(self.model, rgb, labels, *points, maps[2], zoom, maps[0], earlier)
        at_clicks = labels[tuple(clicks_pixels(points, labels.shape)[0].T)]
        return labels, tuple(sorted({int(label) for label in at_clicks if label > before}))

    def relabel(self, result: Segmentation, **changes) -> np.ndarray:
        """The watershed labels :meth:`segment` would give ``result``'s image with this segmenter's settings
        (seeds, threshold, size and edge filters; ``changes`` for this call only, as for :meth:`segment`), made
        from ``result``'s maps without another pass of the network: for trying settings, e.g.
        ``segmenter.relabel(result, seed_threshold=0.3)``. ``result`` must come from a segmentation with
        instances (its maps then hold the HV maps they need). The scale stays ``result``'s: where it was
        estimated, :meth:`segment` with other settings may estimate another, since the estimate measures the
        objects those settings make."""
        if changes:
            return self.with_options(**changes).relabel(result)
        if not isinstance(result, Segmentation):
            raise InputError(
                f"relabel takes the Segmentation that segment returns, not {type(result).__name__}"
            )
        if self.options.instances == "sam":
            raise InputError("relabel redraws watershed labels; SAM instances need the model: use segment")
        labels = self.instances(result.maps, result.zoom)
        return self._finished(labels, result.transparent, result.mpp, result.zoom)

    def _finished(
        self, labels: np.ndarray, transparent: np.ndarray | None, mpp: float | None, zoom: float
    ) -> np.ndarray:
        """Labels as :meth:`segment` returns them: each piece a transparent area cuts off is a nucleus of its
        own, and faces the options' size and edge filters (µm², so pixel areas follow the pixel size) as one."""
        if transparent is not None:
            labels = measure.label(labels * ~transparent, connectivity=2).astype(labels.dtype)
        options = self.options
        # µm² per pixel: known, else what the zoom implies (the model's pixel size times it)
        pixel_area = (mpp or (self.model.config.mpp or 1.0) * zoom) ** 2
        return filter_instances(
            labels,
            self.setting("min_size") / pixel_area,
            None if options.max_size is None else options.max_size / pixel_area,
            options.exclude_edges,
        )

    def instances(self, maps: np.ndarray, zoom: float = 1.0) -> np.ndarray:
        """Watershed instances from :meth:`maps`' output, with the model's seed settings unless the options say.

        Parameters
        ----------
        maps : (C, H, W) float array, the channels of the model's ``SACConfig.map_names``.
        zoom : float
            Model pixels per pixel of ``maps`` (``Segmentation.zoom``). The HV maps' boundaries are slopes per
            pixel, so the HV weight is divided by it: a 20x image's maps, made at 40x and shrunk back, split
            as the model's own scale would.

        Returns
        -------
        (H, W) int32 labels, 0 background, before the options' size and edge filters (:meth:`relabel` applies
        them, as :meth:`segment` does).
        """
        config = self.model.config
        if config.hv_maps and len(maps) == len(MAP_NAMES):
            raise InputError(
                "these maps lack the model's HV maps, which its instances need: segment with instances "
                "(with_options(instances=True)), or call maps() with hv=True"
            )
        return instances_from_maps(
            maps[0],
            maps[2],
            self.options.threshold,
            seed_threshold=self.setting("seed_threshold"),
            seed_depth=self.setting("seed_depth"),
            hv=maps[len(MAP_NAMES) :] if config.hv_maps else None,
            hv_weight=self.setting("hv_weight") / zoom,
        )

    def _channel(self, image: np.ndarray) -> np.ndarray:
        """The ``channel`` option applied to a channels-last array; images of one channel pass unchanged (files
        have theirs picked by ``sac.io.read_input``, which also knows channel names)."""
        channel = self.options.channel
        if channel is None and image.ndim == 3 and image.shape[-1] == 2:  # a grey + alpha array is rare
            warnings.warn(
                f"an array of 2 channels (shape {image.shape}): segmenting channel 0; give channel= to pick "
                "the nuclei's channel",
                stacklevel=3,
            )
        if channel is None or image.ndim == 2:
            return image
        if isinstance(channel, str):
            raise InputError(f"channel {channel!r}: an array has no channel names; give the channel's index")
        if channel >= image.shape[-1]:
            raise InputError(f"channel {channel} does not exist in an image of shape {image.shape}")
        return image[..., channel]

    def _scale(
        self, rgb: np.ndarray, file_mpp: float | None
    ) -> tuple[float, float | None, str, np.ndarray | None]:
        """(zoom, the input's pixel size, where it came from, maps of a first pass when the estimate made one).

        The zoom is the model's pixels per input pixel. Without a recorded pixel size, the first pass at the
        native scale measures the median nucleus area; its maps are reused unless that is far from the model's.
        """
        model_mpp, option = self.model.config.mpp, self.options.mpp
        known = option if not isinstance(option, str) else file_mpp
        if option == "native" or model_mpp is None:
            why = "--mpp native" if option == "native" else "the model records no pixel size"
            return 1.0, known, f"native scale ({why})", None
        if known is not None:
            source = "given" if known is option else "the image's own"
            zoom = _zoom_to_model(known, source, model_mpp)
            if zoom > AUTO_ZOOM_RANGE[1]:
                check = " (is --mpp in micrometres per pixel?)" if source == "given" else ""
                warnings.warn(
                    f"{known:g} µm/px ({source}) enlarges the image {zoom:.1f}x: at this pixel size nuclei are a"
                    f" few pixels across, so outlines are coarse{check}",
                    stacklevel=3,
                )
            return (
                zoom,
                known,
                f"{known:g} µm/px ({source}); zoom {zoom:.2f} to the model's {model_mpp:g}",
                None,
            )
        if not self.model.config.estimate_scale:
            warnings.warn(
                f"no pixel size known, and this model cannot estimate it: assuming {model_mpp:g} µm/px; "
                "give --mpp (in Python: mpp=) for a reliable result (a 20x scan is about 0.5, GlaS's 0.62)",
                stacklevel=3,
            )
            return 1.0, None, f"native scale (assumed {model_mpp:g} µm/px: no pixel size known)", None
        maps = self.maps(rgb)
        areas = self._model_scale_areas(maps, 1.0)
        reference = self.model.config.nucleus_area
        if reference is None:
            return 1.0, None, "native scale (this model records no nucleus size to estimate it from)", maps
        if areas.size < AUTO_MIN_NUCLEI:
            # nuclei a few pixels across can go unseen at the native scale (a 10x fluorescence image): a look
            # at twice it, kept when it finds enough nuclei that do not look too large there
            closer = self._maps_at(rgb, 2.0, hv=True)
            closer_areas = self._model_scale_areas(closer, 2.0)
            if (
                closer_areas.size < AUTO_MIN_NUCLEI
                or reference / float(np.median(closer_areas)) < 1 / AUTO_AREA_TOLERANCE
            ):
                return 1.0, None, "native scale (too few nuclei to estimate the pixel size)", maps
            zoom, estimate, maps, areas = 2.0, 2.0, closer, closer_areas
        else:
            ratio = reference / float(np.median(areas))
            if 1 / AUTO_AREA_TOLERANCE <= ratio <= AUTO_AREA_TOLERANCE:
                return 1.0, None, f"native scale (nuclei look like {model_mpp:g} µm/px: estimated)", maps
            estimate = float(np.sqrt(ratio))
            zoom = _snap(float(np.clip(estimate, *AUTO_ZOOM_RANGE)))
            # An enlargement takes a second look at the scale it chose: seen too small, touching nuclei merge
            # into objects larger than any one of them, so the first estimate enlarges too little (a 10x image:
            # zoom 1.8 for 4). (Shrinking is not refined: it already costs large nuclei their outlines.)
            maps = self._maps_at(rgb, zoom, hv=True) if zoom > 1 else None
            areas = self._model_scale_areas(maps, zoom) if maps is not None else np.zeros(0)
        if areas.size >= AUTO_MIN_NUCLEI and reference / float(np.median(areas)) > AUTO_AREA_TOLERANCE:
            estimate = zoom * float(np.sqrt(reference / float(np.median(areas))))
            refined = _snap(float(np.clip(estimate, *AUTO_ZOOM_RANGE)))
            zoom, maps = (refined, None) if refined != zoom else (zoom, maps)
        limited = (
            f" (rescaling limited to {AUTO_ZOOM_RANGE[0]:g}-{AUTO_ZOOM_RANGE[1]:g}x)"
            if zoom != estimate
            else ""
        )
        note = (
            f"about {model_mpp * estimate:.2g} µm/px (estimated from nucleus size); zoom {zoom:.2f}{limited}"
        )
        return zoom, None, note, maps

    def _model_scale_areas(self, maps: np.ndarray, zoom: float) -> np.ndarray:
        """Areas, in model pixels, of the objects the model would report in ``maps`` (made at ``zoom``): specks
        below its minimum size say nothing of scale."""
        config = self.model.config
        min_area = config.min_size / config.mpp**2 / zoom**2  # in the maps' (the image's) pixels
        areas = np.bincount(filter_instances(self.instances(maps, zoom), min_area).ravel())[1:]
        return areas[areas > 0] * zoom**2

    def _maps_at(self, rgb: np.ndarray, zoom: float, hv: bool) -> np.ndarray:
        """Maps of ``rgb`` computed at ``zoom`` times its size and resampled back to it."""
        if zoom == 1:
            return self.maps(rgb, hv=hv)
        height, width = rgb.shape[:2]
        zoomed = self.maps(resize_image(rgb, zoom), hv=hv)
        return resample_maps(zoomed, (height, width))

    def _sam_instances(
        self, rgb: np.ndarray, seeds: np.ndarray, centre: np.ndarray, zoom: float
    ) -> np.ndarray:
        """SAM instance mode, run where SAM sees nuclei at the size it was trained on."""
        seen, seen_seeds, seen_centre, _ = at_model_scale(zoom, rgb, seeds, centre)
        labels = sam_instances(self.model, seen, seen_seeds, seen_centre)
        return labels if zoom == 1 else resample_labels(labels, seeds.shape)

    @torch.inference_mode()
    def maps(
        self,
        image: np.ndarray,
        points: Points | None = None,
        generate_points: bool = True,
        hv: bool = True,
    ) -> np.ndarray:
        """(C, H, W) float32 maps at the image's own scale, named by the model's ``SACConfig.map_names``: final
        nuclei probability, generator probability, generator centre map, SAM's own (upsampled) mask probability
        and, for a model with ``hv_maps`` unless ``hv`` is False, the horizontal and vertical maps (only
        :meth:`instances` needs them, and they cost about as much as the rest).

        ``points`` here are prompts for SAM's whole-mask answer (the paper's setting): each tile receives those
        falling inside it, in addition to its generated points (or alone, with ``generate_points=False``, as for
        SAM's prompt-grid baseline). A user's corrections go to :meth:`segment` instead.
        """
        model, options = self.model, self.options
        rgb = to_rgb_uint8(image)
        size = model.config.image_size
        device = next(model.parameters()).device
        use_manual = points is not None or not generate_points
        given = as_clicks(points) if points is not None else (None, None)

        done = 0  # tiles so far: each tile draws its points from its own stream, whatever the batch size

        def run(batch: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
            nonlocal done
            model.point_offset, done = done, done + len(batch)
            tensor = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)
            if use_manual:
                outputs = [
                    self._forward_with_manual(
                        tensor[i : i + 1], _tile_points(given, origin, size), generate_points, hv
                    )
                    for i, origin in enumerate(origins)
                ]
            else:
                outputs = [model(tensor, hv=hv)]
            return torch.cat([_maps(output) for output in outputs]).float().cpu().numpy()

        def tiled(view: np.ndarray) -> np.ndarray:
            nonlocal done
            done = 0
            return predict_tiled(run, view, size, options.overlap, options.batch_size, options.progress)

        with _lock(model):  # the model's mode and point streams are state: one image at a time
            was_training = model.training
            model.eval()
            try:
                views = VIEWS[: self.tta]
                if len(views) == 1:
                    return tiled(rgb)
                if use_manual:
                    raise InputError("test-time augmentation does not combine with whole-mask point prompts")
                total = 0  # each view's maps turned back and averaged
                for view in views:
                    total = total + maps_of_view(tiled(view_of(rgb, view)), view)
                return total / len(views)
            finally:
                model.train(was_training)

    def _forward_with_manual(
        self, tensor: torch.Tensor, manual: list, generate_points: bool, hv: bool
    ) -> SACOutput:
        if not manual and generate_points:
            return self.model(tensor, hv=hv)
        if not manual:  # no prompt at all in this tile: SAM still needs one, a background point
            manual = [(np.zeros(2, np.float32), 0)]
        positive = [xy for xy, label in manual if label == 1]
        negative = [xy for xy, label in manual if label == 0]
        empty_points = torch.zeros(1, 1, 0, 2)
        empty_labels = torch.zeros(1, 1, 0, dtype=torch.long)
        points, labels = combine_points(empty_points, empty_labels, positive or None, negative or None)
        return self.model(tensor, points.to(tensor.device), labels.to(tensor.device), generate_points, hv)


def _zoom_to_model(mpp: float, source: str, model_mpp: float) -> float:
    """The model's pixels per input pixel for an input of ``mpp``; refused beyond ``MAX_ENLARGEMENT`` (someone
    who types 20 for "20x" would get nuclei under a pixel across, and an image 20 times as large in memory)."""
    zoom = _snap(mpp / model_mpp)
    if zoom > MAX_ENLARGEMENT:
        raise InputError(
            f"{mpp:g} µm/px ({source}) would enlarge the image {zoom:.0f}x to the model's {model_mpp:g} µm/px;"
            " the pixel size (--mpp, mpp= in Python) is in micrometres (a 40x scan is about 0.25, 20x about 0.5)"
        )
    return zoom


def _snap(zoom: float) -> float:
    return 1.0 if abs(zoom - 1) < ZOOM_TOLERANCE else zoom


def _maps(output: SACOutput) -> torch.Tensor:
    maps = torch.sigmoid(torch.cat([output.logits, output.generator_logits, output.sam_upsampled], dim=1))
    return maps if output.hv is None else torch.cat([maps, output.hv], dim=1)


def _tile_points(points: Points, origin: tuple[int, int], size: int) -> list:
    """Manual points inside one tile, in the tile's frame, as (xy, label) pairs."""
    inside = clicks_in_window(points, origin, (size, size))
    return [
        (xy.astype(np.float32), label) for label, coords in zip((1, 0), inside, strict=True) for xy in coords
    ]


def _is_alpha(channel: np.ndarray) -> bool:
    """Whether an image's 4th channel looks like transparency: nothing but 0 and one opaque level."""
    return bool(np.isin(channel, (0, channel.max())).all())


def _joined(before: np.ndarray | None, now: np.ndarray | None) -> np.ndarray | None:
    """Two rounds' clicks of one kind, in order."""
    present = [side for side in (before, now) if side is not None and len(side)]
    return np.concatenate(present) if present else None


# a lock per live model: a dead model's lock goes with it, and its id, reused by a new model, brings no old lock
_LOCKS: weakref.WeakKeyDictionary[SegmentAnyCell, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock(model: SegmentAnyCell) -> threading.RLock:
    """The lock of ``model``: its mode (eval/train) and its point streams (``point_offset``) are state that one
    image's tiles set, so threads sharing a model take turns (each pass already uses all of torch's threads)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())
