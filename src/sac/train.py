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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm

from sac.backbone import PRESETS, count_parameters
from sac.data import CropDataset, NucleiSample, load_dataset
from sac.io import InputError, atomic_write
from sac.metrics import dice
from sac.model import SACConfig, SACOutput, SegmentAnyCell, default_model_path, read_checkpoint_meta

STATE_FILE = "state.pt"
LOG_FILE = "log.csv"
LOG_FIELDS = ("epoch", "step", "train_loss", "val_dice", "lr", "elapsed_s")


@dataclass
class TrainConfig:
    """Saved as ``train_config.json`` in the run folder; ``--resume`` reads it back."""

    datasets: list[str] = field(default_factory=lambda: ["monuseg"])
    data_root: str | None = None
    out: str = "runs/sac"
    backbone: str = "tiny"
    encoder_mode: str | None = None  # None: "full" for from-scratch presets, "lora" for pretrained weights
    image_size: int = 256
    lora_rank: int = 4
    generator_channels: int = 8
    generator_depth: int = 4
    num_points: int = 8
    num_negative: int | None = None  # None: as many negative points as positive ones
    batch_size: int = 4
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    val_fraction: float = 0.1
    max_val_images: int = 16
    checkpoint_every: int = 200
    init: str | None = None  # start from this SAC checkpoint folder ("default": the shipped model)
    init_sha256: str | None = None  # filled in from the init checkpoint when the run starts

    def model_config(self) -> SACConfig:
        mode = self.encoder_mode or ("full" if self.backbone in PRESETS else "lora")
        return SACConfig(
            backbone=self.backbone,
            image_size=self.image_size,
            encoder_mode=mode,
            lora_rank=self.lora_rank,
            lora_alpha=float(self.lora_rank),
            generator_channels=self.generator_channels,
            generator_depth=self.generator_depth,
            num_positive=self.num_points,
            num_negative=self.num_points if self.num_negative is None else self.num_negative,
        )


ARCHITECTURE_FIELDS = (
    "backbone",
    "image_size",
    "encoder_mode",
    "lora_rank",
    "generator_channels",
    "generator_depth",
)


def init_checkpoint(init: str) -> Path:
    """The checkpoint folder ``TrainConfig.init`` names; "default" is the model shipped with the package."""
    return default_model_path() if init == "default" else Path(init)


