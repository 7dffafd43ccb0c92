"""SegmentAnyCell: the auto-prompt generator, SAM with LoRA, and a fine-tuned mask decoder, as one module.

The generator predicts a nuclei map; points sampled from it prompt SAM, whose low-resolution mask is upsampled and
refined at full resolution by a small fusion head that also sees the generator's features (SAM's masks are 1/4 of
the input size, too coarse for 10-pixel nuclei). Large images are tiled, never resized.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from torch import nn

import sac
from sac.backbone import count_parameters, create_sam, is_random
from sac.export import OBJECT_CLASSES
from sac.generator import IMAGENET_MEAN, IMAGENET_STD, ConvBlock, PromptGenerator
from sac.io import (
    InputError,
    atomic_write,
    check_field_types,
    check_pixel_size,
    check_state_dict,
    sha256sum,
)
from sac.lora import configure_encoder, merge_lora
from sac.options import TTA_VIEWS, SegmentOptions
from sac.points import sample_point_prompts

MAP_NAMES = ("nuclei", "generator", "centre", "sam")  # the channels of Segmenter.maps, in order
# and after them, for a model with hv_maps: each pixel's horizontal and vertical offset from its nucleus's centre
HV_MAP_NAMES = ("horizontal", "vertical")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# the whole-number fields of SACConfig and their least values (the generated points may be none)
_COUNT_MINIMUMS = {
    "image_size": 1,
    "lora_rank": 1,
    "generator_channels": 1,
    "generator_depth": 1,
    "instance_window": 1,
    "click_head_width": 1,
    "hv_head_width": 1,
    "num_positive": 0,
    "num_negative": 0,
}


@dataclass(frozen=True)
class SACConfig:
    """The one model configuration: everything needed to rebuild the network and run it as trained.

    Saved as ``config.json`` beside every checkpoint, and held by the training configuration.
    """

    backbone: str = "tiny"
    image_size: int = 256
    encoder_mode: str | None = (
        None  # None: "full" for the from-scratch presets, "lora" for pretrained weights
    )
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: the rank (scaling 1)
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "v")
    generator_channels: int = 8
    generator_depth: int = 4
    num_positive: int = 8
    num_negative: int = 8
    point_threshold: float = 0.5
    # µm per pixel the model works at: its training images' (or one chosen on validation within their zoom
    # augmentation, SACConfig.at_scale); None: unknown
    mpp: float | None = None
    instance_window: int = 64  # full-resolution window refined around a click (pixels of the model's input)
    click_head_width: int = 16
    # the click head also sees, in its window, the normalised image and (with hv_maps) the HV maps: where one
    # nucleus ends and a touching one begins, which the generator's maps alone blur
    click_head_sees_image: bool = False
    # a third, residual level under the click head's U-Net (ResidualLevel): it sees about twice as far, the whole
    # of a large nucleus from a click at its rim
    click_head_deeper: bool = False
    # over how many views of its tile (sac.views.VIEWS) a click's answer is averaged (its logits): each view costs
    # a pass of the network over the tile, a click's own answer little; chosen on validation
    click_views: int = 1
    # a head predicting HoVer-Net's horizontal and vertical maps (each pixel's offset from its nucleus's centre,
    # -1..1 across the nucleus): they flip sign where two nuclei touch, so the watershed can split them
    hv_maps: bool = False
    hv_head_width: int = 16  # channels of the HV head's first level (its cost grows with the square)
    # median nucleus area (px at mpp) that --mpp auto compares an image's objects with: of the objects the model
    # itself reports on its training images of known pixel size (sac.train.outlined_nucleus_area), else of their
    # annotations
    nucleus_area: float | None = None
    # whether --mpp auto may estimate an image's pixel size from its objects' sizes: nuclei tell the scale, glands
    # do not (a gland model shown glands at twice its scale cuts them into pieces of plausible size)
    estimate_scale: bool = True
    # the post-processing that suits the model, chosen on its validation images: objects below min_size µm² are
    # dropped; watershed seeds are cut from the centre map at seed_threshold, and split where the valley between
    # two peaks is seed_depth deep (0: not split; benchmarks/postprocessing.py);
    # tta: over how many views of an image its maps are averaged (sac.options.TTA_VIEWS; False: 1, True: 8)
    # unless the user says otherwise
    min_size: float = 3.0
    seed_threshold: float = 0.4
    seed_depth: float = 0.0
    hv_weight: float = 1.0  # how far hv_maps' boundaries lower the centre map (instances_from_maps)
    tta: int | bool = False
    objects: str = (
        "nuclei"  # what it segments (a key of sac.export.OBJECT_CLASSES): its table's name, QuPath class
    )
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.encoder_mode is None:
            object.__setattr__(self, "encoder_mode", "full" if is_random(self.backbone) else "lora")
        if self.lora_alpha is None:
            object.__setattr__(self, "lora_alpha", float(self.lora_rank))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.objects not in OBJECT_CLASSES:
            raise InputError(f"unknown objects {self.objects!r}: expected {' or '.join(OBJECT_CLASSES)}")
        # its post-processing is checked as a user's options are, so a bad config fails when the model loads
        SegmentOptions(
            seed_threshold=self.seed_threshold,
            seed_depth=self.seed_depth,
            hv_weight=self.hv_weight,
            min_size=self.min_size,
            tta=self.tta,
        )
        if self.click_views not in TTA_VIEWS:
            raise InputError(f"click_views takes {', '.join(map(str, TTA_VIEWS))}; got {self.click_views}")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Sizes and counts a hand-edited config may get wrong, refused when the model is built, not mid-run."""
        if self.mpp is not None:
            check_pixel_size(self.mpp)
        if self.nucleus_area is not None and not self.nucleus_area > 0:
            raise InputError(f"nucleus_area must be a positive area in pixels, got {self.nucleus_area}")
        for name, least in _COUNT_MINIMUMS.items():  # whole numbers already (check_field_types)
            value = getattr(self, name)
            if value < least:
                raise InputError(f"{name} must be a whole number of at least {least}, got {value!r}")
        if not 0 <= self.point_threshold <= 1:
            raise InputError(f"point_threshold must be in [0, 1], got {self.point_threshold}")

    def at_scale(self, mpp: float) -> SACConfig:
        """The same model run at another pixel size; its reference nucleus area, in pixels, follows.

        A model trained with zoom augmentation has seen its objects over a range of sizes; where its validation
        images show it does better elsewhere in that range (glands: more context per view), it runs there.
        """
        area = self.nucleus_area
        if area is not None and self.mpp is not None:
            area *= (self.mpp / mpp) ** 2
        return dataclasses.replace(self, mpp=mpp, nucleus_area=area)

    @property
    def map_names(self) -> tuple[str, ...]:
        """The channels of the segmenter's maps for this model, in order."""
        return MAP_NAMES + (HV_MAP_NAMES if self.hv_maps else ())

    @classmethod
    def from_dict(cls, data: dict) -> SACConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)


