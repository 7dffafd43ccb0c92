"""SegmentAnyCell: the auto-prompt generator, SAM with LoRA, and a fine-tuned mask decoder, as one module.

The generator predicts a nuclei map; points sampled from it prompt SAM, whose low-resolution mask is upsampled and
refined at full resolution by a small fusion head that also sees the generator's features (SAM's masks are 1/4 of
the input size, too coarse for 10-pixel nuclei). Large images are tiled, never resized.
"""

from __future__ import annotations

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
from sac.backbone import PRESETS, count_parameters, create_sam
from sac.io import InputError, atomic_write, to_rgb_uint8
from sac.lora import configure_encoder, merge_lora
from sac.prompts import PromptGenerator, combine_points, sample_point_prompts
from sac.tiling import DEFAULT_OVERLAP, predict_tiled
from sac.weights import sha256sum

SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)
MAP_NAMES = ("nuclei", "generator", "centre", "sam")  # the channels predict_maps returns, in order
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class SACConfig:
    """Everything needed to rebuild the architecture; saved as ``config.json`` beside every checkpoint."""

    backbone: str = "tiny"
    image_size: int = 256
    encoder_mode: str = "full"
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "v")
    generator_channels: int = 8
    generator_depth: int = 4
    num_positive: int = 8
    num_negative: int = 8
    point_threshold: float = 0.5
    mpp: float | None = None  # µm per pixel of the training images the model works at; None: unknown
    instance_window: int = 64  # full-resolution window refined around a click (pixels of the model's input)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> SACConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown model config keys {sorted(unknown)}")
        values = dict(data)
        if "lora_targets" in values:
            values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)


class SACOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1, H, W) final nuclei logits at input resolution
    sam_logits: torch.Tensor  # (B, 1, H/4, W/4) SAM mask decoder logits
    sam_upsampled: torch.Tensor  # (B, 1, H, W) the same, at input resolution
    generator_logits: torch.Tensor  # (B, 2, H, W) generator foreground and centre logits
    points: torch.Tensor  # (B, 1, N, 2) the prompts used
    point_labels: torch.Tensor  # (B, 1, N)
    image_embeddings: torch.Tensor  # (B, C, H/16, W/16) SAM encoder output, reused by instance prompts
    features: torch.Tensor  # (B, F, H, W) generator features, reused by the fusion head of instance prompts


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


