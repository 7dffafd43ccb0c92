"""The SAC network on fixed-size tiles: forward, per-nucleus prompts, checkpoints and LoRA (images of any size
go through ``sac.segmenter``, tested in test_segmenter.py)."""

import json
import re

import numpy as np
import pytest
import torch
from transformers import SamModel

from conftest import synthetic_nuclei, tiny_model, tiny_sam_config
from sac.backbone import count_parameters
from sac.io import InputError
from sac.lora import lora_layers
from sac.model import CONFIG_FILE, SACConfig, SegmentAnyCell
from sac.segmenter import Segmenter


def test_forward_shapes_and_generated_points():
    model = tiny_model(num_positive=3, num_negative=2)
    output = model(torch.rand(2, 3, 64, 64))
    assert output.logits.shape == (2, 1, 64, 64)
    assert output.sam_logits.shape == (2, 1, 16, 16)
    assert output.generator_logits.shape == (2, 2, 64, 64)
    assert output.points.shape == (2, 1, 5, 2)
    assert output.point_labels[0, 0].tolist() == [1, 1, 1, 0, 0]


def test_hv_maps_add_a_head_whose_weights_older_checkpoints_lack(tmp_path):
    plain = tiny_model()
    assert plain.hv_head is None and plain(torch.rand(1, 3, 64, 64)).hv is None
    saved = plain.save(tmp_path / "plain")
    model = tiny_model(hv_maps=True)
    assert model(torch.rand(2, 3, 64, 64)).hv.shape == (2, 2, 64, 64)
    assert model.config.map_names == ("nuclei", "generator", "centre", "sam", "horizontal", "vertical")
    assert model.load_weights(saved, partial=True) == ["hv_head"]
    with pytest.raises(InputError, match="hv_head"):
        model.load_weights(saved)


def test_a_wider_generator_starts_from_its_checkpoint_computing_the_same(tmp_path):
    narrow = tiny_model(generator_channels=8, hv_maps=True).eval()
    saved = narrow.save(tmp_path / "narrow")
    wide = tiny_model(generator_channels=16, hv_maps=True).eval()
    assert wide.load_weights(saved, partial=True) == []
    images = torch.rand(2, 3, 64, 64)
    points = torch.tensor([[[20.0, 30.0], [40.0, 12.0]]])
    with torch.no_grad():
        before, after = narrow(images, hv=True), wide(images, hv=True)
        assert after.features.shape[1] == 16
        for name in ("logits", "generator_logits", "hv"):
            torch.testing.assert_close(getattr(after, name), getattr(before, name), rtol=1e-4, atol=1e-4)
        clicked = [
            m.prompt_instances(o, torch.tensor([0]), points, torch.tensor([[1, 0]]))
            for m, o in ((narrow, before), (wide, after))
        ]
        torch.testing.assert_close(clicked[1].logits, clicked[0].logits, rtol=1e-4, atol=1e-4)
    # the copies of a channel are read with different weights, so training can tell them apart
    first = wide.generator.decoder[-1].layers[0].weight
    assert not torch.equal(first[:, 0], first[:, 1])
    for width in (12, 20):
        with pytest.raises(InputError, match="whole factor"):
            tiny_model(generator_channels=width).load_weights(saved, partial=True)
    with pytest.raises(InputError, match="multiple of 8"):
        tiny_model(generator_channels=8).load_weights(tiny_model().save(tmp_path / "four"), partial=True)


