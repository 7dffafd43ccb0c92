import dataclasses
import io
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.segmentation import expand_labels
from skimage.transform import rescale

from conftest import synthetic_nuclei
from sac.data import NucleiSample, default_data_root, median_nucleus_area, sample_labels
from sac.data import sample as sample_image
from sac.io import InputError
from sac.model import SACConfig, SegmentAnyCell
from sac.segmenter import Segmenter
from sac.train import (
    TrainConfig,
    Trainer,
    _lr_factor,
    contact_map,
    hv_loss,
    hv_targets,
    outlined_nucleus_area,
    read_log,
    resume,
    sac_loss,
    split_validation,
    train,
)


def tiny_config(out, **overrides) -> TrainConfig:
    settings = dict(
        datasets=["folder"],
        out=str(out),
        backbone="tiny",
        image_size=64,
        generator_channels=4,
        generator_depth=2,
        num_points=2,
        batch_size=2,
        lr=3e-3,
        warmup_steps=2,
        max_steps=6,
        checkpoint_every=3,
        max_val_images=1,
    )
    settings.update(overrides)
    return TrainConfig.from_dict(settings)


def synthetic_samples(count: int = 4) -> list[NucleiSample]:
    return [NucleiSample(f"s{i}", *synthetic_nuclei(96, 10, seed=i)) for i in range(count)]


def test_training_lowers_the_loss(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, max_steps=1000), synthetic_samples(), [])
    fixed = trainer.batch(0)
    losses = [trainer.train_step(fixed) for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_contact_map_marks_only_the_gap_between_touching_nuclei():
    labels = torch.zeros(1, 20, 30, dtype=torch.int64)
    labels[0, 5:15, 2:10] = 1
    labels[0, 5:15, 11:19] = 2  # one background column away from nucleus 1
    labels[0, 5:15, 25:29] = 3  # alone
    contact = contact_map(labels, radius=2)[0, 0]
    assert contact[5:15, 10].all() and contact[:, 20:].sum() == 0
    assert contact[:5].sum() + contact[15:].sum() > 0  # the band reaches round the corners of the gap
    assert not contact[:, :7].any() and not contact[:, 14:].any()  # only near the gap


def test_contact_weight_raises_the_centre_loss_only_where_nuclei_touch(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), synthetic_samples(), [])
    batch = trainer.batch(0)
    assert contact_map(batch["labels"], 2).sum() > 0
    with torch.no_grad():
        output = trainer.model(batch["image"])
    _, plain = sac_loss(output, batch, 0.0, 2)
    _, weighted = sac_loss(output, batch, 4.0, 2)
    _, wider = sac_loss(output, batch, 4.0, 4)
    assert wider["centre"] > weighted["centre"]  # more pixels count as contact
    assert weighted["centre"] > plain["centre"]
    assert {k: v for k, v in weighted.items() if k != "centre"} == {
        k: v for k, v in plain.items() if k != "centre"
    }
    batch["labels"] = (batch["labels"] > 0).long()  # one label: nothing touches
    assert sac_loss(output, batch, 4.0, 2)[1]["centre"] == pytest.approx(plain["centre"])
    with pytest.raises(InputError, match="contact_weight"):
        TrainConfig(contact_weight=-1)
    for bad in ({"max_steps": 0}, {"epochs": 0}, {"batch_size": 2.5}, {"lr": 0}):
        with pytest.raises(InputError, match=f"{next(iter(bad))} must be"):
            TrainConfig(**bad)
    for radius in (0, 2.5):
        with pytest.raises(InputError, match="contact_radius"):
            TrainConfig(contact_radius=radius)


def test_hv_targets_run_from_minus_one_to_one_across_each_nucleus():
    labels = torch.zeros(1, 12, 20, dtype=torch.long)
    labels[0, 2:9, 1:8] = 1
    labels[0, 2:9, 8:15] = 2  # touching the first along columns 7 | 8
    horizontal, vertical = hv_targets(labels)[0]
    np.testing.assert_allclose(horizontal[5, :9], [0, -1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, -1], atol=1e-6)
    np.testing.assert_allclose(
        vertical[:10, 10], [0, 0, -1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 0], atol=1e-6
    )
    assert horizontal[labels[0] == 0].abs().max() == 0 == vertical[labels[0] == 0].abs().max()


