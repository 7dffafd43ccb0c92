"""SAM backbones: named presets, Meta's official checkpoints, Hugging Face folders and hub ids.

Every source ends up as a :class:`transformers.SamModel`. A different input size than the checkpoint's (256 or 512
instead of 1024, for speed) is handled by resizing the absolute position embedding and the relative position tables
of the global-attention layers, with the prompt encoder's image size kept equal to the vision encoder's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from sac.download import OFFICIAL_CHECKPOINTS, checkpoint_path
from sac.io import InputError, check_state_dict, first_line

# Meta's configurations (segment_anything/build_sam.py) and small from-scratch ones sized for CPU training.
# Each entry: vision-encoder settings, then the prompt/decoder width and decoder MLP width.
PRESETS: dict[str, dict] = {
    "vit_b": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=(2, 5, 8, 11)
    ),
    "vit_l": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    "tiny": dict(
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        global_attn_indexes=(1, 3),
        window_size=8,
        output_channels=64,
        decoder_mlp_dim=256,
        image_size=256,
    ),
    "small": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        global_attn_indexes=(2, 5),
        window_size=8,
        output_channels=128,
        decoder_mlp_dim=512,
        image_size=256,
    ),
}


def sam_config(
    *,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    global_attn_indexes: tuple[int, ...],
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    output_channels: int = 256,
    mlp_dim: int | None = None,
    decoder_mlp_dim: int = 2048,
    decoder_layers: int = 2,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int | None = None,
) -> SamConfig:
    """A consistent SamConfig: prompt-encoder image size and widths follow the vision encoder."""
    if image_size % patch_size:
        raise InputError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    vision = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        global_attn_indexes=list(global_attn_indexes),
        image_size=image_size,
        patch_size=patch_size,
        window_size=window_size,
        output_channels=output_channels,
        num_pos_feats=output_channels // 2,
        mlp_dim=mlp_dim,
        # transformers' default (1e-10) assumes pretrained weights overwrite it; from scratch it leaves the
        # encoder's output at ~1e-20, a dead network. Loaded checkpoints replace these values anyway.
        initializer_range=0.02,
    )
    prompt = dict(hidden_size=output_channels, image_size=image_size, patch_size=patch_size)
    decoder = dict(
        hidden_size=output_channels,
        mlp_dim=decoder_mlp_dim,
        num_hidden_layers=decoder_layers,
        num_attention_heads=decoder_heads,
        iou_head_hidden_dim=iou_head_hidden_dim or output_channels,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


SCRATCH = "scratch:"  # prefix of a randomly initialised official architecture, e.g. scratch:vit_b
RANDOM_PRESETS = ("tiny", "small")  # sized for CPU training, only ever from scratch


def is_random(backbone: str) -> bool:
    """Whether a backbone name means a randomly initialised encoder (whose weights a checkpoint must keep)."""
    return backbone in RANDOM_PRESETS or (
        backbone.startswith(SCRATCH) and backbone.removeprefix(SCRATCH) in PRESETS
    )


def backbone_names() -> list[str]:
    """Every name ``--backbone`` takes: the random presets, the official checkpoints and their scratch twins."""
    return [*RANDOM_PRESETS, *OFFICIAL_CHECKPOINTS, *(SCRATCH + name for name in OFFICIAL_CHECKPOINTS)]


def preset_config(name: str, image_size: int | None = None) -> SamConfig:
    """The SamConfig of a named preset, optionally at another input size."""
    if name not in PRESETS:
        raise InputError(f"unknown backbone preset {name!r}; known presets: {', '.join(PRESETS)}")
    settings = dict(PRESETS[name])
    if image_size is not None:
        settings["image_size"] = image_size
    return sam_config(**settings)


def with_image_size(config: SamConfig, image_size: int) -> SamConfig:
    """A copy of ``config`` whose vision and prompt encoders take ``image_size`` inputs."""
    data = config.to_dict()
    data["vision_config"]["image_size"] = image_size
    data["prompt_encoder_config"]["image_size"] = image_size
    data["prompt_encoder_config"].pop("image_embedding_size", None)  # derived; recomputed from image_size
    for key in ("model_type", "transformers_version"):
        data.pop(key, None)
    return SamConfig(**data)


def resize_state_dict(state_dict: dict[str, torch.Tensor], config: SamConfig) -> dict[str, torch.Tensor]:
    """Interpolate position embeddings and global relative-position tables to ``config``'s input size."""
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    resized = dict(state_dict)
    pos = state_dict.get("vision_encoder.pos_embed")
    if pos is not None and pos.shape[1] != grid:
        resized["vision_encoder.pos_embed"] = F.interpolate(
            pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False
        ).permute(0, 2, 3, 1)
    for index in vision.global_attn_indexes:
        for axis in ("h", "w"):
            key = f"vision_encoder.layers.{index}.attn.rel_pos_{axis}"
            table = state_dict.get(key)
            if table is not None and table.shape[0] != 2 * grid - 1:
                resized[key] = F.interpolate(
                    table.T[None].float(), size=2 * grid - 1, mode="linear", align_corners=False
                )[0].T
    return resized


