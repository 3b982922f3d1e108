"""The weight average: hand-computed updates, the decay ramp, uniform averaging, buffers, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unetseg.core.ema import WeightAverage
from unetseg.core.model import ResUNet


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))


def test_updates_follow_the_ramped_decay_by_hand():
    model = small_model()
    average = WeightAverage(model, decay=0.99)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)  # decay min(0.99, 2/11): the average moves 9/11 of the way
    expected = start + 9 / 11
    assert torch.allclose(average.module[0].weight, expected, atol=1e-6)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)  # decay 3/12 = 0.25
    assert torch.allclose(average.module[0].weight, expected + 0.75 * (start + 2 - expected))
    for _ in range(1000):
        average.update(model)
    assert average.current_decay() == pytest.approx(0.99)
    assert torch.allclose(average.module[0].weight, start + 2, atol=1e-5)


def test_uniform_updates_restart_the_average_and_weigh_each_step_equally():
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    average.update(model)  # an EMA update first: the uniform phase must forget it
    seen = []
    for shift in (1.0, 4.0, -2.0):
        with torch.no_grad():
            model[0].weight.add_(shift)
            model[1].running_var.mul_(2.0)
        seen.append([model[0].weight.detach().clone(), model[1].running_var.clone()])
        average.update(model, uniform=True)
    assert average.uniform_updates == 3 and average.updates == 4
    for got, values in zip(
        (average.module[0].weight, average.module[1].running_var), zip(*seen, strict=True)
    ):
        assert torch.allclose(got, torch.stack(values).mean(0), atol=1e-6)


def test_batch_norm_statistics_are_averaged_and_counters_copied():
    model = small_model()
    average = WeightAverage(model, decay=0.5)
    model.train()
    model(torch.randn(4, 1, 3, 3) + 5.0)  # moves running_mean towards 5, counts one batch
    average.update(model)  # decay min(0.5, 2/11) = 2/11
    bn, shadow = model[1], average.module[1]
    assert torch.allclose(shadow.running_mean, bn.running_mean * 9 / 11)
    assert int(shadow.num_batches_tracked) == 1


def test_the_average_is_frozen_and_its_state_round_trips():
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    assert not any(p.requires_grad for p in average.module.parameters())
    assert not average.module.training
    with torch.no_grad():
        model[0].bias.add_(3.0)
    average.update(model)
    average.update(model, uniform=True)
    restored = WeightAverage(small_model(), decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert (restored.updates, restored.uniform_updates) == (2, 1)
    assert torch.equal(restored.module[0].bias, average.module[0].bias)


def test_every_tensor_of_a_full_model_moves_towards_its_own_counterpart():
    torch.manual_seed(0)
    model = ResUNet(3, width=4, blocks=(1, 1, 1, 1), full_resolution=True)
    average = WeightAverage(model, decay=0.5)
    before = {k: v.clone() for k, v in average.module.state_dict().items()}
    with torch.no_grad():  # a different shift for every tensor: a mix-up could not go unseen
        for i, tensor in enumerate([*model.parameters(), *model.buffers()]):
            tensor.add_(i + 1)
    average.update(model)  # decay min(0.5, 2/11): the average moves 9/11 of the way
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            expected = before[key] + (value - before[key]) * 9 / 11
            assert torch.allclose(average.module.state_dict()[key], expected, atol=1e-5), key
        else:
            assert torch.equal(average.module.state_dict()[key], value), key
