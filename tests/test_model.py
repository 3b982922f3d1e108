import pytest
import torch

from unetseg.core.model import ResidualBlock, ResUNet, UNet, count_parameters

TINY_MODELS = {
    "plain": lambda classes: UNet(num_classes=classes, width=4),
    "residual": lambda classes: ResUNet(num_classes=classes, width=4, blocks=(1, 2, 1, 1)),
    "residual_full_resolution": lambda classes: ResUNet(
        num_classes=classes, width=4, blocks=(1, 2, 1, 1), full_resolution=True
    ),
}


@pytest.mark.parametrize("encoder", TINY_MODELS)
@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 64), (64, 48), (128, 256)])
def test_logits_have_the_input_size(height, width, encoder):
    model = TINY_MODELS[encoder](5).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 5, height, width)


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_both_upsamplings_work(upsampling):
    model = UNet(num_classes=3, width=4, upsampling=upsampling).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("encoder", TINY_MODELS)
def test_size_not_multiple_of_16_is_refused_before_computation(encoder):
    model = TINY_MODELS[encoder](3)
    with pytest.raises(ValueError, match=r"100x60 .*height 60 -> 48 or 64.*width 100 -> 96 or 112"):
        model(torch.randn(1, 3, 60, 100))


def test_original_width_has_31m_parameters_for_24_classes():
    assert round(count_parameters(UNet(num_classes=24, width=64)) / 1e6, 1) == 31.0


@pytest.mark.parametrize("encoder", TINY_MODELS)
def test_backward_reaches_every_parameter(encoder):
    torch.manual_seed(0)
    model = TINY_MODELS[encoder](4)
    logits = model(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 32, 32))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    heads = [module for name, module in model.named_modules() if name.endswith("head")]
    assert heads and all(head.weight.grad.abs().sum() > 0 for head in heads)


def test_dropout_is_configurable_and_off_in_eval():
    model = UNet(num_classes=2, width=4, dropout=0.5)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(dropouts) == 9 and all(m.p == 0.5 for m in dropouts)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), model(x))


def test_channels_last_and_bf16_autocast_agree_with_fp32():
    torch.manual_seed(0)
    model = UNet(num_classes=3, width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert mixed.dtype == torch.bfloat16
    assert torch.allclose(mixed.float(), reference, atol=0.1, rtol=0.05)


def test_residual_stages_have_the_configured_depth_and_resolution():
    model = ResUNet(num_classes=3, width=4, blocks=(1, 2, 3, 1))
    depths = [sum(isinstance(m, ResidualBlock) for m in stage) for stage in model.stages]
    assert depths == [1, 2, 3, 1]
    x = model.stem(torch.randn(1, 3, 64, 32))
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(4, 32, 16), (8, 16, 8), (16, 8, 4), (32, 4, 2)]


def test_residual_block_is_identity_plus_body():
    block = ResidualBlock(4, 4).eval()
    for layer in block.body:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.zeros_(layer.weight)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(block(x), torch.relu(x))  # a zero body leaves relu(shortcut(x)) = relu(x)


@pytest.mark.parametrize("blocks", [(2, 2, 2), (1, 0, 1, 1)])
def test_residual_blocks_are_checked(blocks):
    with pytest.raises(ValueError, match="blocks: need four counts"):
        ResUNet(num_classes=3, width=4, blocks=blocks)


@pytest.mark.parametrize("model_class", [UNet, ResUNet])
def test_per_image_input_norm_ignores_exposure(model_class):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 48)
    darker = x * torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1) - 0.2  # per-channel gain, offset
    model = model_class(num_classes=3, width=4, input_norm="per_image").eval()
    plain = model_class(num_classes=3, width=4).eval()
    plain.load_state_dict(model.state_dict())  # same weights, no input normalisation
    with torch.no_grad():
        assert torch.allclose(model(darker), model(x), atol=1e-4)
        assert not torch.allclose(plain(darker), plain(x), atol=1e-2)


def test_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm: .batch. is not one of none, per_image"):
        UNet(num_classes=3, width=4, input_norm="batch")


def one_pixel_lines(seed: int, count: int = 8, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one-pixel-wide vertical lines at random columns; mask 1 on the lines."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, side, side, dtype=torch.long)
    for mask in masks:
        mask[:, torch.randperm(side, generator=generator)[:3]] = 1
    images = masks[:, None].float().expand(-1, 3, -1, -1) + 0.1 * torch.randn(
        count, 3, side, side, generator=generator
    )
    return images, masks


def line_iou_after_training(full_resolution: bool, steps: int = 60) -> float:
    torch.manual_seed(0)
    model = ResUNet(2, width=8, blocks=(1, 1, 1, 1), dropout=0.0, full_resolution=full_resolution)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, masks = one_pixel_lines(seed=0)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), masks).backward()
        optimizer.step()
    model.eval()
    images, masks = one_pixel_lines(seed=1)
    with torch.no_grad():
        line = model(images).argmax(1) == 1
    truth = masks == 1
    return float((line & truth).sum() / (line | truth).sum())


def test_full_resolution_level_resolves_one_pixel_lines():
    # Logits upsampled x2 from half resolution blur a line one pixel wide into its neighbours; the
    # full-resolution level sees the line itself through its skip from the input. (After 60 steps:
    # 0.90 against 0.49.)
    full, half = line_iou_after_training(True), line_iou_after_training(False)
    assert full > 0.8 and full > half + 0.2, (full, half)


def test_full_resolution_level_starts_as_the_half_resolution_model():
    # Its zero-initialised head adds nothing until training moves it, so the refined model starts
    # where the plain residual model does, with the same weights elsewhere.
    torch.manual_seed(0)
    refined = ResUNet(num_classes=3, width=8, blocks=(1, 1, 1, 1), full_resolution=True).eval()
    plain = ResUNet(num_classes=3, width=8, blocks=(1, 1, 1, 1)).eval()
    extra = plain.load_state_dict(refined.state_dict(), strict=False).unexpected_keys
    assert extra and all(key.startswith("refine.") for key in extra)
    assert refined.refine.head.in_channels == 4  # width // 2
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(refined(x), plain(x))