def load_into(config: SamConfig, state_dict: dict[str, torch.Tensor], source: str) -> SamModel:
    """Build a SamModel for ``config`` and load ``state_dict`` strictly, resizing for the input size."""
    model = SamModel(config)
    state_dict = resize_state_dict(state_dict, config)
    check_state_dict(state_dict, model.state_dict(), source)
    model.load_state_dict(state_dict, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Meta's official segment_anything layout -> transformers layout

_LN2D = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_MASK_DOWNSCALING = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"image_encoder\.pos_embed", lambda m: "vision_encoder.pos_embed"),
    (r"image_encoder\.patch_embed\.proj\.(\w+)", lambda m: f"vision_encoder.patch_embed.projection.{m[1]}"),
    (
        r"image_encoder\.blocks\.(\d+)\.norm(\d)\.(\w+)",
        lambda m: f"vision_encoder.layers.{m[1]}.layer_norm{m[2]}.{m[3]}",
    ),
    (
        r"image_encoder\.blocks\.(\d+)\.(attn\.\w+(?:\.\w+)?|mlp\.lin\d\.\w+)",
        lambda m: f"vision_encoder.layers.{m[1]}.{m[2]}",
    ),
    (r"image_encoder\.neck\.(\d)\.(\w+)", lambda m: f"vision_encoder.neck.{_LN2D[m[1]]}.{m[2]}"),
    (
        r"prompt_encoder\.point_embeddings\.(\d)\.weight",
        lambda m: f"prompt_encoder.point_embed.{m[1]}.weight",
    ),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", lambda m: f"prompt_encoder.{m[1]}.weight"),
    (
        r"prompt_encoder\.mask_downscaling\.(\d)\.(\w+)",
        lambda m: f"prompt_encoder.mask_embed.{_MASK_DOWNSCALING[m[1]]}.{m[2]}",
    ),
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", lambda m: f"mask_decoder.{m[1]}.weight"),
    (r"mask_decoder\.output_upscaling\.(\d)\.(\w+)", lambda m: f"mask_decoder.{_UPSCALING[m[1]]}.{m[2]}"),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.(\w+)",
        lambda m: f"mask_decoder.transformer.layers.{m[1]}.layer_norm{m[2]}.{m[3]}",
    ),
    (
        r"mask_decoder\.transformer\.norm_final_attn\.(\w+)",
        lambda m: f"mask_decoder.transformer.layer_norm_final_attn.{m[1]}",
    ),
    (
        r"mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        r"\.\w+_proj\.\w+|layers\.\d+\.mlp\.lin\d\.\w+|final_attn_token_to_image\.\w+_proj\.\w+)",
        lambda m: f"mask_decoder.transformer.{m[1]}",
    ),
]


def _convert_mlp_key(key: str, num_layers: int) -> str | None:
    """Meta's MLP heads are ``layers.0..n-1``; transformers names them proj_in, layers.0.., proj_out."""
    match = re.fullmatch(
        r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(\w+)", key
    )
    if match is None:
        return None
    index = int(match[2])
    name = "proj_in" if index == 0 else "proj_out" if index == num_layers - 1 else f"layers.{index - 1}"
    return f"mask_decoder.{match[1]}.{name}.{match[3]}"


