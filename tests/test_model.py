import json

import numpy as np
import pytest
import torch
from transformers import SamModel

from conftest import synthetic_nuclei, tiny_sam_config
from sac.backbone import count_parameters
from sac.io import InputError
from sac.lora import lora_layers
from sac.model import SACConfig, SegmentAnyCell


def tiny_model(**overrides) -> SegmentAnyCell:
    settings = dict(backbone="tiny", image_size=64, generator_channels=4, generator_depth=2)
    config = SACConfig(**{**settings, **overrides})
    return SegmentAnyCell(config)


def test_forward_shapes_and_generated_points():
    model = tiny_model(num_positive=3, num_negative=2)
    output = model(torch.rand(2, 3, 64, 64))
    assert output.logits.shape == (2, 1, 64, 64)
    assert output.sam_logits.shape == (2, 1, 16, 16)
    assert output.generator_logits.shape == (2, 2, 64, 64)
    assert output.points.shape == (2, 1, 5, 2)
    assert output.point_labels[0, 0].tolist() == [1, 1, 1, 0, 0]


def test_manual_points_are_added_or_used_alone():
    model = tiny_model(num_positive=1, num_negative=1).eval()
    manual = torch.tensor([[[[5.0, 6.0]]]])
    label = torch.ones(1, 1, 1, dtype=torch.long)
    images = torch.rand(1, 3, 64, 64)
    assert model(images, manual, label).points.shape == (1, 1, 3, 2)
    alone = model(images, manual, label, generate_points=False)
    assert torch.equal(alone.points, manual)
    with pytest.raises(InputError, match="manual points"):
        model(images, generate_points=False)
    with pytest.raises(InputError, match="64x64"):
        model(torch.rand(1, 3, 32, 32))


def test_predict_any_size_and_manual_points():
    model = tiny_model().eval()
    image, _ = synthetic_nuclei(100)
    mask = model.predict(image)
    assert mask.shape == (100, 100) and mask.dtype == bool
    maps = model.predict_maps(image[:30, :7], overlap=8)
    assert maps.shape == (4, 30, 7) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with_points = model.predict_maps(image, points=(np.array([[50.0, 50.0]]), None), overlap=8)
    assert with_points.shape == (4, 100, 100)
    alone = model.predict_maps(image, points=(np.array([[50.0, 50.0]]), None), generate_points=False)
    assert not np.allclose(alone, with_points)
    labels = model.predict(image, instances=True)
    assert labels.dtype == np.int32 and labels.shape == (100, 100)


def test_save_load_round_trip(tmp_path):
    model = tiny_model().eval()
    image, _ = synthetic_nuclei(80)
    model.save(tmp_path / "ckpt", metrics={"val_dice": 0.5})
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["metrics"]["val_dice"] == 0.5
    loaded = SegmentAnyCell.load(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.predict_maps(image), model.predict_maps(image))


def test_corrupted_or_mismatched_checkpoints_are_refused(tmp_path):
    model = tiny_model()
    directory = model.save(tmp_path / "ckpt")
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        SegmentAnyCell.load(directory)
    other = tiny_model(generator_channels=8).save(tmp_path / "other")
    meta = json.loads((other / "config.json").read_text())
    meta["model"]["generator_channels"] = 4
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not match the architecture"):
        SegmentAnyCell.load(other)
    with pytest.raises(InputError, match="not a SAC checkpoint"):
        SegmentAnyCell.load(tmp_path / "missing")
    (other / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid SAC checkpoint"):
        SegmentAnyCell.load(other)


def test_lora_mode_trains_adapters_decoder_and_generator_only(tmp_path):
    sam = SamModel(tiny_sam_config(64))
    config = SACConfig(
        backbone="unused", image_size=64, encoder_mode="lora", generator_channels=4, generator_depth=2
    )
    model = SegmentAnyCell(config, sam=sam)
    assert len(lora_layers(model)) == 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {n for n in trainable if n.startswith("sam.vision_encoder.")}
    assert encoder and all(".lora_" in n for n in encoder)
    assert any(n.startswith("sam.mask_decoder.") for n in trainable)
    assert any(n.startswith("generator.") for n in trainable)
    assert set(model.trainable_state_dict()) == trainable
    model(torch.rand(1, 3, 64, 64)).logits.mean().backward()
    encoder_grads = [
        p.grad for n, p in model.named_parameters() if ".lora_b." in n
    ]  # A's grad is 0 while B = 0
    assert encoder_grads and all(g is not None and g.abs().sum() > 0 for g in encoder_grads)
    counts = count_parameters(model)
    assert counts["trainable"] < counts["total"]
    before = model.predict_maps(synthetic_nuclei(64)[0])
    model.prepare_for_inference()
    after = model.predict_maps(synthetic_nuclei(64)[0])
    np.testing.assert_allclose(after, before, atol=1e-5)
