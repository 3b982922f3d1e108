"""Confusion-matrix accumulation and the segmentation scores derived from it.

The matrix is the single source of truth: batches, workers and processes are combined by
adding matrices, and every score is computed once from the final matrix, so no score is
ever an average of per-batch scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

# Enough offending values to diagnose a bad label map without flooding the message.
_MAX_REPORTED_VALUES = 10


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix, rows = ground truth, columns = prediction.

    Pixels whose target equals ``ignore_index`` are excluded.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of integer label maps (any shape, identical for both)."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"shape mismatch: prediction {prediction.shape}, target {target.shape}"
            )
        if prediction.is_floating_point() or target.is_floating_point():
            raise TypeError("prediction and target must be integer label tensors")
        device = self.matrix.device
        prediction = prediction.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)
        valid = target != self.ignore_index
        self._check_range(target[valid], "target", f" (or ignore_index {self.ignore_index})")
        self._check_range(prediction, "prediction", "")
        codes = target[valid] * self.num_classes + prediction[valid]
        counts = torch.bincount(codes, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def _check_range(self, values: torch.Tensor, what: str, allowed_extra: str) -> None:
        """Raise ValueError naming the values of ``values`` outside [0, C)."""
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.numel():
            shown = torch.unique(bad)[:_MAX_REPORTED_VALUES].tolist()
            raise ValueError(
                f"{what} contains values outside [0, {self.num_classes}){allowed_extra}: {shown}"
            )

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another accumulator's counts (from another batch, worker or evaluation shard)."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge {other.num_classes}-class matrix into {self.num_classes}-class one"
            )
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over torch.distributed ranks; a no-op without a process group."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix.zero_()

    def compute(self) -> SegmentationScores:
        """Scores of everything accumulated so far."""
        return scores_from_matrix(self.matrix.cpu().numpy())


@dataclass(frozen=True, eq=False)  # eq on array fields would be ambiguous
class SegmentationScores:
    """Per-class and averaged scores of one confusion matrix.

    Per-class arrays are float64 of shape (C,). A class absent from both ground truth and
    prediction has NaN IoU/Dice and is skipped by every average (listed in ``absent``);
    a class only predicted has IoU 0 and counts.
    """

    iou: np.ndarray
    dice: np.ndarray
    accuracy: np.ndarray  # recall TP / (TP + FN); NaN without ground-truth pixels
    gt_pixels: np.ndarray  # int64
    miou: float
    mean_dice: float
    fwiou: float
    pixel_accuracy: float
    absent: list[int]

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready dict; NaN becomes None so ``json.dumps(allow_nan=False)`` works."""
        names = self._check_names(class_names)
        per_class = {
            name: {
                "iou": _json_float(self.iou[c]),
                "dice": _json_float(self.dice[c]),
                "accuracy": _json_float(self.accuracy[c]),
                "gt_pixels": int(self.gt_pixels[c]),
            }
            for c, name in enumerate(names)
        }
        return {
            "miou": _json_float(self.miou),
            "mean_dice": _json_float(self.mean_dice),
            "fwiou": _json_float(self.fwiou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "absent_classes": [names[c] for c in self.absent],
            "per_class": per_class,
        }

    def table(self, class_names: Sequence[str]) -> str:
        """Plain-text per-class table, a line of means and a note on skipped classes."""
        names = self._check_names(class_names)
        width = max(len(n) for n in [*names, "class", "mean"])
        header = f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'Acc':>7}  {'GT pixels':>12}"
        lines = [header, "-" * len(header)]
        for c, name in enumerate(names):
            scores = (self.iou[c], self.dice[c], self.accuracy[c])
            lines.append(_table_row(name, width, scores, int(self.gt_pixels[c])))
        lines.append("-" * len(header))
        means = (self.miou, self.mean_dice, _nanmean(self.accuracy))
        lines.append(_table_row("mean", width, means, int(self.gt_pixels.sum())))
        lines.append(
            f"pixel accuracy {_fmt(self.pixel_accuracy)}, frequency-weighted IoU {_fmt(self.fwiou)}"
        )
        if self.absent:
            skipped = ", ".join(names[c] for c in self.absent)
            lines.append(f"skipped (absent from ground truth and prediction): {skipped}")
        return "\n".join(lines)

    def _check_names(self, class_names: Sequence[str]) -> list[str]:
        names = list(class_names)
        if len(names) != len(self.iou) or len(set(names)) != len(names):
            raise ValueError(f"need {len(self.iou)} distinct class names, got {names}")
        return names


def scores_from_matrix(matrix: np.ndarray) -> SegmentationScores:
    """Compute all scores in float64 from a (C, C) integer confusion matrix (rows = truth)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    gt = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    union = gt + predicted - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, gt + predicted)
    total = gt.sum()
    with_gt = gt > 0  # such classes always have a defined IoU (union >= gt > 0)
    fwiou = float((gt[with_gt] / total * iou[with_gt]).sum()) if total else float("nan")
    scores = SegmentationScores(
        iou=iou,
        dice=dice,
        accuracy=_ratio(tp, gt),
        gt_pixels=gt,
        miou=_nanmean(iou),
        mean_dice=_nanmean(dice),
        fwiou=fwiou,
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        absent=np.flatnonzero(union == 0).tolist(),
    )
    for array in (scores.iou, scores.dice, scores.accuracy, scores.gt_pixels):
        array.setflags(write=False)  # keep the frozen dataclass really immutable
    return scores


def grouped_matrix(matrix: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of groups of classes (``groups[c]`` names class c's group, in order
    of first appearance): a pixel is right when truth and prediction share a group. This is how
    the official Cityscapes evaluation scores its categories."""
    names = list(dict.fromkeys(groups))
    member = np.zeros((len(groups), len(names)), dtype=np.int64)
    member[np.arange(len(groups)), [names.index(g) for g in groups]] = 1
    return member.T @ np.asarray(matrix, dtype=np.int64) @ member, names


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise float64 ratio, NaN where the denominator is 0 (no warning)."""
    out = np.full(denominator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.4f}"


def _table_row(name: str, width: int, scores: tuple[float, float, float], pixels: int) -> str:
    iou, dice, acc = (_fmt(s) for s in scores)
    return f"{name:<{width}}  {iou:>7}  {dice:>7}  {acc:>7}  {pixels:>12}"
