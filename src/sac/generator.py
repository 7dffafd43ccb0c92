"""The auto-prompt generator: a light U-Net whose nuclei and centre maps supply SAM's point prompts.

Its last full-resolution features also feed the segmenter's fusion head, which refines SAM's quarter-resolution
masks at full resolution.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sac.io import InputError

# ImageNet statistics: what SAM's encoder was trained with, and the generator's input normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GeneratorOutput(NamedTuple):
    """Channel 0 of ``logits`` is the nuclei foreground, channel 1 the normalised distance-to-edge map."""

    logits: torch.Tensor
    features: torch.Tensor


class ConvBlock(nn.Module):
    """Two conv3x3 -> GroupNorm -> GELU layers; GroupNorm because training batches hold only 2-8 images."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = math.gcd(8, out_channels)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PromptGenerator(nn.Module):
    """A light U-Net whose coarse nuclei map supplies SAM's point prompts.

    Takes ``(B, C, H, W)`` images in [0, 1] and normalises them itself with fixed ImageNet statistics (their
    grey average when ``C != 3``). Any ``H, W`` works: sizes that are not multiples of ``2**depth`` are
    edge-padded and the outputs cropped back. ``features`` is the last full-resolution decoder map, reused
    by the segmenter's fusion head.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        if min(in_channels, base_channels, depth) < 1:
            raise InputError("PromptGenerator needs in_channels, base_channels and depth of at least 1")
        self.in_channels = in_channels
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out)
            for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(
            ConvBlock(widths[level + 1] + widths[level], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(base_channels, 2, kernel_size=1)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if in_channels != 3:
            mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
        self.register_buffer("pixel_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        x = (x - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        features = x[..., :height, :width]
        return GeneratorOutput(self.head(features), features)