def test_hv_loss_is_zero_only_for_the_targets():
    labels = torch.from_numpy(synthetic_nuclei(32, 4)[1]).long()[None]
    target = hv_targets(labels)
    assert hv_loss(target, labels) == 0
    blurred = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1)  # boundaries no longer sharp
    assert 0 < hv_loss(blurred, labels) < hv_loss(blurred, labels, 1 + 5 * contact_map(labels, 2))


def test_a_run_may_add_the_hv_head_to_its_init_checkpoint_and_keeps_its_other_settings(tmp_path):
    samples = synthetic_samples()
    source = tiny_config(
        tmp_path / "source", max_steps=1, mpp=0.5, instance_window=32, objects="glands", min_size=7.0
    )
    Trainer(source, samples, samples[:1]).run(progress=False)
    config = tiny_config(
        tmp_path / "hv",
        init=str(tmp_path / "source" / "last"),
        hv_maps=True,
        hv_head_width=8,
        train_only=["hv_head"],
        min_size=5.0,
    )
    # what the run does not set is the init's: a fine-tuned gland model stays one
    assert (config.model.instance_window, config.model.objects, config.model.min_size) == (32, "glands", 5.0)
    trainer = Trainer(dataclasses.replace(config, max_steps=2), samples, samples[:1])
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    trainer.run(progress=False)
    after = trainer.model.trainable_state_dict()
    # the head is shaped as the run says
    assert trainer.config.model.hv_maps and trainer.model.hv_head.out.in_channels == 8
    assert trainer.config.model.mpp == 0.5  # the init's pixel size, which this run did not set
    assert {k.split(".")[0] for k, v in after.items() if not torch.equal(v, before[k])} == {"hv_head"}


def test_a_run_may_widen_its_inits_generator(tmp_path):
    samples = synthetic_samples()
    Trainer(tiny_config(tmp_path / "source", max_steps=1, generator_channels=8), samples, []).run(
        progress=False
    )
    init = str(tmp_path / "source" / "last")
    trainer = Trainer(tiny_config(tmp_path / "wide", init=init, generator_channels=16), samples, [])
    assert trainer.config.model.generator_channels == 16
    assert trainer.model.generator.head.in_channels == 16
    with pytest.raises(InputError, match="whole factor"):
        Trainer(tiny_config(tmp_path / "odd", init=init, generator_channels=12), samples, [])


def test_a_run_may_show_its_inits_click_head_the_image(tmp_path):
    samples = synthetic_samples()
    Trainer(tiny_config(tmp_path / "source", max_steps=1), samples, []).run(progress=False)
    init = str(tmp_path / "source" / "last")
    config = tiny_config(
        tmp_path / "seeing", init=init, click_head_sees_image=True, train_only=["click_head"]
    )
    trainer = Trainer(dataclasses.replace(config, max_steps=2), samples, [])
    assert trainer.config.model.click_head_sees_image
    weights = trainer.model.click_head.down1.layers[0].weight
    assert weights[:, 6:9].abs().sum() == 0  # the image's weights start at zero
    trainer.run(progress=False)
    assert weights[:, 6:9].abs().sum() > 0  # and learn


def test_a_run_may_widen_its_inits_click_head(tmp_path):
    samples = synthetic_samples()
    Trainer(tiny_config(tmp_path / "source", max_steps=1), samples, []).run(progress=False)
    init = str(tmp_path / "source" / "last")
    config = tiny_config(tmp_path / "wide", init=init, click_head_width=32, train_only=["click_head"])
    trainer = Trainer(dataclasses.replace(config, max_steps=2), samples, [])
    assert trainer.config.model.click_head_width == 32
    assert trainer.model.click_head.out.in_channels == 32
    init_weights = SegmentAnyCell.load(init).trainable_state_dict()
    loaded = trainer.model.trainable_state_dict()
    assert all(torch.equal(v, init_weights[k]) for k, v in loaded.items() if not k.startswith("click_head."))
    first = loaded["click_head.down1.layers.0.weight"]
    torch.testing.assert_close(first[::2], init_weights["click_head.down1.layers.0.weight"])  # copies
    trainer.run(progress=False)
    learnt = trainer.model.click_head.down1.layers[0].weight
    assert not torch.equal(learnt[0], learnt[1])  # the copies learn apart