CLICK_IMAGES = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def click_answer(model, hv: bool = True) -> torch.Tensor:
    """The click head's logits for a positive and a negative click on the second of ``CLICK_IMAGES``."""
    points, labels = torch.tensor([[[20.0, 30.0], [40.0, 12.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        return model.prompt_instances(model(CLICK_IMAGES, hv=hv), torch.tensor([1]), points, labels).logits


def test_a_click_head_shown_the_image_starts_out_answering_as_its_checkpoint(tmp_path):
    blind = tiny_model(hv_maps=True).eval()
    saved = blind.save(tmp_path / "blind")
    seeing = tiny_model(hv_maps=True, click_head_sees_image=True).eval()
    seeing.load_weights(saved)
    # image (3) and HV maps (2) between the previous answer and the features, read with zero weights at first
    assert seeing.click_head.down1.layers[0].in_channels == blind.click_head.down1.layers[0].in_channels + 5
    before = click_answer(blind)
    torch.testing.assert_close(click_answer(seeing), before, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        seeing.click_head.down1.layers[0].weight[:, 6:11].fill_(1.0)  # now it reads them
    assert not torch.allclose(click_answer(seeing), before)
    with pytest.raises(InputError, match="hv=True"):
        click_answer(seeing, hv=False)
    assert tiny_model(click_head_sees_image=True).click_head.down1.layers[0].in_channels == (
        blind.click_head.down1.layers[0].in_channels + 3
    )


def test_a_wider_click_head_starts_out_answering_as_its_checkpoint(tmp_path):
    narrow = tiny_model(hv_maps=True, click_head_sees_image=True, click_head_deeper=True).eval()
    saved = narrow.save(tmp_path / "narrow")
    wide = tiny_model(
        hv_maps=True, click_head_sees_image=True, click_head_deeper=True, click_head_width=32
    ).eval()
    wide.load_weights(saved)
    assert wide.click_head.out.in_channels == 2 * narrow.click_head.out.in_channels
    torch.testing.assert_close(click_answer(wide), click_answer(narrow), rtol=1e-4, atol=1e-4)
    # the copies of a channel are read with different weights, so training can tell them apart
    assert not torch.equal(wide.click_head.out.weight[:, 0], wide.click_head.out.weight[:, 1])
    with pytest.raises(InputError, match="whole factor"):
        tiny_model(click_head_width=24).load_weights(tiny_model().save(tmp_path / "plain"))
    with pytest.raises(InputError, match="one part at a time"):
        tiny_model(generator_channels=16, click_head_width=32).load_weights(
            tiny_model(generator_channels=8).save(tmp_path / "eight")
        )


def test_a_click_head_made_deeper_starts_out_answering_as_its_checkpoint(tmp_path):
    shallow = tiny_model().eval()
    saved = shallow.save(tmp_path / "shallow")
    deeper = tiny_model(click_head_deeper=True).eval()
    deeper.load_weights(saved)
    before = click_answer(shallow)
    torch.testing.assert_close(click_answer(deeper), before)
    with torch.no_grad():
        deeper.click_head.deeper.project.weight.fill_(0.1)  # the new level now adds to what the head sees
    assert not torch.allclose(click_answer(deeper), before)
    with pytest.raises(InputError, match="architecture"):  # a deeper checkpoint does not fit a shallow model
        tiny_model().load_weights(deeper.save(tmp_path / "deeper"))


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


def test_prompt_instances_windows_are_centred_on_the_clicks():
    window = 16
    model = tiny_model(instance_window=window).eval()
    # (x, y) clicks; the last one's window leaves the tile
    clicks = torch.tensor([[20.0, 30.0], [40.0, 12.0], [3.0, 60.0]])
    points = torch.stack([clicks, torch.tensor([[0.0, 0.0], [50.0, 50.0], [0.0, 0.0]])], dim=1)  # (N, 2, 2)
    labels = torch.tensor([[1, -1], [1, 0], [1, -1]])
    image_index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 64))
        answer = model.prompt_instances(output, image_index, points, labels)
        assert answer.logits.shape == (3, 1, window, window) and answer.iou.shape == (3,)
        assert answer.sam_logits.shape == (3, 1, 16, 16)
        assert torch.isfinite(answer.logits).all()
        # the window's centre pixel is the click's (row, column)
        assert (answer.origins + window // 2).tolist() == clicks.flip(-1).long().tolist()
        # and the answer sees the full-resolution features there and nowhere else
        row, col = answer.origins[0].tolist()
        outside = torch.ones_like(output.features)
        outside[0, :, row : row + window, col : col + window] = 0
        changed = output._replace(features=output.features + 5 * outside)
        again = model.prompt_instances(changed, image_index, points, labels)
        torch.testing.assert_close(again.logits[0], answer.logits[0], rtol=1e-5, atol=1e-5)
        poked = output.features.clone()
        poked[0, :, 30, 20] += 5  # the click's own pixel
        moved = model.prompt_instances(output._replace(features=poked), image_index, points, labels)
        assert not torch.allclose(moved.logits[0], answer.logits[0])
        torch.testing.assert_close(moved.logits[1:], answer.logits[1:])  # other tiles' windows


def test_save_load_round_trip(tmp_path):
    model = tiny_model().eval()
    image, _ = synthetic_nuclei(80)
    model.save(tmp_path / "ckpt", metrics={"val_dice": 0.5})
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["metrics"]["val_dice"] == 0.5
    loaded = SegmentAnyCell.load(tmp_path / "ckpt")
    np.testing.assert_array_equal(Segmenter(loaded).maps(image), Segmenter(model).maps(image))


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
    with pytest.raises(InputError, match="do not fit the architecture"):
        SegmentAnyCell.load(other)
    with pytest.raises(InputError, match="no such model; shipped models: nuclei, glands"):
        SegmentAnyCell.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a SAC checkpoint"):
        SegmentAnyCell.load(tmp_path / "empty")
    tiny_model().save(tmp_path / "run" / "best")  # a training run's folder: the error names its checkpoint
    with pytest.raises(InputError, match=r"it is a training run: give .*run/best"):
        SegmentAnyCell.load(tmp_path / "run")
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
    before = Segmenter(model).maps(synthetic_nuclei(64)[0])
    model.prepare_for_inference()
    after = Segmenter(model).maps(synthetic_nuclei(64)[0])
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_config_knows_what_the_model_segments():
    assert SACConfig().objects == "nuclei" and SACConfig(objects="glands").objects == "glands"
    with pytest.raises(InputError, match="unknown objects 'cells': expected nuclei or glands"):
        SACConfig(objects="cells")


@pytest.mark.parametrize(
    ("setting", "message"), [({"click_views": 3}, "click_views takes"), ({"tta": 5}, "views; got 5")]
)
def test_a_config_with_a_view_count_it_cannot_use_is_refused(setting, message):
    with pytest.raises(InputError, match=message):
        tiny_model(**setting)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"seed_threshold": 1.5}, r"seed threshold must be in \(0, 1\), got 1.5"),
        ({"seed_depth": 3}, r"seed depth must be in \[0, 1\), got 3"),
        ({"hv_weight": -1}, "hv weight must be at least 0"),
        ({"min_size": -4}, "need 0 <= min size"),
        ({"mpp": 0}, "mpp 0 µm/px is outside"),
        ({"mpp": -0.25}, r"mpp -0\.25 µm/px is outside"),
        ({"nucleus_area": -1}, "nucleus_area must be a positive area"),
        ({"instance_window": 0}, "instance_window must be a whole number of at least 1, got 0"),
        ({"num_positive": 2.5}, "num_positive must be a whole number"),
        ({"point_threshold": 2}, r"point_threshold must be in \[0, 1\]"),
    ],
)
def test_a_checkpoint_whose_post_processing_is_out_of_range_is_refused_naming_its_config(
    tmp_path, setting, message
):
    directory = tiny_model().save(tmp_path / "model")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    meta["model"].update(setting)  # a hand-edited config.json
    (directory / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(InputError, match=f"^{re.escape(str(directory / CONFIG_FILE))}: {message}"):
        SegmentAnyCell.load(directory)


def test_a_checkpoint_file_given_for_its_folder_is_named_as_such(tmp_path):
    directory = tiny_model().save(tmp_path / "model")
    with pytest.raises(
        InputError, match=r"config\.json: give the checkpoint's folder, .*model, not one of its files"
    ):
        SegmentAnyCell.load(directory / CONFIG_FILE)


def test_numpy_numbers_in_a_config_save_as_json(tmp_path):
    """A size taken from an array (np.int64) is a whole number, and the checkpoint's config.json still writes."""
    model = tiny_model(generator_channels=np.int64(4), lora_dropout=np.float32(0.0))
    assert type(model.config.generator_channels) is int and type(model.config.lora_dropout) is float
    model.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["generator_channels"] == 4