# The fields that shape the weights: a checkpoint's weights fit only a model with the same values.
ARCHITECTURE_FIELDS = (
    "backbone",
    "image_size",
    "encoder_mode",
    "lora_rank",
    "lora_targets",
    "generator_channels",
    "generator_depth",
    "click_head_width",
    "click_head_sees_image",
    "click_head_deeper",
    "hv_maps",
    "hv_head_width",
)
# parts a fine-tuning run may add to its init checkpoint (the switch, then the fields that shape the part): the
# new module starts from scratch, shaped as the run says
ADDABLE_PARTS = {"hv_maps": ("hv_head_width",)}
# what a fine-tuning run may add to its init's click head, each starting out as a no-op (load_weights): inputs
# read with zero weights (add_click_inputs), a residual level whose output starts at zero (ResidualLevel)
ADDABLE_CLICK_PARTS = ("click_head_sees_image", "click_head_deeper")
# the widths a fine-tuning run may multiply by a whole number, each with the weights it shapes ("" for all: the
# generator's features feed every head): its init's weights are widened so that the wider network starts out
# computing exactly what the init computed (widen_feature_channels)
WIDENABLE_FIELDS = {"generator_channels": "", "click_head_width": "click_head."}


def widening_factors(init: SACConfig, run: SACConfig, source: str) -> dict[str, int]:
    """The widths in ``WIDENABLE_FIELDS`` the run makes wider than its init's, each with its factor: a whole
    number whose widening keeps every GroupNorm's groups (widths that are multiples of 8, see
    :class:`sac.generator.ConvBlock`); one width per run. A width not wider is the init's (the run takes its
    init's architecture)."""
    factors = {}
    for name in WIDENABLE_FIELDS:
        old, new = getattr(init, name), getattr(run, name)
        if new <= old:
            continue
        if new % old or old % 8:
            raise InputError(
                f"{source}: its {name} is {old}; a run can only widen it by a whole factor, and only "
                f"from a multiple of 8 (got {new})"
            )
        factors[name] = new // old
    if len(factors) > 1:
        raise InputError(f"{source}: a run widens one part at a time (got {', '.join(factors)})")
    return factors