class SegmentAnyCell(nn.Module):
    """The SAC model. ``forward`` trains on tiles; ``predict`` segments whole images of any size."""

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
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.point_seed = 0
        self.point_offset = 0  # global index of this batch's first sample (set by data-parallel training)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        generate_points: bool = True,
    ) -> SACOutput:
        """``images`` (B, 3, S, S) in [0, 1] with S = ``config.image_size``.

        Given ``points``/``point_labels`` ((B, 1, N, 2) as (x, y), (B, 1, N)), they are added to the generated
        prompts, or used alone with ``generate_points=False``.
        """
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise InputError(f"model expects {size}x{size} tiles, got {tuple(images.shape[-2:])}")
        generated = self.generator(images)
        prompts, prompt_labels = self._prompts(generated.logits, points, point_labels, generate_points)
        # not SamModel.get_image_embeddings: it runs under no_grad, which would freeze the encoder (LoRA too)
        embeddings = self.sam.vision_encoder((images - self.pixel_mean) / self.pixel_std)[0]
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
        )

    def prompt_instances(
        self,
        output: SACOutput,
        image_index: torch.Tensor,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> InstanceOutput:
        """One nucleus per prompt: SAM's first multimask token answers (points, labels), the fusion head refines it.

        ``image_index`` (N,) picks each prompt's tile in ``output``; ``points`` (N, K, 2) as (x, y) with
        ``point_labels`` (N, K) (1 positive, 0 negative, -1 padding); the first point must be the positive click,
        which centres the refinement window. ``mask_input`` (N, 1, H/4, W/4) is a previous answer's
        ``sam_logits``, as in SAM's iterative correction. The semantic mask uses token 0; instances use their own
        token so that "all nuclei" and "this nucleus" are different questions for the decoder.
        """
        answer = self.sam(
            image_embeddings=output.image_embeddings[image_index],
            input_points=points[:, None],
            input_labels=point_labels[:, None],
            input_masks=mask_input,
            multimask_output=True,
        )
        sam_logits = answer.pred_masks[:, 0, :1]
        window = self.config.instance_window
        origins = points[:, 0].round().long().flip(-1) - window // 2  # (row, column)
        # the fusion head sees what it sees for the semantic mask, cut to the window around the click
        context = F.pad(torch.cat([output.generator_logits, output.features], dim=1), (window,) * 4)
        context = torch.stack(
            [
                context[image, :, row + window : row + 2 * window, col + window : col + 2 * window]
                for image, (row, col) in zip(image_index.tolist(), origins.tolist(), strict=True)
            ]
        )
        sam_up = _upsampled_windows(sam_logits, origins, window, self.config.image_size)
        logits = self.fusion(sam_up, context[:, :2], context[:, 2:])
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

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict_maps(
        self,
        image: np.ndarray,
        points: tuple[np.ndarray | None, np.ndarray | None] | None = None,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int = 4,
        generate_points: bool = True,
    ) -> np.ndarray:
        """(4, H, W) float32 maps for one image, named by ``MAP_NAMES``: final nuclei probability, generator
        probability, generator centre map, and SAM's own (upsampled) mask probability.

        ``points`` = (positive, negative) arrays of (x, y) image coordinates, given by hand; each tile receives
        those falling inside it, in addition to its generated points (or alone, with ``generate_points=False``).
        """
        rgb = to_rgb_uint8(image)
        tile = tile or self.config.image_size
        size = self.config.image_size
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()

        use_manual = points is not None or not generate_points
        given = points if points is not None else (None, None)

        def run(batch: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
            tensor = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)
            if tile != size:
                tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
            manual = (
                [self._tile_points(given, origin, tile, size) for origin in origins] if use_manual else None
            )
            outputs = (
                [
                    self._forward_with_manual(tensor[i : i + 1], manual[i], generate_points)
                    for i in range(len(tensor))
                ]
                if manual is not None
                else [self(tensor)]
            )
            maps = torch.cat([self._maps(o) for o in outputs])
            if tile != size:
                maps = F.interpolate(maps, size=(tile, tile), mode="bilinear", align_corners=False)
            return maps.float().cpu().numpy()

        try:
            return predict_tiled(run, rgb, tile, overlap, batch_size)
        finally:
            self.train(was_training)

    @staticmethod
    def _maps(output: SACOutput) -> torch.Tensor:
        return torch.sigmoid(torch.cat([output.logits, output.generator_logits, output.sam_upsampled], dim=1))

    @staticmethod
    def _tile_points(points, origin, tile, size):
        """Manual points inside one tile, in the tile's model-input frame."""
        scale = size / tile
        chosen = []
        for label, coords in zip((1, 0), points, strict=True):
            if coords is None or len(coords) == 0:
                continue
            coords = np.asarray(coords, np.float32).reshape(-1, 2) - np.array(
                [origin[1], origin[0]], np.float32
            )
            inside = coords[(coords >= 0).all(1) & (coords < tile).all(1)] * scale
            chosen += [(xy, label) for xy in inside]
        return chosen

    def _forward_with_manual(self, tensor: torch.Tensor, manual: list, generate_points: bool) -> SACOutput:
        if not manual and generate_points:
            return self(tensor)
        if not manual:  # no prompt at all in this tile: SAM still needs one, a background point
            manual = [(np.zeros(2, np.float32), 0)]
        positive = [xy for xy, label in manual if label == 1]
        negative = [xy for xy, label in manual if label == 0]
        empty_points = torch.zeros(1, 1, 0, 2)
        empty_labels = torch.zeros(1, 1, 0, dtype=torch.long)
        points, labels = combine_points(empty_points, empty_labels, positive or None, negative or None)
        return self(tensor, points.to(tensor.device), labels.to(tensor.device), generate_points)

    def predict(
        self,
        image: np.ndarray,
        points: tuple[np.ndarray | None, np.ndarray | None] | None = None,
        instances: bool | str = False,
        threshold: float = 0.5,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int = 4,
    ) -> np.ndarray:
        """Segment one image (H, W) or (H, W, C) of any dtype.

        Returns a boolean nuclei mask, or with ``instances`` an int32 label image (``True``/``"fast"``: watershed
        on the probability seeded by the generator's centres; ``"sam"``: one SAM prompt per nucleus).
        """
        from sac.inference import segment_image

        mask, labels = segment_image(self, image, points, instances, threshold, tile, overlap, batch_size)
        return mask if labels is None else labels

    # ------------------------------------------------------------------ persistence
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: generator, fusion, decoder, prompt encoder, and LoRA or the whole encoder."""
        from_scratch = self.config.backbone in PRESETS  # a random base encoder cannot be rebuilt: keep it
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
        """Load a checkpoint folder (or the model shipped with the package when ``path`` is None)."""
        directory = Path(path) if path is not None else default_model_path()
        meta = read_checkpoint_meta(directory)
        model = cls(SACConfig.from_dict(meta["model"]))
        model.load_weights(directory, meta)
        return model.to(device).eval()

    def load_weights(self, directory: str | Path, meta: dict | None = None) -> None:
        """Load a checkpoint's weights into this model, whose architecture must match the checkpoint's.

        ``meta`` is the checkpoint's config.json when the caller has already read it. Sets ``self.meta``.
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
        if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
            raise InputError(f"{weights}: weights do not match the architecture in config.json")
        self.load_state_dict(tensors, strict=False)
        self.meta = meta

    def prepare_for_inference(self) -> SegmentAnyCell:
        """Merge LoRA into the encoder, use channels-last convolutions, eval mode: the fastest form to predict."""
        merge_lora(self)
        self.generator.to(memory_format=torch.channels_last)
        self.fusion.to(memory_format=torch.channels_last)
        return self.eval()


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


def default_model_path() -> Path:
    return Path(str(resources.files("sac") / "pretrained"))


def read_checkpoint_meta(directory: Path) -> dict:
    config_file = directory / CONFIG_FILE
    if not config_file.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise InputError(f"{directory}: not a SAC checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(config_file.read_text())
        _ = meta["model"], meta["weights_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{config_file}: invalid SAC checkpoint config ({error})") from None
    return meta
