import pytest
import torch

from unetseg.model import UNet, count_parameters


@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 64), (64, 48), (128, 256)])
def test_logits_have_the_input_size(height, width):
    model = UNet(num_classes=5, width=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 5, height, width)


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_both_upsamplings_work(upsampling):
    model = UNet(num_classes=3, width=4, upsampling=upsampling).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_size_not_multiple_of_16_is_refused_before_computation():
    model = UNet(num_classes=3, width=4)
    with pytest.raises(ValueError, match=r"100x60 .*height 60 -> 48 or 64.*width 100 -> 96 or 112"):
        model(torch.randn(1, 3, 60, 100))


def test_original_width_has_31m_parameters_for_24_classes():
    assert round(count_parameters(UNet(num_classes=24, width=64)) / 1e6, 1) == 31.0


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = UNet(num_classes=4, width=4)
    logits = model(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 32, 32))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.head.weight.grad.abs().sum() > 0


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
