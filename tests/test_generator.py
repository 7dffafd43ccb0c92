"""The auto-prompt generator: a light U-Net giving nuclei and centre maps at any input size."""

import pytest
import torch

from sac.generator import IMAGENET_MEAN, IMAGENET_STD, ConvBlock, GeneratorOutput, PromptGenerator
from sac.io import InputError


def test_generator_shapes_and_gradients():
    model = PromptGenerator()
    assert 0.5e6 <= sum(p.numel() for p in model.parameters()) <= 2e6
    images = torch.rand(2, 3, 32, 48)
    out = model(images)
    assert isinstance(out, GeneratorOutput)
    assert out.logits.shape == (2, 2, 32, 48)
    assert out.features.shape == (2, 16, 32, 48)
    (out.logits.mean() + out.features.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_generator_handles_sizes_not_divisible_by_stride():
    model = PromptGenerator(base_channels=4, depth=3).eval()
    out = model(torch.rand(1, 3, 13, 21))
    assert out.logits.shape == (1, 2, 13, 21)
    assert out.features.shape == (1, 4, 13, 21)
    assert torch.isfinite(out.logits).all()


def test_generator_rejects_wrong_channel_count():
    with pytest.raises(InputError):
        PromptGenerator(base_channels=4, depth=2)(torch.rand(1, 1, 8, 8))


def test_conv_block_keeps_the_size_and_sets_the_channels():
    block = ConvBlock(3, 12)
    assert block(torch.rand(2, 3, 9, 11)).shape == (2, 12, 9, 11)
    assert block.layers[1].num_groups == 4  # GroupNorm groups divide the channel count


def test_inputs_are_normalised_with_imagenet_statistics_grey_averaged_for_other_channel_counts():
    rgb = PromptGenerator(base_channels=4, depth=2)
    assert rgb.pixel_mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert rgb.pixel_std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    grey = PromptGenerator(in_channels=1, base_channels=4, depth=2).eval()
    assert grey.pixel_mean.flatten().tolist() == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert grey.pixel_std.flatten().tolist() == pytest.approx([sum(IMAGENET_STD) / 3])
    assert grey(torch.rand(1, 1, 16, 16)).logits.shape == (1, 2, 16, 16)
    assert "pixel_mean" not in rgb.state_dict()  # fixed, not part of checkpoints