def test_a_run_may_deepen_its_inits_click_head(tmp_path):
    samples = synthetic_samples()
    Trainer(tiny_config(tmp_path / "source", max_steps=1), samples, []).run(progress=False)
    init = str(tmp_path / "source" / "last")
    config = tiny_config(tmp_path / "deeper", init=init, click_head_deeper=True, train_only=["click_head"])
    trainer = Trainer(dataclasses.replace(config, max_steps=2), samples, [])
    assert trainer.config.model.click_head_deeper
    project = trainer.model.click_head.deeper.project.weight
    assert project.abs().sum() == 0  # the new level starts as a no-op
    trainer.run(progress=False)
    assert project.abs().sum() > 0  # and learns


def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    samples = synthetic_samples()
    straight = Trainer(tiny_config(tmp_path / "a"), samples, samples[:1])
    straight.run(progress=False)

    interrupted = Trainer(tiny_config(tmp_path / "b"), samples, samples[:1])
    original_step = Trainer.train_step

    def crash_after_three(self, batch):
        if self.step == 4:
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(progress=False)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    resumed = Trainer(tiny_config(tmp_path / "b"), samples, samples[:1])
    resumed.load_state()
    assert resumed.step == 3
    resumed.run(progress=False)
    for key, value in straight.model.trainable_state_dict().items():
        torch.testing.assert_close(resumed.model.trainable_state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in read_log(tmp_path / "b" / "log.csv")] == ["6"]


def test_training_progress_in_a_log_is_not_a_line_per_step(tmp_path, monkeypatch):
    log = io.StringIO()  # stderr redirected to a file: the bar writes a line a minute, and its last
    monkeypatch.setattr(sys, "stderr", log)
    samples = synthetic_samples()
    Trainer(tiny_config(tmp_path), samples, []).run(progress=True)
    bar_lines = [line for line in log.getvalue().splitlines() if line.startswith("train:")]
    assert 1 <= len(bar_lines) <= 3 and "6/6" in bar_lines[-1]