def adopt_init(config: TrainConfig) -> TrainConfig:
    """Take the architecture from the ``init`` checkpoint, so its weights fit, and record which weights they were."""
    meta = read_checkpoint_meta(init_checkpoint(config.init))
    model = SACConfig.from_dict(meta["model"])
    architecture = {name: getattr(model, name) for name in ARCHITECTURE_FIELDS}
    return dataclasses.replace(config, init_sha256=meta["weights_sha256"], **architecture)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus per-sample soft Dice: BCE for calibration, Dice for the foreground/background imbalance.

    Both are means over samples, so a batch split across data-parallel processes gives the same loss.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    soft_dice = (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return bce + 1 - soft_dice.mean()


def sac_loss(output: SACOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Dice + BCE on each output: final map, SAM's low-resolution mask, generator map; BCE on the centre map."""
    mask = batch["mask"]
    low_res = F.adaptive_avg_pool2d(mask, output.sam_logits.shape[-2:])
    parts = {
        "final": dice_bce(output.logits, mask),
        "sam": dice_bce(output.sam_logits, low_res),
        "generator": dice_bce(output.generator_logits[:, :1], mask),
        "centre": F.binary_cross_entropy_with_logits(output.generator_logits[:, 1:], batch["distance"]),
    }
    total = parts["final"] + 0.5 * parts["sam"] + parts["generator"] + parts["centre"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def split_validation(samples: list[NucleiSample], fraction: float, seed: int):
    """Hold out a deterministic fraction of each dataset's training images for validation (never the test set)."""
    order = np.random.default_rng(seed).permutation(len(samples))
    count = min(len(samples) - 1, max(1, round(fraction * len(samples)))) if fraction > 0 else 0
    held = set(order[:count].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [
        s for i, s in enumerate(samples) if i in held
    ]


def validation_dice(model: SegmentAnyCell, samples: list[NucleiSample]) -> float:
    scores = [dice(model.predict(s.image), s.labels) for s in samples]
    return float(np.mean(scores)) if scores else float("nan")


def _lr_factor(step: int, total: int, warmup: int) -> float:
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
        self.model = SegmentAnyCell(config.model_config())
        if starting:
            self.model.load_weights(init_checkpoint(config.init))
        self.forward = (
            DistributedDataParallel(self.model, find_unused_parameters=True) if self.world > 1 else self.model
        )
        self.dataset = CropDataset(train, crop_size=config.image_size, augment=True, seed=config.seed)
        self.val = val[: config.max_val_images]
        self.steps_per_epoch = max(1, len(self.dataset) // config.batch_size)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, self.total_steps, config.warmup_steps)
        )
        self.step = 0
        self.best_dice = -1.0
        self.epoch_losses: list[float] = []
        self.elapsed = 0.0

    # --------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "model": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best_dice": self.best_dice,
            "epoch_losses": self.epoch_losses,
            "elapsed": self.elapsed,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def save_state(self) -> None:
        with atomic_write(self.out / STATE_FILE) as tmp:
            torch.save(self.state(), tmp)
        self.model.save(self.out / "last", metrics={"step": self.step, "best_val_dice": self.best_dice})

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
        self.step, self.best_dice = state["step"], state["best_dice"]
        self.epoch_losses, self.elapsed = state["epoch_losses"], state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self._truncate_log(self.step // self.steps_per_epoch)

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
        self.model.point_offset = self.rank * (self.config.batch_size // self.world)
        output = self.forward(batch["image"])
        loss, _ = sac_loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
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
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            disable=not (progress and lead),
            unit="step",
        )
        started = time.perf_counter() - self.elapsed
        while self.step < self.total_steps:
            self.epoch_losses.append(self.train_step(self.batch(self.step)))
            self.elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{self.epoch_losses[-1]:.3f}")
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
        return {"step": self.step, "best_val_dice": self.best_dice, "elapsed_s": self.elapsed}

    def end_epoch(self) -> None:
        val_dice = validation_dice(self.model, self.val)
        epoch = math.ceil(self.step / self.steps_per_epoch)
        row = {
            "epoch": epoch,
            "step": self.step,
            "train_loss": float(np.mean(self.epoch_losses)),
            "val_dice": val_dice,
            "lr": self.scheduler.get_last_lr()[0],
            "elapsed_s": round(self.elapsed, 1),
        }
        self._append_log(row)
        tqdm.write(f"epoch {epoch}: loss {row['train_loss']:.4f}, val Dice {val_dice:.4f}")
        if not math.isnan(val_dice) and val_dice > self.best_dice:
            self.best_dice = val_dice
            self.model.save(self.out / "best", metrics={"step": self.step, "val_dice": val_dice})
        plot_log(self.out / LOG_FILE, self.out / "curve.png")

    def _append_log(self, row: dict) -> None:
        write_log(self.out / LOG_FILE, [*read_log(self.out / LOG_FILE), row])

    def _truncate_log(self, completed_epochs: int) -> None:
        rows = read_log(self.out / LOG_FILE)
        write_log(self.out / LOG_FILE, [r for r in rows if int(r["epoch"]) <= completed_epochs])


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
    """Loss and validation Dice per epoch, for a glance at convergence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)
    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [float(r["val_dice"]) for r in rows], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    with atomic_write(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def load_training_data(config: TrainConfig) -> tuple[list[NucleiSample], list[NucleiSample]]:
    train, val = [], []
    for name in config.datasets:
        samples = load_dataset(name, config.data_root, "train")
        fitted, held = split_validation(samples, config.val_fraction, config.seed)
        train += fitted
        val += held
    return train, val


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Start a run in ``config.out`` (refusing to overwrite one) and train it."""
    out = Path(config.out)
    if (out / STATE_FILE).exists():
        raise InputError(f"{out}: a run already exists there; use --resume {out} or another --out")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, *load_training_data(config))
    with atomic_write(out / "train_config.json") as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(trainer.config), indent=2))
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
    config = TrainConfig(**json.loads(config_file.read_text()))
    config.out = str(run_dir)
    if max_steps is not None:
        config.max_steps = max_steps
        with atomic_write(config_file) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2))
    trainer = Trainer(config, *load_training_data(config))
    if (run_dir / STATE_FILE).exists():
        trainer.load_state()
    return _finish(trainer.run(progress))
