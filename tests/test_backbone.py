import pytest
import torch
from transformers import SamModel

from conftest import tiny_sam_config
from sac.backbone import PRESETS, count_parameters, create_sam, is_random, preset_config
from sac.io import InputError


def official_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers SAM state dict to segment_anything's names (the test's own, independent table)."""
    renames = [
        ("vision_encoder.patch_embed.projection", "image_encoder.patch_embed.proj"),
        ("vision_encoder.layers.", "image_encoder.blocks."),
        ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
        (".layer_norm1.", ".norm1."),
        (".layer_norm2.", ".norm2."),
        (".layer_norm3.", ".norm3."),
        (".layer_norm4.", ".norm4."),
        ("vision_encoder.neck.conv1.", "image_encoder.neck.0."),
        ("vision_encoder.neck.norm1.", "image_encoder.neck.1."),
        ("vision_encoder.neck.conv2.", "image_encoder.neck.2."),
        ("vision_encoder.neck.norm2.", "image_encoder.neck.3."),
        ("prompt_encoder.point_embed.", "prompt_encoder.point_embeddings."),
        ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
        ("prompt_encoder.mask_embed.norm1.", "prompt_encoder.mask_downscaling.1."),
        ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
        ("prompt_encoder.mask_embed.norm2.", "prompt_encoder.mask_downscaling.4."),
        ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
        ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
        ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
        ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
        ("transformer.layer_norm_final_attn.", "transformer.norm_final_attn."),
    ]
    head_renames = [(".layers.0.", ".layers.1."), (".proj_in.", ".layers.0."), (".proj_out.", ".layers.2.")]
    official = {}
    for key, value in hf_state.items():
        if key == "shared_image_embedding.positional_embedding":
            continue
        if key == "prompt_encoder.shared_embedding.positional_embedding":
            official["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = value
            continue
        new = key
        head = "iou_prediction_head" in key or "output_hypernetworks_mlps" in key
        for old, replacement in head_renames if head else renames:
            new = new.replace(old, replacement)
        official[new] = value
    return official


def randomized_model(config) -> SamModel:
    model = SamModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model


def predict(model: SamModel, size: int) -> torch.Tensor:
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, size, size)
    points = torch.tensor([[[[10.0, 12.0], [40.0, 30.0]]]])
    labels = torch.tensor([[[1, 0]]])
    with torch.no_grad():
        return model(
            pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=True
        ).pred_masks


def test_official_checkpoint_converts_exactly(tmp_path):
    reference = randomized_model(tiny_sam_config(64))
    official = official_layout(reference.state_dict())
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in official)
    path = tmp_path / "sam_tiny_official.pth"
    torch.save({**official, "pixel_mean": torch.zeros(3, 1, 1)}, path)
    loaded = create_sam(path).eval()
    assert loaded.config.vision_config.global_attn_indexes == [1]
    assert loaded.config.vision_config.window_size == 2
    assert torch.equal(predict(reference, 64), predict(loaded, 64))


def test_wrapped_checkpoint_and_other_input_size(tmp_path):
    reference = randomized_model(tiny_sam_config(64))
    path = tmp_path / "medsam_like.pth"
    torch.save({"model": official_layout(reference.state_dict())}, path)
    resized = create_sam(path, image_size=128).eval()
    assert resized.config.vision_config.image_size == 128
    assert resized.config.prompt_encoder_config.image_size == 128
    assert resized.vision_encoder.pos_embed.shape[1:3] == (8, 8)
    assert resized.vision_encoder.layers[1].attn.rel_pos_h.shape[0] == 15
    assert predict(resized, 128).shape[-2:] == (32, 32)


def test_save_pretrained_folder_round_trip(tmp_path):
    reference = randomized_model(tiny_sam_config(64))
    reference.save_pretrained(tmp_path / "hf")
    loaded = create_sam(tmp_path / "hf").eval()
    assert all(
        torch.equal(a, b)
        for a, b in zip(reference.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    torch.testing.assert_close(predict(reference, 64), predict(loaded, 64), rtol=0, atol=1e-6)
    assert create_sam(tmp_path / "hf", image_size=128).config.vision_config.image_size == 128


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    config = preset_config(name)
    assert config.prompt_encoder_config.image_size == config.vision_config.image_size
    assert config.mask_decoder_config.hidden_size == config.vision_config.output_channels


def test_tiny_preset_runs_and_counts_parameters():
    model = create_sam("tiny")
    counts = count_parameters(model)
    assert 0 < counts["trainable"] == counts["total"] < 5_000_000
    assert predict(model.eval(), 256).shape[-2:] == (64, 64)


def test_from_scratch_encoder_is_alive():
    """A preset must start trainable: its image embeddings vary with the input instead of vanishing."""
    model = create_sam("tiny").eval()
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.randn(2, 3, 256, 256))
    assert embeddings.std() > 0.1
    assert (embeddings[0] - embeddings[1]).abs().mean() > 0.01


def test_vit_b_matches_official_size():
    with torch.device("meta"):
        model = SamModel(preset_config("vit_b"))
    assert 93_000_000 < count_parameters(model)["total"] < 95_000_000


def test_bad_sources_give_one_line_errors(tmp_path):
    cases = {}
    with pytest.raises(InputError, match="unknown backbone preset"):
        preset_config("vit_x")
    truncated = tmp_path / "truncated.pth"
    torch.save(official_layout(randomized_model(tiny_sam_config(64)).state_dict()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    cases["truncated"] = truncated
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases["empty"] = empty
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    cases["not sam"] = other
    text = tmp_path / "notes.pth"  # a text file named like a checkpoint (torch's unpickler raises KeyError)
    text.write_text("not a checkpoint\n")
    cases["text"] = text
    for path in cases.values():
        with pytest.raises(InputError) as info:
            create_sam(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="neither a backbone name"):
        create_sam("no/such/place/here")


def test_mismatched_checkpoint_is_refused(tmp_path):
    official = official_layout(randomized_model(tiny_sam_config(64)).state_dict())
    official["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    path = tmp_path / "mismatch.pth"
    torch.save(official, path)
    with pytest.raises(InputError, match=r"do not fit the architecture: .*1 of wrong shape"):
        create_sam(path)
    del official["mask_decoder.iou_token.weight"]
    official["image_encoder.extra.weight"] = torch.zeros(1)
    torch.save(official, path)
    with pytest.raises(InputError, match="no SAM equivalent"):
        create_sam(path)


def test_hub_id_without_network(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(InputError, match="cannot load SAM weights"):
        create_sam("facebook/sam-vit-base")


def test_official_names_mean_the_cached_official_weights(tmp_path, monkeypatch):
    """`vit_b` is Meta's checkpoint from the cache, or a one-line error naming the fetch command, never random."""
    monkeypatch.setenv("SAC_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="run `sac weights fetch vit_b`"):
        create_sam("vit_b")
    reference = randomized_model(tiny_sam_config(64))
    torch.save(official_layout(reference.state_dict()), tmp_path / "sam_vit_b_01ec64.pth")  # a stand-in
    loaded = create_sam("vit_b")
    key = "vision_encoder.layers.0.attn.qkv.weight"
    torch.testing.assert_close(loaded.state_dict()[key], reference.state_dict()[key])
    assert is_random("tiny") and is_random("scratch:vit_b") and not is_random("vit_b")
    assert not is_random("scratch:nothing") and not is_random("facebook/sam-vit-base")