def convert_official_state_dict(
    official: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map every key of a segment_anything checkpoint to transformers' SamModel; fail on any key left over."""
    iou_depth = 1 + max(
        (
            int(m[1])
            for k in official
            if (m := re.fullmatch(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight", k))
        ),
        default=0,
    )
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in official.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        if key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            converted["prompt_encoder.shared_embedding.positional_embedding"] = value
            converted["shared_image_embedding.positional_embedding"] = value
            continue
        new_key = _convert_mlp_key(key, iou_depth)
        if new_key is None:
            new_key = next((fn(m) for pattern, fn in _RULES if (m := re.fullmatch(pattern, key))), None)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = value
    if unmapped:
        raise InputError(
            f"{source}: {len(unmapped)} checkpoint keys have no SAM equivalent, e.g. {unmapped[:3]}"
        )
    return converted


def config_from_official(official: dict[str, torch.Tensor], source: str = "checkpoint") -> SamConfig:
    """Read the architecture off the tensor shapes, so any official-layout checkpoint (ViT-B/L/H, MedSAM) loads."""
    try:
        patch = official["image_encoder.patch_embed.proj.weight"]
        pos = official["image_encoder.pos_embed"]
        depth = 1 + max(int(k.split(".")[2]) for k in official if k.startswith("image_encoder.blocks."))
        rel = [official[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
        decoder_mlp = official["mask_decoder.transformer.layers.0.mlp.lin1.weight"]
        decoder_layers = 1 + max(
            int(k.split(".")[3]) for k in official if k.startswith("mask_decoder.transformer.layers.")
        )
        iou_hidden = official["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
        neck = official["image_encoder.neck.0.weight"].shape[0]
        encoder_mlp = official["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise InputError(f"{source}: not a segment_anything SAM checkpoint (missing {error})") from None
    hidden, head_dim = patch.shape[0], rel[0].shape[1]
    grid = pos.shape[1]
    global_layers = tuple(i for i, table in enumerate(rel) if table.shape[0] == 2 * grid - 1)
    local = [table.shape[0] for i, table in enumerate(rel) if i not in global_layers]
    return sam_config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=hidden // head_dim,
        global_attn_indexes=global_layers,
        image_size=grid * patch.shape[-1],
        patch_size=patch.shape[-1],
        window_size=(local[0] + 1) // 2 if local else 14,
        output_channels=neck,
        mlp_dim=encoder_mlp,
        decoder_mlp_dim=decoder_mlp.shape[0],
        decoder_layers=decoder_layers,
        iou_head_hidden_dim=iou_hidden,
    )


def read_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` checkpoint safely (tensors only), unwrapping ``{"model": ...}``-style containers."""
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint file is empty")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    # torch's unpickler fails on foreign bytes in many ways (a KeyError on a text file, ...)
    except Exception as error:
        raise InputError(
            f"{path}: cannot read checkpoint (truncated or not a PyTorch file): {first_line(error, 160)}"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: not a state dict of tensors (got {type(data).__name__})")
    return data


def create_sam(source: str | Path = "tiny", image_size: int | None = None) -> SamModel:
    """Build a SAM from a name, an official ``.pth``, a ``save_pretrained`` folder or a hub id.

    ``vit_b``, ``vit_l`` and ``vit_h`` are Meta's weights from the cache (``sac weights fetch``). Randomly
    initialised architectures have explicit names (train them with the ``full`` encoder mode): the CPU-sized
    ``tiny`` and ``small``, or ``scratch:vit_b`` and the like. ``image_size`` resizes position embeddings so the
    encoder runs at that input size.
    """
    source_str = str(source)
    if is_random(source_str):
        return SamModel(preset_config(source_str.removeprefix(SCRATCH), image_size))
    if source_str in OFFICIAL_CHECKPOINTS:  # the official names mean the official weights
        cached = checkpoint_path(source_str)
        if not cached.is_file():
            raise InputError(
                f"{source_str}: the official weights are not in {cached.parent}; run `sac weights fetch "
                f"{source_str}` (or use `{SCRATCH}{source_str}` for a randomly initialised {source_str})"
            )
        source_str = str(cached)
    path = Path(source_str).expanduser()
    if path.suffix in (".pth", ".pt", ".bin") or path.is_file():
        official = read_official_checkpoint(path)
        if any(k.startswith("vision_encoder.") for k in official):
            raise InputError(
                f"{path}: transformers-layout weights; pass the folder made by save_pretrained instead"
            )
        config = config_from_official(official, str(path))
        if image_size is not None:
            config = with_image_size(config, image_size)
        return load_into(config, convert_official_state_dict(official, str(path)), str(path))
    if path.is_dir() and not (path / "config.json").is_file():
        raise InputError(f"{path}: folder has no config.json (expected a save_pretrained SAM folder)")
    if not path.is_dir() and (source_str.startswith((".", "/", "~")) or source_str.count("/") != 1):
        raise InputError(
            f"{source_str!r} is neither a backbone name ({', '.join(backbone_names())}), an existing file or "
            "folder, nor a hub id"
        )
    try:
        pretrained = SamModel.from_pretrained(source_str)
    except OSError as error:
        raise InputError(
            f"{source_str}: cannot load SAM weights (no network or not a SAM repository?): {first_line(error)}"
        ) from None
    if image_size is None or image_size == pretrained.config.vision_config.image_size:
        return pretrained
    return load_into(with_image_size(pretrained.config, image_size), pretrained.state_dict(), source_str)


def count_parameters(module: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, as reported in logs and model cards."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
