"""Tests for the cross-entropy + soft Dice segmentation loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetseg.core.losses import SegmentationLoss

IGNORE = 255
C = 4


def _batch(n: int = 2, h: int = 8, w: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and a target with a band of ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, h, w, generator=g)
    target = torch.randint(0, C, (n, h, w), generator=g)
    target[:, :, : w // 3] = IGNORE
    return logits, target


def test_dice_term_has_a_gradient() -> None:
    logits, target = _batch()
    logits.requires_grad_(True)
    total, terms = SegmentationLoss(C, ce_weight=0.0)(logits, target)
    total.backward()
    assert terms["dice"] > 0
    assert logits.grad.abs().sum() > 0


def test_ignored_pixels_affect_neither_term_nor_gradient() -> None:
    logits, target = _batch()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = 50 * torch.randn(int(ignored.sum()))
    loss = SegmentationLoss(C, class_weights=[1.0, 2.0, 0.5, 1.0])
    results = []
    for x in (logits, changed):
        x.requires_grad_(True)
        total, terms = loss(x, target)
        total.backward()
        assert torch.all(x.grad[ignored] == 0)
        assert x.grad[~ignored].abs().sum() > 0
        results.append((total.detach(), terms["ce"], terms["dice"]))
    for before, after in zip(*results, strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_perfect_confident_logits_give_near_zero_loss() -> None:
    _, target = _batch()
    logits = 30.0 * F.one_hot(torch.where(target == IGNORE, 0, target), C).permute(0, 3, 1, 2)
    total, terms = SegmentationLoss(C)(logits.float(), target)
    assert total.item() < 1e-6
    assert terms["ce"].item() < 1e-6 and terms["dice"].item() < 1e-6


def test_ce_term_matches_cross_entropy_on_one_image() -> None:
    logits, target = _batch(n=1)
    _, terms = SegmentationLoss(C)(logits, target)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(terms["ce"], expected, rtol=1e-6, atol=1e-6)


def _reference_dice(
    logits: torch.Tensor, target: torch.Tensor, weights: list[float], smooth: float
) -> torch.Tensor:
    """The per-image soft Dice of the specification, written as plain loops."""
    per_image = []
    for x, t in zip(logits, target, strict=True):
        valid = t != IGNORE
        if not valid.any():
            per_image.append(torch.tensor(0.0))
            continue
        probs = x.softmax(dim=0)[:, valid]
        labels = t[valid]
        score_sum = weight_sum = 0.0
        for c in labels.unique().tolist():
            p, g = probs[c], (labels == c).float()
            score = (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)
            score_sum, weight_sum = score_sum + weights[c] * score, weight_sum + weights[c]
        per_image.append(1 - score_sum / weight_sum)
    return torch.stack(per_image).mean()


@pytest.mark.parametrize("smooth", [1.0, 0.0])
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 3.0]])
def test_dice_term_matches_reference(smooth: float, weights: list[float] | None) -> None:
    logits, target = _batch(n=3, seed=2)
    target[1] = IGNORE
    target[2, 2:] = 1  # few classes present in that image
    _, terms = SegmentationLoss(C, class_weights=weights, smooth=smooth)(logits, target)
    expected = _reference_dice(logits, target, weights or [1.0] * C, smooth)
    torch.testing.assert_close(terms["dice"], expected, rtol=1e-6, atol=1e-6)


def test_class_weights_change_ce_as_hand_computed() -> None:
    # Pixel 0: logits (0, 0), target 0 -> NLL log 2. Pixel 1: logits (log 3, 0), target 1 ->
    # p = 1/4, NLL log 4 = 2 log 2.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    _, uniform = SegmentationLoss(2)(logits, target)
    _, weighted = SegmentationLoss(2, class_weights=[1.0, 3.0])(logits, target)
    assert uniform["ce"].item() == pytest.approx(1.5 * math.log(2))  # (1 + 2) / 2
    assert weighted["ce"].item() == pytest.approx(7 / 4 * math.log(2))  # (1 + 3 * 2) / 4
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))
    assert weighted["ce"].item() == pytest.approx(expected.item())


def _reference_hard_ce(
    logits: torch.Tensor, target: torch.Tensor, weights: list[float], fraction: float
) -> torch.Tensor:
    """Per image: weighted mean NLL over the ceil(fraction * valid) valid pixels of highest NLL."""
    per_image = []
    for x, t in zip(logits, target, strict=True):
        valid = t != IGNORE
        nll = F.cross_entropy(x[None], torch.where(valid, t, 0)[None], reduction="none")[0]
        kept = nll[valid].topk(math.ceil(fraction * int(valid.sum()))).indices
        w = torch.tensor(weights)[t[valid]][kept]
        per_image.append((w * nll[valid][kept]).sum() / w.sum())
    return torch.stack(per_image).mean()


@pytest.mark.parametrize("fraction", [0.05, 0.3, 1.0])
def test_hard_fraction_ce_averages_the_hardest_pixels(fraction: float) -> None:
    logits, target = _batch(n=3, seed=3)
    target[1, :5] = IGNORE  # another number of valid pixels in each image
    weights = [0.5, 1.0, 2.0, 1.5]
    loss = SegmentationLoss(C, class_weights=weights, ce_hard_fraction=fraction)
    _, terms = loss(logits, target)
    expected = _reference_hard_ce(logits, target, weights, fraction)
    torch.testing.assert_close(terms["ce"], expected, rtol=1e-6, atol=1e-6)
    if fraction < 1:
        _, everything = SegmentationLoss(C, class_weights=weights)(logits, target)
        assert terms["ce"] > everything["ce"]  # the hardest pixels have more than average NLL


def test_hard_fraction_gives_easy_pixels_no_ce_gradient() -> None:
    logits, target = _batch(n=2, seed=4)
    logits.requires_grad_(True)
    loss = SegmentationLoss(C, dice_weight=0.0, ce_hard_fraction=0.25)
    loss(logits, target)[0].backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    valid = target != IGNORE
    for image in range(2):
        assert int(touched[image].sum()) == math.ceil(0.25 * int(valid[image].sum()))
    assert not touched[~valid].any()


def test_batch_loss_is_the_mean_of_its_halves_losses_and_gradients() -> None:
    logits, target = _batch(n=4, seed=1)
    target[1] = IGNORE  # an image without valid pixels contributes 0, not NaN
    target[2, :4] = 3  # uneven numbers of valid pixels and classes per image
    loss = SegmentationLoss(C, class_weights=[0.5, 1.0, 2.0, 1.5], dice_weight=0.7)
    whole_x = logits.clone().requires_grad_(True)
    halves_x = logits.clone().requires_grad_(True)
    whole, whole_terms = loss(whole_x, target)
    first, first_terms = loss(halves_x[:2], target[:2])
    second, second_terms = loss(halves_x[2:], target[2:])
    torch.testing.assert_close(whole, (first + second) / 2, rtol=0, atol=1e-6)
    for key in ("ce", "dice"):
        mean = (first_terms[key] + second_terms[key]) / 2
        torch.testing.assert_close(whole_terms[key], mean, rtol=0, atol=1e-6)
    whole.backward()
    ((first + second) / 2).backward()
    torch.testing.assert_close(whole_x.grad, halves_x.grad, rtol=0, atol=1e-7)


def test_fully_ignored_image_contributes_zero() -> None:
    logits, target = _batch(n=2)
    target[1] = IGNORE
    total, _ = SegmentationLoss(C)(logits, target)
    single, _ = SegmentationLoss(C)(logits[:1], target[:1])
    torch.testing.assert_close(total, single / 2)


def test_bf16_autocast_with_channels_last_logits() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, C, kernel_size=3, padding=1).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    _, target = _batch(n=2, h=16, w=16)
    loss = SegmentationLoss(C, class_weights=[1.0, 2.0, 1.0, 0.5])
    reference, reference_terms = loss(conv(images), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        total, terms = loss(logits, target)
    assert logits.dtype == torch.bfloat16
    assert logits.is_contiguous(memory_format=torch.channels_last)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    torch.testing.assert_close(total, reference, rtol=0, atol=1e-2)
    for key in ("ce", "dice"):
        torch.testing.assert_close(terms[key], reference_terms[key], rtol=0, atol=1e-2)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_bad_shapes_raise() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError):
        SegmentationLoss(C)(logits, target[:, :-1])
    with pytest.raises(ValueError):
        SegmentationLoss(C + 1)(logits, target)
    with pytest.raises(ValueError):
        SegmentationLoss(C, class_weights=[1.0, 2.0])