def test_a_resumed_run_finds_its_data_from_anywhere_and_says_when_it_changed(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for index, sample in enumerate(synthetic_samples(4)):
        for kind, array in (("images", sample.image), ("masks", sample.labels.astype(np.uint16))):
            (data / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(data / kind / f"s{index}.png")
    monkeypatch.chdir(tmp_path)
    train(tiny_config(tmp_path / "run", data_root="data", max_steps=2, val_fraction=0.25), progress=False)
    config_file = tmp_path / "run" / "train_config.json"
    assert json.loads(config_file.read_text())["data_root"] == str(
        data
    )  # not "data": resumable from anywhere
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(InputError, match="the run is at step 2; --max-steps 1 cannot extend it"):
        resume(tmp_path / "run", max_steps=1, progress=False)
    assert (
        json.loads(config_file.read_text())["max_steps"] == 2
    )  # the refused extension left the run as it was
    for kind in ("images", "masks"):
        (data / kind / "s3.png").unlink()
    with pytest.warns(
        UserWarning, match="the run.s images changed since it started \\(4 then, 3 now; e.g. s3 gone\\)"
    ):
        assert resume(tmp_path / "run", max_steps=3, progress=False)["step"] == 3


def test_a_run_without_validation_images_says_it_writes_no_best(tmp_path):
    with pytest.warns(UserWarning, match=r"no validation images \(3 training images, val_fraction 0.1\)"):
        Trainer(tiny_config(tmp_path), synthetic_samples(3), [])


def test_resuming_a_finished_run_keeps_its_log(tmp_path):
    samples = synthetic_samples()
    finished = Trainer(tiny_config(tmp_path, max_steps=4), samples, samples[:1])
    assert 4 % finished.steps_per_epoch  # the last epoch is partial: logged at step 4, mid-epoch
    finished.run(progress=False)
    rows = read_log(tmp_path / "log.csv")
    again = Trainer(tiny_config(tmp_path, max_steps=4), samples, samples[:1])
    again.load_state()
    assert again.step == 4 and read_log(tmp_path / "log.csv") == rows and rows[-1]["step"] == "4"


def test_a_short_runs_warm_up_is_at_most_a_third_of_it():
    assert _lr_factor(2, 10, 50) == 1.0  # 10 steps: 3 of warm-up, then the full rate
    assert _lr_factor(0, 150, 50) == pytest.approx(1 / 50) and _lr_factor(50, 150, 50) == 1.0  # as configured


def test_run_folder_has_checkpoints_log_and_plot(tmp_path):
    trainer = Trainer(
        tiny_config(tmp_path, max_steps=4, checkpoint_every=100), synthetic_samples(), synthetic_samples(1)
    )
    trainer.run(progress=False)
    for name in ("state.pt", "log.csv", "curve.png", "last/model.safetensors", "best/config.json"):
        assert (tmp_path / name).is_file(), name
    rows = read_log(tmp_path / "log.csv")
    assert 0 <= float(rows[-1]["val_dice"]) <= 1 and math.isfinite(float(rows[-1]["train_loss"]))
    model = SegmentAnyCell.load(tmp_path / "last")
    assert Segmenter(model).predict(synthetic_nuclei(80)[0]).shape == (80, 80)


def test_the_reference_nucleus_size_is_the_models_own_outlines_not_the_annotations():
    """The size --mpp auto compares new images with is the size of the nuclei the model reports: annotations
    drawn looser do not move it, and the same tissue at twice the resolution measures the same."""
    model = SegmentAnyCell.load()
    image, labels = sample_image("he")[:256, :256], sample_labels("he")[:256, :256]
    drawn = outlined_nucleus_area(model, [NucleiSample("he", image, labels, 0.25)])
    loose = outlined_nucleus_area(model, [NucleiSample("he", image, expand_labels(labels, 3), 0.25)])
    assert drawn == loose != median_nucleus_area([NucleiSample("he", image, labels, 0.25)], 0.25)
    finer = rescale(image, 2, channel_axis=-1, preserve_range=True).astype(np.uint8)
    twice = NucleiSample("he", finer, np.kron(labels, np.ones((2, 2), labels.dtype)), 0.125)
    assert outlined_nucleus_area(model, [twice]) == pytest.approx(drawn, rel=0.15)
    assert outlined_nucleus_area(model, [NucleiSample("he", image, labels, None)]) is None  # scale unknown


def test_checkpoints_record_the_measured_nucleus_size_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr("sac.train.outlined_nucleus_area", lambda model, samples: 123.0)
    samples = [dataclasses.replace(sample, mpp=0.5) for sample in synthetic_samples()]
    trainer = Trainer(tiny_config(tmp_path, max_steps=4, checkpoint_every=100), samples, samples[:1])
    annotated = trainer.config.model.nucleus_area
    trainer.run(progress=False)
    for checkpoint in ("best", "last"):
        assert SegmentAnyCell.load(tmp_path / checkpoint).config.nucleus_area == 123.0 != annotated
    resumed = Trainer(tiny_config(tmp_path), samples, samples[:1])
    resumed.load_state()
    assert resumed.model.config.nucleus_area == 123.0


def test_split_validation_is_deterministic_and_disjoint():
    samples = synthetic_samples(10)
    fit, held = split_validation(samples, 0.2, seed=3)
    assert len(held) == 2 and len(fit) == 8
    assert {s.name for s in fit}.isdisjoint({s.name for s in held})
    assert [s.name for s in held] == [s.name for s in split_validation(samples, 0.2, seed=3)[1]]


def test_validation_folds_cover_every_image_once():
    samples = synthetic_samples(10)
    held = [split_validation(samples, 0.3, seed=3, fold=fold)[1] for fold in range(3)]
    names = [s.name for fold in held for s in fold]
    assert sorted(names) == sorted(s.name for s in samples) and len(names) == len(set(names))
    assert [len(fold) for fold in held] == [3, 3, 4]  # the last fold takes the remainder
    first = [s.name for s in split_validation(samples, 0.3, seed=3)[1]]
    assert [s.name for s in held[0]] == first  # fold 0: the split runs have always used
    fit, _ = split_validation(samples, 0.3, seed=3, fold=1)
    assert {s.name for s in fit}.isdisjoint({s.name for s in held[1]}) and len(fit) == 7
    with pytest.raises(InputError, match=r"val_fold 3: 10 images at val_fraction 0\.3 make 3 folds"):
        split_validation(samples, 0.3, seed=3, fold=3)


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config(tmp_path))
    with pytest.raises(InputError, match="not a SAC training run"):
        resume(tmp_path / "nothing")


@pytest.mark.data
def test_monuseg_smoke_run(tmp_path):
    root = default_data_root()
    if root is None or not (root / "monuseg").is_dir():
        pytest.skip("MoNuSeg not found in $SAC_DATA or ../shared/data")
    config = tiny_config(tmp_path, datasets=["monuseg"], data_root=str(root), image_size=128, max_steps=2)
    config.max_val_images = 1
    result = train(config, progress=False)
    assert result["step"] == 2 and 0 <= result["best_val_score"] <= 2


def test_lora_training_from_an_official_checkpoint(tmp_path):
    """The paper's setting in miniature: official-layout SAM weights, frozen encoder with LoRA, then reload."""
    from conftest import tiny_sam_config
    from test_backbone import official_layout, randomized_model

    checkpoint = tmp_path / "sam_tiny_official.pth"
    torch.save(official_layout(randomized_model(tiny_sam_config(64)).state_dict()), checkpoint)
    config = tiny_config(tmp_path / "run", backbone=str(checkpoint), max_steps=2, checkpoint_every=100)
    assert config.model.encoder_mode == "lora"
    trainer = Trainer(config, synthetic_samples(), synthetic_samples(1))
    frozen = trainer.model.sam.vision_encoder.layers[0].attn.qkv.base.weight.clone()
    trainer.run(progress=False)
    assert torch.equal(trainer.model.sam.vision_encoder.layers[0].attn.qkv.base.weight, frozen)
    saved = set(trainer.model.trainable_state_dict())
    assert any(".lora_" in k for k in saved) and not any(k.endswith("qkv.base.weight") for k in saved)
    reloaded = SegmentAnyCell.load(tmp_path / "run" / "last")
    image = synthetic_nuclei(64)[0]
    np.testing.assert_allclose(
        Segmenter(reloaded).maps(image), Segmenter(trainer.model).maps(image), atol=1e-4
    )


def test_init_starts_from_a_checkpoint_and_adopts_its_architecture(tmp_path):
    samples = synthetic_samples()
    source = Trainer(
        tiny_config(tmp_path / "source", max_steps=2, checkpoint_every=100), samples, samples[:1]
    )
    source.run(progress=False)
    # a run asking for another generator depth and a tiny learning rate: it must take the source's
    # architecture, and after one step of lr 1e-12 still hold the source's weights
    config = tiny_config(tmp_path / "fine", init=str(tmp_path / "source" / "last"), generator_depth=3)
    fine = Trainer(dataclasses.replace(config, lr=1e-12, max_steps=1), samples, samples[:1])
    assert fine.config.model.generator_depth == 2
    assert fine.config.init_sha256 == SegmentAnyCell.load(tmp_path / "source" / "last").meta["weights_sha256"]
    fine.run(progress=False)
    shutil.rmtree(tmp_path / "source")  # resuming needs only the run's own state
    Trainer(dataclasses.replace(fine.config, max_steps=2), samples, samples[:1]).load_state()
    assert TrainConfig.from_dict(json.loads(fine.config.to_json()), new_run=False) == fine.config
    for key, value in source.model.trainable_state_dict().items():
        torch.testing.assert_close(fine.model.trainable_state_dict()[key], value, rtol=0, atol=1e-6)
    scratch = Trainer(tiny_config(tmp_path / "scratch", seed=1), samples, samples[:1])
    assert any(
        not torch.allclose(scratch.model.trainable_state_dict()[k], v)
        for k, v in source.model.trainable_state_dict().items()
    )


def test_init_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="nowhere: no such model; shipped models"):
        Trainer(tiny_config(tmp_path / "run", init=str(tmp_path / "nowhere")), synthetic_samples(), [])


