"""Joint training of the prompt generator, the SAM encoder (LoRA or full) and the mask decoder.

Training is a pure function of (config, seed, step): batch contents, crop positions, augmentations and point prompts
all derive from them, so ``--resume`` after an interruption continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm

from sac.backbone import count_parameters
from sac.data import CropDataset, NucleiSample, load_dataset, median_nucleus_area
from sac.io import InputError, atomic_write, check_field_types
from sac.metrics import dice
from sac.model import (
    ADDABLE_CLICK_PARTS,
    ADDABLE_PARTS,
    ARCHITECTURE_FIELDS,
    SACConfig,
    SACOutput,
    SegmentAnyCell,
    model_path,
    precision,
    read_checkpoint_meta,
    widening_factors,
)
from sac.progress import progress_bar
from sac.segmenter import Segmenter, resolve_device

STATE_FILE = "state.pt"
FINE_TUNE_LR = 3e-4  # the default learning rate when a run starts from a trained model (--init)
LOG_FILE = "log.csv"
LOG_FIELDS = ("epoch", "step", "train_loss", "val_dice", "val_click_iou", "lr", "elapsed_s")
VAL_CLICKS = 256  # nuclei clicked once each for the validation click IoU
# training images, spread over the set, on which the model's typical nucleus size is measured
SIZE_IMAGES = 16


@dataclass
class TrainConfig:
    """A training run's settings, holding the model's own :class:`SACConfig`; saved as ``train_config.json`` in
    the run folder, which ``--resume`` reads back."""

    model: SACConfig = field(default_factory=SACConfig)
    datasets: list[str] = field(default_factory=lambda: ["monuseg"])
    data_root: str | None = None
    out: str = "runs/sac"
    batch_size: int = 4
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    val_fraction: float = 0.1
    # which share of each dataset's seeded order is held out: cross-validation trains one run per fold, each
    # validated on images the others train on (0: the first share)
    val_fold: int = 0
    max_val_images: int = 16
    checkpoint_every: int = 200
    init: str | None = None  # start from this SAC checkpoint folder ("default": the shipped model)
    init_sha256: str | None = None  # filled in from the init checkpoint when the run starts
    device: str = "auto"  # auto: CUDA when present (bfloat16 autocast), else Apple's MPS, else the CPU
    max_zoom: float = 2.0  # random zoom in [1/max_zoom, max_zoom] for half of the crops (1: none)
    instance_prompts: int = 8  # nuclei prompted one by one per crop and step (0: the semantic objective only)
    correction_clicks: int = 2  # clicks on each instance mask's errors after the first, as SAM is trained
    # train only these parts (names of the model's modules, e.g. ["click_head"]; None: all that are trainable),
    # so a stage can improve the answer to clicks while every automatic output stays exactly as it was
    train_only: list[str] | None = None
    # extra weight of the centre (and HV) maps' loss where two nuclei lie within contact_radius px of each other (0: none),
    # as U-Net weights the gaps between touching cells: merged neighbours are the largest instance error
    contact_weight: float = 0.0
    # px at the model's scale: how near two objects must come for the pixels between them to count as contact
    # (nuclei touch; glands lie a few pixels apart, and the watershed merges them across that gap)
    contact_radius: int = 2

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("batch_size", "epochs") + (("max_steps",) if self.max_steps is not None else ()):
            value = getattr(self, name)
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if not self.contact_weight >= 0:
            raise InputError(f"contact_weight must be at least 0, got {self.contact_weight}")
        if self.contact_radius < 1:
            raise InputError(f"contact_radius must be at least 1 px, got {self.contact_radius}")
        if self.val_fold < 0:
            raise InputError(f"val_fold must be at least 0, got {self.val_fold}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "training config", new_run: bool = True) -> TrainConfig:
        """Build from JSON: ``{"model": {...}, ...}``, or with model fields at the top level (command-line flags,
        and every train_config.json written before the model config moved under ``model``).

        ``num_points`` sets as many positive as negative points. A new run with an ``init`` takes the model
        settings it does not set from that checkpoint (:func:`init_model_settings`); a saved run's config
        (``new_run=False``: resuming, shipping) is read as written, since its init may have moved since.
        """
        if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
            raise InputError(f"{source}: expected a JSON object of settings (its model settings one too)")
        settings, model = dict(data), dict(data.get("model") or {})
        settings.pop("model", None)
        count, negative = settings.pop("num_points", None), settings.pop("num_negative", None)
        model_fields = {f.name for f in dataclasses.fields(SACConfig)}
        for key in [key for key in settings if key in model_fields]:
            model[key] = settings.pop(key)
        if count is not None:  # num_points: as many negative as positive points, unless num_negative says
            model["num_positive"] = model["num_negative"] = count
        if negative is not None:
            model["num_negative"] = negative
        model = {
            key: value for key, value in model.items() if value is not None or key in ("mpp", "nucleus_area")
        }
        if settings.get("init") and new_run:  # fine-tuning: the model starts as its init, except where the
            # run says, at the README's learning rate
            model = init_model_settings(settings["init"]) | {k: v for k, v in model.items() if v is not None}
            settings.setdefault("lr", FINE_TUNE_LR)
        unknown = set(settings) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"{source}: unknown keys {sorted(unknown)}")
        return cls(model=SACConfig.from_dict(model), **settings)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def init_model_settings(init: str) -> dict:
    """The model settings of the ``init`` checkpoint that a fine-tuning run keeps unless it sets them: all but
    the median nucleus area, which is measured on the run's own training images. So a fine-tuned gland model
    stays one (its scale, objects, click window and post-processing), and ``postprocessing.py`` re-chooses."""
    settings = read_checkpoint_meta(model_path(init))["model"]
    settings.pop("nucleus_area", None)
    return settings


def adopt_init(config: TrainConfig) -> TrainConfig:
    """Take the architecture from the ``init`` checkpoint, so its weights fit (a part the run adds, in
    ``ADDABLE_PARTS``, is shaped as the run says; a generator or click head the run widens keeps the run's width;
    a click head the run shows the image reads it, one the run deepens gets its new level), and record which
    weights they were."""
    meta = read_checkpoint_meta(model_path(config.init))
    model = SACConfig.from_dict(meta["model"])
    architecture = {name: getattr(model, name) for name in ARCHITECTURE_FIELDS}
    for name in widening_factors(model, config.model, f"--init {config.init}"):
        architecture[name] = getattr(config.model, name)
    for switch, shape in ADDABLE_PARTS.items():  # a part the run adds starts from scratch (load_weights)
        if getattr(config.model, switch) and not architecture[switch]:
            architecture.update({name: getattr(config.model, name) for name in (switch, *shape)})
    for part in ADDABLE_CLICK_PARTS:  # each starts out as a no-op (load_weights)
        if getattr(config.model, part):
            architecture[part] = True
    return dataclasses.replace(
        config, init_sha256=meta["weights_sha256"], model=dataclasses.replace(config.model, **architecture)
    )


def dice_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE plus soft Dice per sample (N,): BCE for calibration, Dice for the foreground/background imbalance.

    Per sample, so a batch split across data-parallel processes averages to the same loss. ``valid`` (0/1, like
    ``target``) leaves pixels out of both, e.g. a window's part beyond the tile.
    """
    valid = torch.ones_like(target) if valid is None else valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid
    bce = bce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    prob = (torch.sigmoid(logits) * valid).flatten(1)
    target = (target * valid).flatten(1)
    soft_dice = (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return bce + 1 - soft_dice


def contact_map(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) instance labels -> (B, 1, H, W): 1 where two different nuclei lie within ``radius`` px, else 0.

    These are the pixels a watershed needs to see as a valley to keep touching nuclei apart.
    """
    labels = labels[:, None].float()
    size = 2 * radius + 1
    absent = float(labels.max()) + 1
    highest = F.max_pool2d(labels, size, stride=1, padding=radius)
    lowest = -F.max_pool2d(-torch.where(labels > 0, labels, absent), size, stride=1, padding=radius)
    return ((lowest < absent) & (highest != lowest)).float()


def hv_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) instance labels -> (B, 2, H, W) HoVer-Net's horizontal and vertical maps: each pixel's column
    and row offset from its nucleus's centroid, scaled on either side of it to reach -1 and 1 at its farthest
    pixels; 0 on background."""
    batch, height, width = labels.shape
    # one id per (image, nucleus), so all images are handled by one scatter
    ids = (labels + (labels.amax() + 1) * torch.arange(batch, device=labels.device)[:, None, None]).flatten()
    inside = labels.flatten() > 0
    rows, cols = torch.meshgrid(
        torch.arange(height, device=labels.device, dtype=torch.float32),
        torch.arange(width, device=labels.device, dtype=torch.float32),
        indexing="ij",
    )
    count = torch.zeros(int(ids.max()) + 1, device=labels.device).index_add_(
        0, ids, torch.ones_like(ids, dtype=torch.float32)
    )
    maps = []
    for coordinate in (cols, rows):
        coordinate = coordinate.flatten().repeat(batch)
        centroid = torch.zeros_like(count).index_add_(0, ids, coordinate) / count.clamp(min=1)
        offset = coordinate - centroid[ids]
        scale = torch.zeros_like(count)
        below = scale.scatter_reduce(0, ids, (-offset).clamp(min=0), "amax")
        above = scale.scatter_reduce(0, ids, offset.clamp(min=0), "amax")
        reach = torch.where(offset < 0, below[ids], above[ids]).clamp(min=1e-6)
        maps.append(torch.where(inside, offset / reach, 0).view(batch, height, width))
    return torch.stack(maps, dim=1)


def hv_loss(hv: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """HoVer-Net's loss on the horizontal and vertical maps: mean squared error everywhere, plus that of their
    derivatives along their own axis inside nuclei, where the sign flips between touching nuclei must be sharp;
    both times the (B, 1, H, W) pixel ``weight`` if given (:func:`sac_loss` weights where nuclei touch)."""
    target = hv_targets(labels)
    weight = torch.ones_like(hv[:, :1]) if weight is None else weight
    inside = (labels > 0)[:, None].float() * weight
    gradient = _axis_gradients(hv) - _axis_gradients(target)
    return ((hv - target).square() * weight).mean() + (gradient.square() * inside).sum() / (
        labels > 0
    ).sum().clamp(min=1)


def _axis_gradients(hv: torch.Tensor) -> torch.Tensor:
    """The horizontal map's derivative along columns and the vertical map's along rows (central differences)."""
    horizontal, vertical = hv[:, :1], hv[:, 1:]
    d_cols = (
        F.pad(horizontal, (0, 1, 0, 0), mode="replicate")[..., 1:]
        - F.pad(horizontal, (1, 0, 0, 0), mode="replicate")[..., :-1]
    ) / 2
    d_rows = (
        F.pad(vertical, (0, 0, 0, 1), mode="replicate")[..., 1:, :]
        - F.pad(vertical, (0, 0, 1, 0), mode="replicate")[..., :-1, :]
    ) / 2
    return torch.cat([d_cols, d_rows], dim=1)


def sac_loss(
    output: SACOutput, batch: dict[str, torch.Tensor], contact_weight: float, contact_radius: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dice + BCE on each output: final map, SAM's low-resolution mask (half weight), generator map; BCE on the
    centre map and :func:`hv_loss` on a model's HV maps, both weighted ``1 + contact_weight`` where nuclei come
    within ``contact_radius`` px of each other."""
    mask = batch["mask"]
    low_res = F.adaptive_avg_pool2d(mask, output.sam_logits.shape[-2:])
    # touching nuclei: the few pixels that split them
    contact = 1 + contact_weight * contact_map(batch["labels"], contact_radius) if contact_weight else None
    parts = {
        "final": dice_bce(output.logits, mask).mean(),
        "sam": dice_bce(output.sam_logits, low_res).mean(),
        "generator": dice_bce(output.generator_logits[:, :1], mask).mean(),
        "centre": F.binary_cross_entropy_with_logits(
            output.generator_logits[:, 1:], batch["distance"], weight=contact
        ),
    }
    if output.hv is not None:
        parts["hv"] = hv_loss(output.hv.float(), batch["labels"], contact)
    total = sum(part * (0.5 if name == "sam" else 1) for name, part in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


MAX_NEIGHBOUR_NEGATIVES = 2  # negative clicks on the nearest other nuclei, given with half of the prompts
_MIN_PROMPTED_AREA = 10  # pixels; smaller slivers at the crop border are not prompted


class InstancePrompts(NamedTuple):
    """Prompts for single nuclei of a batch of crops, with what each should give."""

    image_index: torch.Tensor  # (N,) the crop each prompt belongs to
    points: torch.Tensor  # (N, K, 2) (x, y); the first is the positive click
    labels: torch.Tensor  # (N, K) 1 positive, 0 negative, -1 padding
    targets: torch.Tensor  # (N, 1, S, S) the prompted nucleus's mask in its crop


def sample_instance_prompts(
    labels: np.ndarray, distance: np.ndarray, count: int, rngs: list[np.random.Generator]
) -> InstancePrompts | None:
    """Up to ``count`` nuclei per crop of ``labels`` (B, S, S), each with a positive click inside it.

    The click is the nucleus's centre (``distance`` peak) or, as often, any of its pixels, so a user's click
    anywhere inside works; half of the prompts add negative clicks on the centres of the nearest other nuclei,
    which is how SAM instance mode separates touching nuclei.
    """
    rows = []
    for index, (crop, centre, rng) in enumerate(zip(labels, distance, rngs, strict=True)):
        flat = crop.ravel()
        areas = np.bincount(flat)
        ids = np.flatnonzero(areas >= _MIN_PROMPTED_AREA)
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        ys, xs = np.indices(crop.shape)
        centroids = (
            np.stack([np.bincount(flat, ys.ravel())[ids], np.bincount(flat, xs.ravel())[ids]], 1)
            / areas[ids, None]
        )
        peaks = ndimage.maximum_position(centre, crop, ids)
        for which in rng.choice(ids.size, size=min(count, ids.size), replace=False):
            pixels = np.flatnonzero(flat == ids[which])
            row, col = (
                peaks[which] if rng.random() < 0.5 else np.unravel_index(rng.choice(pixels), crop.shape)
            )
            points, point_labels = [(col, row)], [1]
            if rng.random() < 0.5 and ids.size > 1:
                nearest = np.argsort(((centroids - centroids[which]) ** 2).sum(1))[
                    1 : 1 + MAX_NEIGHBOUR_NEGATIVES
                ]
                for other in nearest[: int(rng.integers(1, MAX_NEIGHBOUR_NEGATIVES + 1))]:
                    points.append(peaks[other][::-1])
                    point_labels.append(0)
            rows.append((index, ids[which], points, point_labels))
    if not rows:
        return None
    width = 1 + MAX_NEIGHBOUR_NEGATIVES
    points = np.zeros((len(rows), width, 2), np.float32)
    point_labels = np.full((len(rows), width), -1, np.int64)
    for n, (_, _, xy, lab) in enumerate(rows):
        points[n, : len(xy)] = xy
        point_labels[n, : len(lab)] = lab
    image_index = np.array([row[0] for row in rows])
    targets = labels[image_index] == np.array([row[1] for row in rows])[:, None, None]
    return InstancePrompts(
        torch.from_numpy(image_index),
        torch.from_numpy(points),
        torch.from_numpy(point_labels),
        torch.from_numpy(targets[:, None].astype(np.float32)),
    )


def window_targets(
    targets: torch.Tensor, origins: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's target and a 0/1 validity mask (inside the crop) in its refinement window."""
    size = targets.shape[-1]
    padded = F.pad(targets, (window,) * 4)
    valid = F.pad(torch.ones_like(targets), (window,) * 4)
    cut = [
        (
            padded[i, :, r + window : r + 2 * window, c + window : c + 2 * window],
            valid[i, :, r + window : r + 2 * window, c + window : c + 2 * window],
        )
        for i, (r, c) in enumerate(origins.clamp(-window, size).tolist())
    ]
    return torch.stack([t for t, _ in cut]), torch.stack([v for _, v in cut])


def correction_clicks(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, origins: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click on each window's largest error: positive in a missed region, negative in a false one.

    Placed at the error's most interior pixel, where a user would click. A mask without errors gets a padding
    point (label -1). Returns (N, 1, 2) (x, y) tile coordinates and (N, 1) labels.
    """
    predicted = (logits.detach() > 0).cpu().numpy()[:, 0]
    truth = target.cpu().numpy()[:, 0] > 0.5
    inside = valid.cpu().numpy()[:, 0] > 0.5
    points = np.zeros((len(predicted), 1, 2), np.float32)
    labels = np.full((len(predicted), 1), -1, np.int64)
    for n, (pred, true, ok) in enumerate(zip(predicted, truth, inside, strict=True)):
        missed, extra = true & ~pred & ok, pred & ~true & ok
        error, label = (missed, 1) if missed.sum() >= extra.sum() else (extra, 0)
        if not error.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(np.argmax(depth), depth.shape)
        points[n, 0] = (col + origins[n, 1].item(), row + origins[n, 0].item())
        labels[n, 0] = label
    return torch.from_numpy(points), torch.from_numpy(labels)


def instance_loss(
    model: SegmentAnyCell, output: SACOutput, prompts: InstancePrompts, clicks: int, batch_size: int
) -> torch.Tensor:
    """Single-nucleus prompts, then ``clicks`` rounds of correction clicks, each fed the previous mask.

    Per prompt: Dice + BCE of the refined window, the same on SAM's low-resolution mask of the whole crop
    (so everything away from the nucleus is background), and the squared error of SAM's predicted IoU. Averaged
    per crop, then over the ``batch_size`` crops (a crop without nuclei counts as 0), so data-parallel shares
    average to the single-process loss.
    """
    device = output.logits.device
    index = prompts.image_index.to(device)
    points, labels = prompts.points.to(device), prompts.labels.to(device)
    targets = prompts.targets.to(device)
    low_targets = F.adaptive_avg_pool2d(targets, output.sam_logits.shape[-2:])
    window = model.config.instance_window
    answer = None
    per_prompt = torch.zeros(len(index), device=device)
    for _ in range(clicks + 1):
        answer = model.prompt_instances(output, index, points, labels, answer)
        target, valid = window_targets(targets, answer.origins, window)
        loss = dice_bce(answer.logits, target, valid) + dice_bce(answer.sam_logits, low_targets)
        with torch.no_grad():
            predicted = (answer.logits > 0).float() * valid
            iou = (predicted * target).flatten(1).sum(1) / (
                (predicted + target * valid).clamp(max=1).flatten(1).sum(1).clamp(min=1)
            )
        per_prompt = per_prompt + loss + (answer.iou - iou) ** 2
        new_points, new_labels = correction_clicks(answer.logits, target, valid, answer.origins)
        points = torch.cat([points, new_points.to(device)], dim=1)
        labels = torch.cat([labels, new_labels.to(device)], dim=1)
    per_prompt = per_prompt / (clicks + 1)
    per_crop = torch.zeros(batch_size, device=device).index_add(0, index, per_prompt)
    counts = torch.bincount(index, minlength=batch_size).clamp(min=1)
    return (per_crop / counts).mean()


class TrainingObjective(nn.Module):
    """Every loss of one step in one forward, so data-parallel training sees a single graph.

    The paper's objective (generated K+K points -> the nuclei mask) plus single-nucleus prompts with iterated
    correction clicks, which is what makes SAM answer a click with the nucleus under it.
    """

    def __init__(self, model: SegmentAnyCell, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: dict[str, torch.Tensor], rngs: list[np.random.Generator]) -> torch.Tensor:
        config = self.config
        output = self.model(batch["image"])
        loss, _ = sac_loss(output, batch, config.contact_weight, config.contact_radius)
        if config.instance_prompts:
            prompts = sample_instance_prompts(
                batch["labels"].cpu().numpy(),
                batch["distance"][:, 0].cpu().numpy(),
                config.instance_prompts,
                rngs,
            )
            if prompts is not None:
                loss = loss + instance_loss(
                    self.model, output, prompts, config.correction_clicks, len(batch["image"])
                )
        return loss


def freeze_all_but(model: nn.Module, parts: list[str]) -> None:
    """Leave only the parameters of the named modules (``click_head``, ``sam.mask_decoder``, ...) trainable."""
    modules = dict(model.named_modules())
    unknown = [part for part in parts if part not in modules or not part]
    if unknown:
        raise InputError(f"train_only: the model has no part {', '.join(map(repr, unknown))}")
    for name, param in model.named_parameters():
        param.requires_grad = any(name.startswith(part + ".") for part in parts)


def split_validation(samples: list[NucleiSample], fraction: float, seed: int, fold: int = 0):
    """Hold out a deterministic fraction of each dataset's training images for validation (never the test set).

    The images are put in a seeded order and cut into shares of ``fraction``; ``fold`` picks the share held out
    (the last share takes the remainder), so the folds of one fraction and seed cover every image once.
    """
    order = np.random.default_rng(seed).permutation(len(samples))
    count = min(len(samples) - 1, max(1, round(fraction * len(samples)))) if fraction > 0 else 0
    folds = max(1, round(len(samples) / count)) if count else 1
    if fold >= folds:
        raise InputError(
            f"val_fold {fold}: {len(samples)} images at val_fraction {fraction} make {folds} folds (0-{folds - 1})"
        )
    end = len(samples) if fold == folds - 1 and fold > 0 else (fold + 1) * count
    held = set(order[fold * count : end].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [
        s for i, s in enumerate(samples) if i in held
    ]


def validation_dice(model: SegmentAnyCell, samples: list[NucleiSample]) -> float:
    segmenter = Segmenter(model)
    scores = [dice(segmenter.predict(s.image, mpp=s.mpp), s.labels) for s in samples]
    return float(np.mean(scores)) if scores else float("nan")


def outlined_nucleus_area(model: SegmentAnyCell, samples: list[NucleiSample]) -> float | None:
    """Median area, in pixels at the model's pixel size, of the nuclei the model reports with its own settings on
    ``samples`` (up to ``SIZE_IMAGES`` of those whose pixel size is known, spread over the list; None if none is
    known): the reference ``--mpp auto`` compares a new image's nuclei with.

    Measured on the model's own outlines, which are what ``auto`` measures, since a model may outline looser or
    tighter than its annotators (a fine-tune on 7 CryoNuSeg tiles: 289 px against the annotations' 265); and on
    many images, since nucleus size varies by tissue (one lymph-node tile of the same set alone: 208 px).
    """
    known = [sample for sample in samples if sample.mpp is not None]  # else it would measure the estimate
    segmenter = Segmenter(model, instances="fast")
    areas = [np.zeros(0)]
    for sample in known[:: math.ceil(len(known) / SIZE_IMAGES) or 1]:
        result = segmenter.segment(sample.image, mpp=sample.mpp)
        sizes = np.bincount(result.labels.ravel())[1:]
        areas.append(sizes[sizes > 0] * result.zoom**2)
    measured = np.concatenate(areas)
    return float(np.median(measured)) if measured.size else None


@torch.no_grad()
def validation_click_iou(model: SegmentAnyCell, samples: list[NucleiSample], seed: int = 0) -> float:
    """Mean IoU, in the refinement window, of the mask SAM gives for one click inside a nucleus.

    The same crops, nuclei and clicks every epoch (fixed seed), so epochs compare.
    """
    if not samples:
        return float("nan")
    crops = CropDataset(samples, crop_size=model.config.image_size, augment=False, seed=seed)
    was_training = model.training
    model.eval()
    ious: list[torch.Tensor] = []
    try:
        for start in range(0, len(crops), 4):
            batch = default_collate([crops[i] for i in range(start, min(start + 4, len(crops)))])
            rngs = [np.random.default_rng([seed, start + i]) for i in range(len(batch["image"]))]
            prompts = sample_instance_prompts(
                batch["labels"].numpy(), batch["distance"][:, 0].numpy(), 8, rngs
            )
            if prompts is None:
                continue
            alone = prompts.labels.clone()
            alone[:, 1:] = -1  # the click only, no neighbour negatives
            device = model.pixel_mean.device
            output = model(batch["image"].to(device))
            index, points, alone = prompts.image_index.to(device), prompts.points.to(device), alone.to(device)
            answer = model.prompt_instances(output, index, points, alone)
            target, valid = window_targets(
                prompts.targets.to(device), answer.origins, model.config.instance_window
            )
            predicted = (answer.logits > 0).float() * valid
            union = (predicted + target * valid).clamp(max=1).flatten(1).sum(1)
            ious.append((predicted * target).flatten(1).sum(1) / union.clamp(min=1))
            if sum(len(i) for i in ious) >= VAL_CLICKS:
                break
    finally:
        model.train(was_training)
    return float(torch.cat(ious).mean()) if ious else float("nan")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to 0 at ``total``; the warm-up takes at most a third of the run, so a
    short fine-tune reaches its learning rate (runs of 150 steps and more keep the configured warm-up)."""
    warmup = min(warmup, total // 3)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def distributed_context() -> tuple[int, int]:
    """(rank, world size), joining the process group that ``torchrun`` describes in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Owns the model, optimiser and run folder; ``run()`` trains until ``total_steps``.

    Under ``torchrun`` every process takes a contiguous share of each global batch, DDP averages gradients,
    and rank 0 alone validates, logs and writes checkpoints.
    """

    def __init__(self, config: TrainConfig, train: list[NucleiSample], val: list[NucleiSample]):
        self.out = Path(config.out)
        # a resumed run has its architecture in train_config.json and its weights in state.pt: the init
        # checkpoint is read only when a run starts, so it may since have moved or changed
        starting = config.init is not None and not (self.out / STATE_FILE).exists()
        self.config = config = adopt_init(config) if starting else config
        self.rank, self.world = distributed_context()
        if config.batch_size % self.world:
            raise InputError(f"batch size {config.batch_size} is not divisible by {self.world} processes")
        torch.manual_seed(config.seed)
        if config.model.nucleus_area is None:  # for --mpp auto, until an epoch's end measures the model's own
            area = median_nucleus_area(train, config.model.mpp)
            self.config = config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, nucleus_area=area)
            )
        self.device = resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":  # one GPU per process under torchrun
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.model = SegmentAnyCell(config.model)
        if starting:
            fresh = self.model.load_weights(model_path(config.init), partial=True)
            if fresh and self.rank == 0:
                tqdm.write(f"{config.init} has no {', '.join(fresh)}: starting from scratch")
            if "click_head" in fresh and config.instance_prompts:  # a model never trained on clicks
                self.model.copy_semantic_token()
        if config.train_only:
            freeze_all_but(self.model, config.train_only)
        self.model.to(self.device)
        objective = TrainingObjective(self.model, config)
        self.objective = (
            DistributedDataParallel(objective, find_unused_parameters=True) if self.world > 1 else objective
        )
        self.dataset = CropDataset(
            train,
            crop_size=config.model.image_size,
            augment=True,
            seed=config.seed,
            target_mpp=config.model.mpp,
            max_zoom=config.max_zoom,
        )
        self.val = val[: config.max_val_images]
        self.data = {"train": [sample.name for sample in train], "val": [sample.name for sample in val]}
        if not val and self.rank == 0:
            warnings.warn(
                f"no validation images ({len(train)} training images, val_fraction {config.val_fraction}): "
                "best/ is not written; use last/",
                stacklevel=2,
            )
        self.steps_per_epoch = max(1, len(self.dataset) // config.batch_size)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, self.total_steps, config.warmup_steps)
        )
        self.step = 0
        self.best_score = -1.0
        self.epoch_losses: list[float] = []
        self.elapsed = 0.0

    # --------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "model": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best_score": self.best_score,
            "epoch_losses": self.epoch_losses,
            "elapsed": self.elapsed,
            "data": self.data,
            "nucleus_area": self.model.config.nucleus_area,  # as last measured on the training images
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def save_state(self) -> None:
        with atomic_write(self.out / STATE_FILE) as tmp:
            torch.save(self.state(), tmp)
        self.model.save(self.out / "last", metrics={"step": self.step, "best_val_score": self.best_score})

    def load_state(self) -> None:
        path = self.out / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["model"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except Exception as error:
            # a corrupt or foreign file raises pickle, zip, EOF or size-mismatch errors, some of them multi-line
            reason = " ".join(str(error).split()) or type(error).__name__
            raise InputError(f"{path}: cannot resume from this training state ({reason})") from None
        # runs written before the score was named for what it is (validation Dice + one-click IoU) said best_dice
        self.step, self.best_score = state["step"], state.get("best_score", state.get("best_dice"))
        self.epoch_losses, self.elapsed = state["epoch_losses"], state["elapsed"]
        # runs from before the model's own nucleus size was measured keep their annotations' median
        area = state.get("nucleus_area", self.model.config.nucleus_area)
        self.model.config = dataclasses.replace(self.model.config, nucleus_area=area)
        self._check_same_data(state.get("data", self.data), path)
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self._truncate_log(self.step)

    def _check_same_data(self, then: dict[str, list[str]], path: Path) -> None:
        """Warn when the run's images changed since it started: it goes on, but its validation split is drawn
        again from today's images, so it may now hold images the run trained on."""
        before, now = set(then["train"] + then["val"]), set(self.data["train"] + self.data["val"])
        if before != now:
            gone, new = sorted(before - now), sorted(now - before)
            example = f"{gone[0]} gone" if gone else f"{new[0]} new"
            warnings.warn(
                f"{path}: the run's images changed since it started ({len(before)} then, {len(now)} now; e.g. "
                f"{example}): its validation split is drawn again and may hold images it trained on; for a clean "
                f"validation start a new run from it (--init {self.out / 'last'})",
                stacklevel=3,
            )

    # --------------------------------------------------------------- loop
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global ``step``: a seeded permutation of the epoch's crops, sliced."""
        epoch, index = divmod(step, self.steps_per_epoch)
        self.dataset.set_epoch(epoch)
        order = torch.randperm(
            len(self.dataset), generator=torch.Generator().manual_seed(self.config.seed + epoch)
        )
        share = self.config.batch_size // self.world
        start = index * self.config.batch_size + self.rank * share
        return default_collate([self.dataset[i] for i in order[start : start + share].tolist()])

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.model.train()
        self.model.point_seed = self.config.seed * 1_000_003 + self.step
        self.model.point_offset = offset = self.rank * (self.config.batch_size // self.world)
        rngs = [  # one stream per sample, so a batch split across processes prompts the same nuclei
            np.random.default_rng([self.config.seed, self.step, offset + i, 7])
            for i in range(len(batch["image"]))
        ]
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with precision(self.device):
            loss = self.objective(batch, rngs)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # with only some parts trained, a batch may hold nothing they answer for
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm=1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        loss = loss.detach()
        if self.world > 1:
            dist.all_reduce(loss)
            loss /= self.world
        return float(loss)

    def run(self, progress: bool = True) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        lead = self.rank == 0
        bar = progress_bar(
            None, progress and lead, total=self.total_steps, initial=self.step, desc="train", unit="step"
        )
        started = time.perf_counter() - self.elapsed
        while self.step < self.total_steps:
            self.epoch_losses.append(self.train_step(self.batch(self.step)))
            self.elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{self.epoch_losses[-1]:.3f}", refresh=False)  # drawn with the bar: a log's
            # bar stays a line a minute (a refresh per step wrote a line per step there)
            end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
            if end_of_epoch:
                if lead:
                    self.end_epoch()
                self.epoch_losses = []
            if (end_of_epoch or self.step % self.config.checkpoint_every == 0) and lead:
                self.save_state()
            if end_of_epoch and self.world > 1:
                dist.barrier()
        bar.close()
        return {"step": self.step, "best_val_score": self.best_score, "elapsed_s": self.elapsed}

    def end_epoch(self) -> None:
        val_dice = validation_dice(self.model, self.val)
        area = outlined_nucleus_area(self.model, self.dataset.samples)
        if area is not None:  # recorded in the checkpoints saved from now on, for --mpp auto
            self.model.config = dataclasses.replace(self.model.config, nucleus_area=area)
        click_iou = validation_click_iou(self.model, self.val, self.config.seed)
        epoch = math.ceil(self.step / self.steps_per_epoch)
        row = {
            "epoch": epoch,
            "step": self.step,
            "train_loss": float(np.mean(self.epoch_losses)),
            "val_dice": val_dice,
            "val_click_iou": click_iou,
            "lr": self.scheduler.get_last_lr()[0],
            "elapsed_s": round(self.elapsed, 1),
        }
        self._append_log(row)
        tqdm.write(
            f"epoch {epoch}: loss {row['train_loss']:.4f}, val Dice {val_dice:.4f}, click IoU {click_iou:.4f}"
        )
        # the model answers both questions: all nuclei (Dice) and the nucleus under a click (IoU)
        score = val_dice + (0.0 if math.isnan(click_iou) else click_iou)
        if not math.isnan(val_dice) and score > self.best_score:
            self.best_score = score
            metrics = {"step": self.step, "val_dice": val_dice, "val_click_iou": click_iou}
            self.model.save(self.out / "best", metrics=metrics)
        plot_log(self.out / LOG_FILE, self.out / "curve.png")

    def _append_log(self, row: dict) -> None:
        write_log(self.out / LOG_FILE, [*read_log(self.out / LOG_FILE), row])

    def _truncate_log(self, step: int) -> None:
        """Drop the rows logged after ``step`` (an interrupted run's, which resuming from ``step`` redoes); a
        finished run's last, partial epoch was logged at its final step and stays."""
        rows = read_log(self.out / LOG_FILE)
        write_log(self.out / LOG_FILE, [r for r in rows if int(r["step"]) <= step])


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_log(log: Path, png: Path) -> None:
    """Loss, validation Dice and validation one-click IoU per epoch, for a glance at convergence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)
    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [float(r["val_dice"]) for r in rows], marker="o", color="tab:green", label="Dice")
    clicked = [
        (e, float(r["val_click_iou"])) for e, r in zip(epochs, rows, strict=True) if r.get("val_click_iou")
    ]
    if clicked:
        right.plot(*zip(*clicked, strict=True), marker="s", color="tab:purple", label="one-click IoU")
        right.legend(loc="lower right")
    right.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    fig.tight_layout()
    with atomic_write(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def load_training_data(config: TrainConfig) -> tuple[list[NucleiSample], list[NucleiSample]]:
    train, val = [], []
    for name in config.datasets:
        samples = load_dataset(name, config.data_root, "train")
        fitted, held = split_validation(samples, config.val_fraction, config.seed, config.val_fold)
        train += fitted
        val += held
    return train, val


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Start a run in ``config.out`` (refusing to overwrite one) and train it."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    if (out / STATE_FILE).exists():
        raise InputError(f"{out}: a run already exists there; use --resume {out} or another --out")
    if config.data_root is not None:  # a run resumed from another folder finds its data
        config = dataclasses.replace(config, data_root=str(Path(config.data_root).resolve()))
    trainer = Trainer(config, *load_training_data(config))  # bad data or model: fails before --out is made
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "train_config.json") as tmp:
        tmp.write_text(trainer.config.to_json())
    if trainer.rank == 0:
        tqdm.write(f"parameters: {count_parameters(trainer.model)}; {trainer.total_steps} steps")
    return _finish(trainer.run(progress))


def _finish(result: dict) -> dict:
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def resume(run_dir: str | Path, max_steps: int | None = None, progress: bool = True) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint (optionally to a new ``max_steps``)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "train_config.json"
    if not config_file.is_file():
        raise InputError(f"{run_dir}: no train_config.json; not a SAC training run")
    try:
        config = TrainConfig.from_dict(json.loads(config_file.read_text()), str(config_file), new_run=False)
    except json.JSONDecodeError as error:
        raise InputError(f"{config_file}: invalid JSON ({error.msg} at line {error.lineno})") from None
    config.out = str(run_dir)
    if max_steps is not None:
        config = dataclasses.replace(config, max_steps=max_steps)  # checked as a new run's would be
    trainer = Trainer(config, *load_training_data(config))
    if (run_dir / STATE_FILE).exists():
        trainer.load_state()
    if max_steps is not None:
        if trainer.step > max_steps:
            raise InputError(
                f"{run_dir}: the run is at step {trainer.step}; --max-steps {max_steps} cannot extend it"
            )
        with atomic_write(config_file) as tmp:
            tmp.write_text(config.to_json())
    if trainer.step >= trainer.total_steps and trainer.rank == 0:
        tqdm.write(f"{run_dir}: finished at step {trainer.step}; nothing to do (--max-steps N extends it)")
    return _finish(trainer.run(progress))
