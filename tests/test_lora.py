import pytest
import torch
from transformers import SamModel

from conftest import tiny_sam_config
from sac.backbone import count_parameters
from sac.io import InputError
from sac.lora import configure_encoder, lora_layers, merge_lora


def encode(model: SamModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_image_embeddings(pixels)


@pytest.fixture
def model_and_pixels():
    model = SamModel(tiny_sam_config(64)).eval()
    with torch.no_grad():
        for param in model.vision_encoder.parameters():
            param.normal_(0, 0.2)
    return model, torch.randn(2, 3, 64, 64)


def test_zero_b_leaves_outputs_unchanged(model_and_pixels):
    model, pixels = model_and_pixels
    before = encode(model, pixels)
    configure_encoder(model.vision_encoder, "lora", rank=4)
    assert len(lora_layers(model)) == 2
    torch.testing.assert_close(encode(model, pixels), before, rtol=0, atol=0)


def randomize_adapters(model):
    with torch.no_grad():
        for adapter in lora_layers(model):
            for weight in adapter.lora_b.values():
                weight.normal_(0, 0.5)


def test_merged_adapters_compute_what_the_adapters_do(model_and_pixels):
    model, pixels = model_and_pixels
    base = encode(model, pixels)
    configure_encoder(model.vision_encoder, "lora", rank=2, alpha=4.0)
    randomize_adapters(model)
    adapted = encode(model, pixels)
    assert not torch.allclose(adapted, base, atol=1e-4)
    merge_lora(model)
    torch.testing.assert_close(encode(model, pixels), adapted, rtol=1e-4, atol=1e-5)
    merge_lora(model)  # merging twice adds the update once
    torch.testing.assert_close(encode(model, pixels), adapted, rtol=1e-4, atol=1e-5)


def test_only_lora_parameters_get_gradients(model_and_pixels):
    model, pixels = model_and_pixels
    configure_encoder(model.vision_encoder, "lora", rank=4, targets=("q", "v"))
    randomize_adapters(model)
    model.vision_encoder(pixels)[0].square().mean().backward()
    with_grad = {n for n, p in model.vision_encoder.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    assert all(n.endswith((".q", ".v")) for n in with_grad)
    counts = count_parameters(model.vision_encoder)
    # two layers x (q, v) x (A: r x d + B: d x r) with d = 32, r = 4
    assert counts["trainable"] == 2 * 2 * (4 * 32 + 32 * 4)


def test_keys_option_and_modes(model_and_pixels):
    model, _ = model_and_pixels
    configure_encoder(model.vision_encoder, "lora", rank=2, targets=("q", "k", "v"))
    assert lora_layers(model)[0].targets == ("q", "k", "v")
    frozen = SamModel(tiny_sam_config(64))
    configure_encoder(frozen.vision_encoder, "frozen")
    assert count_parameters(frozen.vision_encoder)["trainable"] == 0
    full = SamModel(tiny_sam_config(64))
    configure_encoder(full.vision_encoder, "full")
    counts = count_parameters(full.vision_encoder)
    assert counts["trainable"] == counts["total"]
    with pytest.raises(InputError, match="unknown encoder mode"):
        configure_encoder(full.vision_encoder, "partial")
