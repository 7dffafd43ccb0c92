"""Low-rank adapters on the query and value slices of SAM's fused ``qkv`` projections.

``W = W0 + (alpha / r) · B·A`` per slice, with ``B`` initialised to zero so an adapted encoder starts out identical
to the pretrained one. Adapters are merged into ``W0`` for inference (no extra cost); checkpoints save them with
the model's other trained weights (``SegmentAnyCell.save``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sac.io import InputError

ENCODER_MODES = ("frozen", "lora", "full")
_SLICES = {"q": 0, "k": 1, "v": 2}


class LoRAQKV(nn.Module):
    """A fused qkv ``nn.Linear`` plus low-rank updates on some of its q/k/v output slices."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, targets=("q", "v")):
        super().__init__()
        if rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {rank}")
        unknown = set(targets) - set(_SLICES)
        if unknown:
            raise InputError(f"unknown LoRA targets {sorted(unknown)}; use a subset of q, k, v")
        self.base = base
        self.dim = base.in_features
        self.targets = tuple(t for t in _SLICES if t in targets)
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.ParameterDict({t: nn.Parameter(torch.empty(rank, self.dim)) for t in self.targets})
        self.lora_b = nn.ParameterDict({t: nn.Parameter(torch.zeros(self.dim, rank)) for t in self.targets})
        for weight in self.lora_a.values():
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The full (3·dim, dim) update that merging adds to the base weight."""
        blocks = [
            self.lora_b[t] @ self.lora_a[t]
            if t in self.targets
            else self.base.weight.new_zeros(self.dim, self.dim)
            for t in _SLICES
        ]
        return torch.cat(blocks, dim=0) * self.scaling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.base(hidden)
        if self.merged:
            return out
        x = self.dropout(hidden)
        updates = [
            (x @ self.lora_a[t].T @ self.lora_b[t].T) * self.scaling if t in self.targets else None
            for t in _SLICES
        ]
        zeros = out.new_zeros(*out.shape[:-1], self.dim)
        return out + torch.cat([u if u is not None else zeros for u in updates], dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True


def lora_layers(model: nn.Module) -> list[LoRAQKV]:
    """The LoRA-wrapped projections of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRAQKV)]


def apply_lora(
    vision_encoder: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets=("q", "v"),
) -> list[LoRAQKV]:
    """Wrap every attention layer's ``qkv`` of a SAM vision encoder; returns the adapters in layer order."""
    if lora_layers(vision_encoder):
        raise InputError("the encoder already has LoRA adapters")
    adapters = []
    for layer in vision_encoder.layers:
        adapter = LoRAQKV(layer.attn.qkv, rank, alpha if alpha is not None else float(rank), dropout, targets)
        layer.attn.qkv = adapter
        adapters.append(adapter)
    return adapters


def configure_encoder(
    vision_encoder: nn.Module,
    mode: str,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets=("q", "v"),
) -> None:
    """Set which encoder parameters train: none (``frozen``), LoRA only (``lora``, the paper), or all (``full``)."""
    if mode not in ENCODER_MODES:
        raise InputError(f"unknown encoder mode {mode!r}; choose one of {', '.join(ENCODER_MODES)}")
    if mode == "lora":
        apply_lora(vision_encoder, rank, alpha, dropout, targets)
    for name, param in vision_encoder.named_parameters():
        param.requires_grad = mode == "full" or (mode == "lora" and ".lora_" in name)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight, so inference pays nothing for LoRA."""
    for adapter in lora_layers(model):
        adapter.merge()