def add_click_inputs(tensors: dict[str, torch.Tensor], channels: int) -> dict[str, torch.Tensor]:
    """A checkpoint's click head given ``channels`` new inputs (``click_head_sees_image``), read with zero
    weights, so that it starts out answering exactly as it did and learns what the new inputs add."""
    key = "click_head.down1.layers.0.weight"
    if key not in tensors:  # no click head yet: it starts from scratch (load_weights)
        return tensors
    weight = tensors[key]
    zeros = weight.new_zeros(weight.shape[0], channels, *weight.shape[2:])
    inputs = ClickHead.INPUTS
    return {**tensors, key: torch.cat([weight[:, :inputs], zeros, weight[:, inputs:]], dim=1)}


def widen_feature_channels(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], factor: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Widen a checkpoint's network ``factor`` times without changing what it computes (Net2Net).

    ``tensors`` holds the part to widen (the whole model for the generator, whose features feed every head).
    Every channel becomes ``factor`` adjacent copies of itself; a layer reading copies gets the
    original weight split among them, in random shares that sum to one, so the copies learn apart. Works from
    the shapes in ``expected``: an input dimension that grows is widened in its trailing part (the features
    come last in every head's input). GroupNorm with the same groups normalises copies as their original.
    """
    shares = torch.Generator().manual_seed(seed)
    widened = {}
    for name, weight in tensors.items():
        if name not in expected:  # left for check_state_dict to report
            widened[name] = weight
            continue
        target = expected[name].shape
        if weight.shape[0] != target[0]:  # output channels, or GroupNorm's per-channel scale and shift
            weight = weight.repeat_interleave(factor, 0)
        if weight.ndim > 1 and weight.shape[1] != target[1]:
            grown = (target[1] - weight.shape[1]) // (factor - 1)
            kept = weight.shape[1] - grown
            split = weight[:, kept:].unsqueeze(2).expand(-1, -1, factor, *weight.shape[2:])
            noise = 0.1 * torch.randn(split.shape, generator=shares)
            share = 1 / factor + noise - noise.mean(dim=2, keepdim=True)
            weight = torch.cat([weight[:, :kept], (split * share).flatten(1, 2)], dim=1)
        widened[name] = weight
    return widened


class SACOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1, H, W) final nuclei logits at input resolution
    sam_logits: torch.Tensor  # (B, 1, H/4, W/4) SAM mask decoder logits
    sam_upsampled: torch.Tensor  # (B, 1, H, W) the same, at input resolution
    generator_logits: torch.Tensor  # (B, 2, H, W) generator foreground and centre logits
    points: torch.Tensor  # (B, 1, N, 2) the prompts used
    point_labels: torch.Tensor  # (B, 1, N)
    image_embeddings: torch.Tensor  # (B, C, H/16, W/16) SAM encoder output, reused by instance prompts
    features: torch.Tensor  # (B, F, H, W) generator features, reused by the fusion head of instance prompts
    hv: torch.Tensor | None = None  # (B, 2, H, W) horizontal and vertical maps, for a model with hv_maps
    normalised: torch.Tensor | None = None  # (B, 3, H, W) the input tiles as the networks see them


class InstanceOutput(NamedTuple):
    """SAM's answer to one prompt per row: one nucleus, refined at full resolution around its first point."""

    logits: torch.Tensor  # (N, 1, w, w) refined logits in the window
    origins: (
        torch.Tensor
    )  # (N, 2) (row, column) of each window's top-left corner in the tile, may be negative
    sam_logits: torch.Tensor  # (N, 1, H/4, W/4) SAM's low-resolution mask of the whole tile
    iou: torch.Tensor  # (N,) SAM's predicted IoU of the mask


class FusionHead(nn.Module):
    """Full-resolution refinement: SAM's upsampled logit plus a residual from generator features."""

    def __init__(self, feature_channels: int, hidden: int = 16):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(feature_channels + 3, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(
        self, sam_up: torch.Tensor, generator_logits: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        return sam_up + self.layers(torch.cat([sam_up, generator_logits, features], dim=1))


class ResidualLevel(nn.Module):
    """One more U-Net level under ``channels``-wide features, added to them. Its last layer starts at zero, so a
    trained network it is added to starts out computing exactly what it did, and learns what the level adds."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = ConvBlock(channels, 2 * channels)
        self.project = nn.Conv2d(2 * channels, channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        coarse = self.block(F.max_pool2d(features, 2))
        return features + self.project(F.interpolate(coarse, size=features.shape[-2:]))


class SmallUNet(nn.Module):
    """A two-level U-Net at full resolution; its receptive field (about 40 pixels) spans a nucleus, and about
    twice that with a ``deeper`` third level."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 16, deeper: bool = False):
        super().__init__()
        self.down1 = ConvBlock(in_channels, width)
        self.down2 = ConvBlock(width, 2 * width)
        self.bottom = ConvBlock(2 * width, 2 * width)
        self.deeper = ResidualLevel(2 * width) if deeper else None
        self.up2 = ConvBlock(4 * width, width)
        self.up1 = ConvBlock(2 * width, width)
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        first = self.down1(inputs)
        second = self.down2(F.max_pool2d(first, 2))
        bottom = self.bottom(F.max_pool2d(second, 2))
        if self.deeper is not None:
            bottom = self.deeper(bottom)
        second = self.up2(torch.cat([F.interpolate(bottom, size=second.shape[-2:]), second], dim=1))
        return self.out(self.up1(torch.cat([F.interpolate(second, size=first.shape[-2:]), first], dim=1)))


class ClickHead(SmallUNet):
    """The full-resolution answer to a click, in a window centred on it.

    SAM's masks are a quarter of the input resolution, and its image embedding a sixteenth: a 12-pixel nucleus
    is smaller than one embedding cell, so SAM alone cannot single it out from its neighbours. This small
    U-Net sees, in the window, SAM's upsampled answer, the generator's maps, maps of the clicks (positive and
    negative), the previous answer, optionally the image and HV maps (``context_channels``), and the
    generator's features, in that order; its receptive field spans the window, so it can keep the nucleus the
    click lands on and drop its neighbours.
    """

    INPUTS = 1 + 2 + 2 + 1  # SAM's answer, generator maps, positive and negative clicks, previous answer

    def __init__(
        self, feature_channels: int, width: int = 16, context_channels: int = 0, deeper: bool = False
    ):
        super().__init__(self.INPUTS + context_channels + feature_channels, 1, width, deeper)

    @staticmethod
    def context_channels(config: SACConfig) -> int:
        """Channels of the image (3) and HV maps (2, with hv_maps) the click head reads, if it sees the image."""
        return (3 + 2 * config.hv_maps) if config.click_head_sees_image else 0


class HVHead(SmallUNet):
    """HoVer-Net's horizontal and vertical maps, from the normalised image, the generator's maps and features.

    The image itself, not only the generator's features, because the sign flip between two touching nuclei sits
    on the thin paler line between them.
    """

    def __init__(self, feature_channels: int, width: int = 16):
        super().__init__(3 + 2 + feature_channels, 2, width)

    def forward(
        self, images: torch.Tensor, generator_logits: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        return super().forward(torch.cat([images, generator_logits, features], dim=1))


class SegmentAnyCell(nn.Module):
    """The SAC network on fixed-size tiles; :class:`sac.segmenter.Segmenter` runs it on images of any size."""

    def __init__(self, config: SACConfig | None = None, sam: nn.Module | None = None):
        super().__init__()
        self.config = config = config or SACConfig()
        self.sam = sam if sam is not None else create_sam(config.backbone, config.image_size)
        if self.sam.config.vision_config.image_size != config.image_size:
            raise InputError(
                f"backbone input size {self.sam.config.vision_config.image_size} != model image_size {config.image_size}"
            )
        configure_encoder(
            self.sam.vision_encoder,
            config.encoder_mode,
            config.lora_rank,
            config.lora_alpha,
            config.lora_dropout,
            config.lora_targets,
        )
        self.generator = PromptGenerator(
            base_channels=config.generator_channels, depth=config.generator_depth
        )
        self.fusion = FusionHead(config.generator_channels)
        self.click_head = ClickHead(
            config.generator_channels,
            config.click_head_width,
            ClickHead.context_channels(config),
            config.click_head_deeper,
        )
        self.hv_head = HVHead(config.generator_channels, config.hv_head_width) if config.hv_maps else None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.point_seed = 0
        self.point_offset = 0  # global index of this batch's first sample (set by data-parallel training)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        generate_points: bool = True,
        hv: bool = True,
    ) -> SACOutput:
        """``images`` (B, 3, S, S) in [0, 1] with S = ``config.image_size``.

        Given ``points``/``point_labels`` ((B, 1, N, 2) as (x, y), (B, 1, N)), they are added to the generated
        prompts, or used alone with ``generate_points=False``. ``hv=False`` skips the HV head (its maps only
        split instances, and it costs about as much as the rest at full resolution).
        """
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise InputError(f"model expects {size}x{size} tiles, got {tuple(images.shape[-2:])}")
        generated = self.generator(images)
        prompts, prompt_labels = self._prompts(generated.logits, points, point_labels, generate_points)
        normalised = (images - self.pixel_mean) / self.pixel_std
        # not SamModel.get_image_embeddings: it runs under no_grad, which would freeze the encoder (LoRA too)
        embeddings = self.sam.vision_encoder(normalised)[0]
        sam_logits = self.sam(
            image_embeddings=embeddings,
            input_points=prompts,
            input_labels=prompt_labels,
            multimask_output=False,
        ).pred_masks[:, 0]
        sam_up = F.interpolate(sam_logits, size=(size, size), mode="bilinear", align_corners=False)
        logits = self.fusion(sam_up, generated.logits, generated.features)
        return SACOutput(
            logits,
            sam_logits,
            sam_up,
            generated.logits,
            prompts,
            prompt_labels,
            embeddings,
            generated.features,
            None
            if self.hv_head is None or not hv
            else self.hv_head(normalised, generated.logits, generated.features),
            normalised,
        )

    def prompt_instances(
        self,
        output: SACOutput,
        image_index: torch.Tensor,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        previous: InstanceOutput | None = None,
    ) -> InstanceOutput:
        """One nucleus per prompt: SAM's first multimask token answers (points, labels) at a quarter resolution,
        the click head answers at full resolution in a window centred on the first (positive) point.

        ``image_index`` (N,) picks each prompt's tile in ``output``; ``points`` (N, K, 2) as (x, y) with
        ``point_labels`` (N, K) (1 positive, 0 negative, -1 padding). ``previous`` is the answer to the same
        prompts before their last clicks: SAM gets its mask as a mask prompt and the click head its window, as in
        SAM's iterative correction. Instances use their own token so that "all nuclei" (the semantic token 0)
        and "this nucleus" are different questions for the decoder.
        """
        answer = self.sam(
            image_embeddings=output.image_embeddings[image_index],
            input_points=points[:, None],
            input_labels=point_labels[:, None],
            input_masks=None if previous is None else previous.sam_logits.detach(),
            multimask_output=True,
        )
        sam_logits = answer.pred_masks[:, 0, :1]
        window = self.config.instance_window
        origins = points[:, 0].round().long().flip(-1) - window // 2  # (row, column)
        seen = []  # what the click head sees besides the generator's maps and features
        if self.config.click_head_sees_image:
            if self.config.hv_maps and output.hv is None:
                raise InputError("this model's click head reads the HV maps: run the model with hv=True")
            seen = [output.normalised] + ([output.hv.detach()] if self.config.hv_maps else [])
        context = F.pad(torch.cat([output.generator_logits, *seen, output.features], dim=1), (window,) * 4)
        context = torch.stack(
            [
                context[image, :, row + window : row + 2 * window, col + window : col + 2 * window]
                for image, (row, col) in zip(image_index.tolist(), origins.tolist(), strict=True)
            ]
        )
        sam_up = _upsampled_windows(sam_logits, origins, window, self.config.image_size)
        clicks = _click_maps(points, point_labels, origins, window)
        before = torch.zeros_like(sam_up) if previous is None else torch.sigmoid(previous.logits.detach())
        maps = torch.sigmoid(torch.cat([sam_up, context[:, :2]], dim=1))  # probabilities: inputs on one scale
        logits = self.click_head(torch.cat([maps, clicks, before, context[:, 2:]], dim=1))
        return InstanceOutput(logits, origins, sam_logits, answer.iou_scores[:, 0, 0])

    def _prompts(self, generator_logits, points, point_labels, generate_points):
        if not generate_points:
            if points is None:
                raise InputError("generate_points=False needs manual points")
            return points, point_labels
        with torch.no_grad():
            probability = torch.sigmoid(generator_logits[:, 0]).float()
            centre = torch.sigmoid(generator_logits[:, 1]).float()
        seed = self.point_seed
        if self.training:  # fresh points every step, reproducible from the step counter the trainer sets
            self.point_seed += 1
        # one stream per sample, so a batch split across processes draws the same points as in one process
        sampled = [
            sample_point_prompts(
                probability[i : i + 1],
                self.config.num_positive,
                self.config.num_negative,
                np.random.default_rng([seed, self.point_offset + i]),
                threshold=self.config.point_threshold,
                centre=centre[i : i + 1],
            )
            for i in range(len(probability))
        ]
        prompts = torch.cat([p for p, _ in sampled])
        labels = torch.cat([lab for _, lab in sampled])
        if points is not None:
            prompts = torch.cat([prompts, points.to(prompts)], dim=2)
            labels = torch.cat([labels, point_labels.to(labels)], dim=2)
        return prompts, labels

    @torch.no_grad()
    def copy_semantic_token(self) -> None:
        """Start the instance token (the first multimask token) as a copy of the semantic one.

        A randomly initialised token collapses to an all-background mask within a few hundred steps (its logits
        saturate near -10 and its gradients vanish); starting from "all nuclei" it only has to learn to keep
        the nucleus under the click.
        """
        decoder = self.sam.mask_decoder
        decoder.mask_tokens.weight[1] = decoder.mask_tokens.weight[0]
        decoder.output_hypernetworks_mlps[1].load_state_dict(
            decoder.output_hypernetworks_mlps[0].state_dict()
        )

    # ------------------------------------------------------------------ persistence
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: generator, fusion, decoder, prompt encoder, and LoRA or the whole encoder."""
        from_scratch = is_random(self.config.backbone)  # a random base encoder cannot be rebuilt: keep it
        names = {name for name, param in self.named_parameters() if param.requires_grad or from_scratch}
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in names}

    def save(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (with versions and the weights' sha256) atomically.

        Both files are complete before either replaces its predecessor, and the two renames follow each other at
        once, so a process killed while saving leaves the previous checkpoint loadable.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with (
            atomic_write(directory / WEIGHTS_FILE) as weights,
            atomic_write(directory / CONFIG_FILE) as config,
        ):
            save_file(
                self.trainable_state_dict(), str(weights), metadata={"format": "pt", "sac": sac.__version__}
            )
            meta = {
                "model": dataclasses.asdict(self.config),
                "weights_sha256": sha256sum(weights),
                "versions": {
                    "sac": sac.__version__,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": platform.python_version(),
                },
                "parameters": count_parameters(self),
                "metrics": metrics or {},
            }
            config.write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> SegmentAnyCell:
        """Load a checkpoint folder, or a model shipped with the package by name (None: the default, "nuclei")."""
        directory = model_path(path)
        meta = read_checkpoint_meta(directory)
        try:
            config = SACConfig.from_dict(meta["model"])
        except InputError as error:  # a hand-edited config: name the file
            raise InputError(f"{directory / CONFIG_FILE}: {error}") from None
        model = cls(config)
        model.load_weights(directory, meta)
        return model.to(device).eval()

    def load_weights(
        self, directory: str | Path, meta: dict | None = None, partial: bool = False
    ) -> list[str]:
        """Load a checkpoint's weights into this model, whose architecture must match the checkpoint's.

        ``meta`` is the checkpoint's config.json when the caller has already read it. ``partial`` lets parts the
        checkpoint lacks (modules added since it was written) keep their fresh initialisation; returns their
        top-level module names. A generator or click head wider than the checkpoint's by a whole factor gets the
        checkpoint's weights widened (:func:`widen_feature_channels`), a click head given the image its weights
        for it at zero (:func:`add_click_inputs`), a click head made deeper its fresh :class:`ResidualLevel`.
        Sets ``self.meta``.
        """
        directory = Path(directory)
        meta = meta or read_checkpoint_meta(directory)
        weights = directory / WEIGHTS_FILE
        if sha256sum(weights) != meta["weights_sha256"]:
            raise InputError(
                f"{weights}: sha256 differs from the one recorded in config.json (corrupted file?)"
            )
        try:
            with safetensors.safe_open(str(weights), "pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise InputError(f"{weights}: unreadable weights: {error}") from None
        expected = self.trainable_state_dict()
        saved = SACConfig.from_dict(meta["model"])
        if self.config.click_head_sees_image and not saved.click_head_sees_image:
            tensors = add_click_inputs(tensors, ClickHead.context_channels(self.config))
        if self.config.click_head_deeper and not saved.click_head_deeper:  # its fresh level, a no-op at first
            tensors = {**tensors, **{k: v for k, v in expected.items() if k.startswith("click_head.deeper.")}}
        for name, factor in widening_factors(saved, self.config, str(directory)).items():
            part = {k: v for k, v in tensors.items() if k.startswith(WIDENABLE_FIELDS[name])}
            tensors = {**tensors, **widen_feature_channels(part, expected, factor)}
        fresh = sorted({key.split(".")[0] for key in expected if key not in tensors}) if partial else []
        expected = {k: v for k, v in expected.items() if k.split(".")[0] not in fresh}
        check_state_dict(tensors, expected, f"{weights} (architecture from config.json)")
        self.load_state_dict(tensors, strict=False)
        self.meta = meta
        return fresh

    def prepare_for_inference(self) -> SegmentAnyCell:
        """Merge LoRA into the encoder, use channels-last convolutions, eval mode: the fastest form to predict."""
        merge_lora(self)
        self.generator.to(memory_format=torch.channels_last)
        self.fusion.to(memory_format=torch.channels_last)
        if self.hv_head is not None:
            self.hv_head.to(memory_format=torch.channels_last)
        return self.eval()


CLICK_SIGMA = 3.0  # px: the spread of a click in the click head's click maps


def _click_maps(
    points: torch.Tensor, labels: torch.Tensor, origins: torch.Tensor, window: int
) -> torch.Tensor:
    """(N, 2, window, window) Gaussian maps of each prompt's positive and negative clicks in its window."""
    offsets = torch.arange(window, device=points.device, dtype=torch.float32)
    rows = offsets[None, None, :, None] + origins[:, None, :1, None].float() - points[:, :, 1, None, None]
    cols = offsets[None, None, None, :] + origins[:, None, 1:, None].float() - points[:, :, 0, None, None]
    bumps = torch.exp(-(rows**2 + cols**2) / (2 * CLICK_SIGMA**2))  # (N, K, window, window)
    return torch.stack([(bumps * (labels == kind)[..., None, None]).sum(1) for kind in (1, 0)], dim=1).to(
        points.dtype
    )


def _upsampled_windows(low: torch.Tensor, origins: torch.Tensor, window: int, size: int) -> torch.Tensor:
    """Windows of ``low`` (N, 1, h, w) bilinearly upsampled to ``size`` (as ``F.interpolate`` would), cut at
    (row, column) ``origins`` of the upsampled frame without upsampling the rest; edges are replicated."""
    scale = low.shape[-1] / size
    offsets = torch.arange(window, device=low.device, dtype=torch.float32)
    # the upsampled pixel p samples the low-resolution map at (p + 0.5) * scale, in grid_sample's [-1, 1]
    rows = ((origins[:, :1].float() + offsets + 0.5) * scale) / low.shape[-2] * 2 - 1
    cols = ((origins[:, 1:].float() + offsets + 0.5) * scale) / low.shape[-1] * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1)
    return F.grid_sample(low, grid.to(low.dtype), mode="bilinear", padding_mode="border", align_corners=False)


# Models shipped inside the package, by name; the first is the default.
SHIPPED_MODELS = {
    "nuclei": "nuclei in H&E and fluorescence (MoNuSeg, CoNSeP, CryoNuSeg, DSB 2018)",
    "glands": "glands in colon H&E (GlaS)",
}


def model_path(model: str | Path | None = None) -> Path:
    """A checkpoint folder: a shipped model's by name (None or "default": the first), else ``model`` itself."""
    name = next(iter(SHIPPED_MODELS)) if model in (None, "default") else str(model)
    if name in SHIPPED_MODELS:
        return Path(str(resources.files("sac") / "models" / name))
    return Path(model)


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (about half the time and memory, no loss scaling needed, no visible loss);
    full precision elsewhere, where bfloat16 is not faster everywhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_record(model: SegmentAnyCell) -> dict:
    """A model's checkpoint metadata (config.json: its weights' sha256, configuration, versions), or its
    configuration when it was never saved: what a run's record says made its outputs."""
    return getattr(model, "meta", None) or {"model": dataclasses.asdict(model.config)}


def read_checkpoint_meta(directory: Path) -> dict:
    """A checkpoint folder's config.json, after checking the folder holds a checkpoint (one line naming what is
    wrong otherwise: no such folder, a file of it given, a training run's folder given)."""
    config_file = directory / CONFIG_FILE
    if not directory.exists():
        raise InputError(
            f"{directory}: no such model; shipped models: {', '.join(SHIPPED_MODELS)}, or a checkpoint folder"
        )
    if directory.name in (CONFIG_FILE, WEIGHTS_FILE) and directory.is_file():
        raise InputError(
            f"{directory}: give the checkpoint's folder, {directory.parent}, not one of its files"
        )
    if not config_file.is_file() or not (directory / WEIGHTS_FILE).is_file():
        runs = [name for name in ("best", "last") if (directory / name / CONFIG_FILE).is_file()]
        hint = f"; it is a training run: give {directory / runs[0]}" if runs else ""
        raise InputError(f"{directory}: not a SAC checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE}){hint}")
    try:
        meta = json.loads(config_file.read_text())
        _ = meta["model"], meta["weights_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{config_file}: invalid SAC checkpoint config ({error})") from None
    return meta
