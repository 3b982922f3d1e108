"""Cross-entropy + soft Dice segmentation loss.

The cross-entropy can average over only the hardest share of each image's pixels (online hard
example mining, "bootstrapped" cross-entropy): the many easy pixels of road and sky then stop
outweighing the few of thin objects and boundaries, which is where the errors are.

Both terms are means over images of per-image losses, so the loss of a batch of 2B images
equals the average of the losses of its two halves; data-parallel training with gradient
averaging therefore optimises exactly what one process with the whole batch would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unetseg.core.config import check_hard_fraction


class SegmentationLoss(nn.Module):
    """Cross-entropy + soft Dice on softmax probabilities, both ignoring ignore_index pixels.

    Per image: CE is the class-weighted mean NLL over valid pixels (with ``ce_hard_fraction`` < 1:
    over the ceil(fraction * valid) valid pixels of highest NLL only); Dice is
    1 - (weighted) mean over the classes present in the valid target of
    (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth). An image without valid pixels
    contributes 0 to both. Each batch term is the mean over images.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
        ce_hard_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        check_hard_fraction(ce_hard_fraction)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.ce_hard_fraction = ce_hard_fraction
        weights = (
            torch.ones(num_classes)
            if class_weights is None
            else _check_weights(class_weights, num_classes)
        )
        # A buffer so that .to(device) moves it; not persistent: it is configuration.
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, {"ce": ce, "dice": dice})`` for logits (N, C, H, W), target (N, H, W).

        ``target`` holds class indices in [0, C) or ``ignore_index``. The loss is computed in
        float32 whatever the logits' dtype or the autocast state; the dict terms are detached.
        """
        self._check_shapes(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits.float(), dim=1)
            valid = target != self.ignore_index
            # Ignored pixels point at class 0; the valid mask zeroes their contribution.
            safe_target = torch.where(valid, target, 0).long()
            # The target class's log-probability serves both terms, so the Dice intersection
            # needs no (N, C, H, W) one-hot of the target (memory, and time on a CPU).
            log_p_target = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
            ce = self._cross_entropy(log_p_target, safe_target, valid).mean()
            dice = self._soft_dice(log_probs.exp(), log_p_target.exp(), safe_target, valid).mean()
        total = self.ce_weight * ce + self.dice_weight * dice
        return total, {"ce": ce.detach(), "dice": dice.detach()}

    def _check_shapes(self, logits: Tensor, target: Tensor) -> None:
        if (
            logits.dim() != 4
            or logits.shape[1] != self.num_classes
            or target.shape != (logits.shape[0], *logits.shape[2:])
        ):
            raise ValueError(
                f"expected logits (N, {self.num_classes}, H, W) and target (N, H, W), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise TypeError("target must be an integer tensor of class indices")

    def _cross_entropy(self, log_p_target: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Per-image weighted mean NLL over valid pixels, shape (N,)."""
        nll = -log_p_target
        pixel_weight = self.class_weights[target] * valid
        if self.ce_hard_fraction < 1:
            pixel_weight = pixel_weight * self._hardest(nll.detach(), valid)
        numerator = (pixel_weight * nll).sum(dim=(1, 2))
        denominator = pixel_weight.sum(dim=(1, 2))
        # numerator is 0 wherever denominator is; dividing by 1 there avoids NaN gradients.
        return numerator / torch.where(denominator > 0, denominator, 1.0)

    def _hardest(self, nll: Tensor, valid: Tensor) -> Tensor:
        """Per image, a 0/1 mask of the ceil(fraction * valid count) valid pixels of highest NLL."""
        flat_nll, flat_valid = nll.flatten(1), valid.flatten(1)
        keep = torch.ceil(flat_valid.sum(dim=1) * self.ce_hard_fraction)
        # NLL >= 0, so -1 sorts ignored pixels last; ties are broken by position, not by chance.
        order = torch.where(flat_valid, flat_nll, -1.0).argsort(dim=1, descending=True, stable=True)
        first = torch.arange(order.shape[1], device=order.device) < keep.unsqueeze(1)
        return torch.zeros_like(flat_valid).scatter_(1, order, first).view_as(nll)

    def _soft_dice(self, probs: Tensor, p_target: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Per-image soft Dice loss over the classes present in the valid target, shape (N,).

        ``p_target`` (N, H, W) is each pixel's probability of its target class: summed per class
        it is the intersection sum(p g), so no one-hot of the target is built.
        """
        n, c = probs.shape[:2]
        valid_f = valid.flatten(1).to(probs.dtype)
        flat_target = target.flatten(1)
        intersection = probs.new_zeros(n, c).scatter_add(
            1, flat_target, p_target.flatten(1) * valid_f
        )
        gt_sum = probs.new_zeros(n, c).scatter_add(1, flat_target, valid_f)
        prob_sum = torch.bmm(probs.flatten(2), valid_f.unsqueeze(2)).squeeze(2)  # over valid pixels
        present = gt_sum > 0
        denominator = prob_sum + gt_sum + self.smooth
        # Absent classes are masked out below; a denominator of 1 keeps them finite.
        score = (2 * intersection + self.smooth) / torch.where(present, denominator, 1.0)
        class_weight = self.class_weights * present
        weight_sum = class_weight.sum(dim=1)
        counted = weight_sum > 0  # False for images without (weighted) valid pixels
        mean_score = (class_weight * score).sum(dim=1) / torch.where(counted, weight_sum, 1.0)
        return torch.where(counted, 1 - mean_score, 0.0)


def _check_weights(class_weights: Sequence[float], num_classes: int) -> Tensor:
    """Validate class weights: one finite, non-negative value per class."""
    weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
    if weights.numel() != num_classes:
        raise ValueError(f"expected {num_classes} class weights, got {weights.numel()}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"class weights must be finite, >= 0 and not all 0, got {weights}")
    return weights