def test_init_default_is_the_shipped_model(tmp_path):
    from sac.model import model_path

    if not (model_path() / "config.json").is_file():
        pytest.skip("no model ships with this installation")
    config = tiny_config(tmp_path / "run", init="default", datasets=["folder"])
    trainer = Trainer(config, synthetic_samples(), [])
    shipped = SegmentAnyCell.load()
    assert trainer.config.model.image_size == shipped.config.image_size
    for key, value in shipped.trainable_state_dict().items():
        torch.testing.assert_close(trainer.model.trainable_state_dict()[key], value)


def test_config_holds_the_model_config_and_reads_old_flat_files(tmp_path):
    """train_config.json files written before the model config moved under "model" still resume."""
    old = {
        "datasets": ["folder"],
        "out": str(tmp_path),
        "backbone": "tiny",
        "encoder_mode": None,
        "image_size": 64,
        "lora_rank": 4,
        "generator_channels": 4,
        "generator_depth": 2,
        "num_points": 3,
        "num_negative": None,
        "batch_size": 2,
        "max_steps": 6,
    }
    config = TrainConfig.from_dict(old)
    assert config.model == SACConfig(
        backbone="tiny",
        image_size=64,
        generator_channels=4,
        generator_depth=2,
        num_positive=3,
        num_negative=3,
    )
    assert config.model.encoder_mode == "full" and config.model.lora_alpha == 4.0
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    (tmp_path / "data").mkdir()
    for index, sample in enumerate(synthetic_samples(2)):
        for kind, array in (("images", sample.image), ("masks", sample.labels.astype(np.uint16))):
            (tmp_path / "data" / kind).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / "data" / kind / f"s{index}.png")
    old["data_root"] = str(tmp_path / "data")
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    assert resume(tmp_path, max_steps=1, progress=False)["step"] == 1
    with pytest.raises(InputError, match="unknown keys"):
        TrainConfig.from_dict({"learning_rate": 1})


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"lr": "1e-4"}, "lr must be a number, got '1e-4'"),
        ({"max_steps": "1"}, "max_steps must be a whole number or null, got '1'"),
        ({"datasets": "folder"}, "datasets must be a list of names, got 'folder'"),
        ({"hv_maps": "no"}, "hv_maps must be true or false, got 'no'"),
        ({"model": {"generator_channels": 8.5}}, "generator_channels must be a whole number, got 8.5"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\), got 1.5"),
        ([1, 2], "config.json: expected a JSON object of settings"),
    ],
)
def test_a_hand_edited_config_of_the_wrong_kind_is_refused_in_one_line(settings, problem):
    with pytest.raises(InputError, match=problem):
        TrainConfig.from_dict(settings, "config.json")


def test_train_only_changes_only_the_named_part(tmp_path):
    """A click-head stage: the click head learns, every other weight (so every automatic output) stays."""
    trainer = Trainer(tiny_config(tmp_path, train_only=["click_head"]), synthetic_samples(), [])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for step in range(3):
        trainer.train_step(trainer.batch(step))
    after = trainer.model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith("click_head.") for k in changed)
    with pytest.raises(InputError, match="no part 'clik_head'"):
        Trainer(tiny_config(tmp_path / "typo", train_only=["clik_head"]), synthetic_samples(), [])
