"""Evaluation: the confusion matrix of a model over a split of cached pairs, and per image."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from unetseg.core.checkpoint import unwrap
from unetseg.core.classes import IGNORE_INDEX, ClassSet
from unetseg.core.files import write_json
from unetseg.core.metrics import ConfusionMatrix, SegmentationScores
from unetseg.core.runtime import Runtime
from unetseg.data.transforms import prepare_batch
from unetseg.engine import viz
from unetseg.engine.calibration import Calibration, Reliability


def per_image_matrices(
    prediction: torch.Tensor, target: torch.Tensor, classes: int
) -> torch.Tensor:
    """(N, C, C) confusion matrices of each image, from one bincount."""
    n = target.shape[0]
    valid = target != IGNORE_INDEX
    image = torch.arange(n, device=target.device).view(n, *([1] * (target.ndim - 1)))
    index = (image * classes + target) * classes + prediction
    counts = torch.bincount(index[valid], minlength=n * classes * classes)
    return counts.view(n, classes, classes)


def image_miou(matrix: np.ndarray) -> float:
    """Mean IoU of one image's confusion matrix over the classes it has or predicts."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else math.nan


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    class_set: ClassSet,
    runtime: Runtime,
    loss_fn: nn.Module | None = None,
    max_batches: int = 0,
    per_image: bool = False,
    reliability: bool = False,
) -> dict[str, Any]:
    """Scores (and mean loss) of ``model`` over ``loader``'s uint8 batches; all ranks reduced.

    Returns ``scores`` (SegmentationScores), ``loss`` (float or NaN), ``matrix`` (C x C numpy)
    and, with ``per_image``, ``image_miou``: this rank's per-image mIoU in loader order. With
    ``reliability`` (one process only), ``calibration``: the confidence of every labelled pixel
    against its correctness, with the model's temperature and without it.
    """
    if reliability and runtime.distributed:
        raise ValueError("reliability is counted by a single process")
    calibration = None
    if reliability:
        temperature = float(unwrap(model).temperature)
        calibration = Calibration(temperature, Reliability.empty(), Reliability.empty())
    model.eval()
    confusion = ConfusionMatrix(class_set.num_classes, device=runtime.device)
    loss_sum = torch.zeros(
        2, dtype=torch.float64
    )  # sum, batches; float64 on the CPU (MPS has none)
    image_scores: list[float] = []
    for index, (images, masks) in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        x, y = prepare_batch(images.to(runtime.device), masks.to(runtime.device))
        with runtime.autocast():
            logits = model(runtime.prepare_input(x))
        prediction = logits.argmax(1)
        confusion.update(prediction, y)
        if loss_fn is not None:
            loss_sum += torch.tensor([float(loss_fn(logits, y)[0]), 1.0], dtype=torch.float64)
        if calibration is not None:
            valid = y != IGNORE_INDEX
            pixels, labels = logits.float().permute(0, 2, 3, 1)[valid], y[valid]
            calibration.before.add(pixels * calibration.temperature, labels)
            calibration.after.add(pixels, labels)
        if per_image:
            matrices = per_image_matrices(prediction, y, class_set.num_classes).cpu().numpy()
            image_scores.extend(image_miou(m) for m in matrices)
    confusion.all_reduce()
    if runtime.distributed:  # gloo reduces CPU tensors; NCCL needs them on the GPU
        reduced = loss_sum.to(runtime.device)
        dist.all_reduce(reduced)
        loss_sum = reduced.cpu()
    loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan
    return {
        "scores": confusion.compute(),
        "loss": loss,
        "matrix": confusion.matrix.cpu().numpy(),
        "image_miou": image_scores,
        "calibration": calibration,
    }


@torch.inference_mode()
def comparison_rows(
    model: nn.Module,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, ground truth, prediction) arrays of cached uint8 pairs, for comparison grids."""
    if not pairs:
        return []
    images = torch.stack([image for image, _ in pairs])
    masks = torch.stack([mask for _, mask in pairs])
    x, _ = prepare_batch(images, masks)
    model.eval()
    with runtime.autocast():
        prediction = model(runtime.prepare_input(x)).argmax(1).cpu().numpy().astype(np.uint8)
    return [(i.numpy(), m.numpy(), p) for i, m, p in zip(images, masks, prediction)]


@dataclasses.dataclass
class Scored:
    """Scores of a split, and its worst images as (image, truth, prediction) rows, with their
    mIoU and source files."""

    scores: SegmentationScores
    matrix: np.ndarray
    worst_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    worst_scores: list[float]
    worst_sources: list[str]
    calibration: Calibration | None = None


def worst_first(image_mious: Sequence[float]) -> list[int]:
    """Image indices by mIoU, lowest first (images scoring nothing at all last)."""
    return sorted(
        range(len(image_mious)), key=lambda i: (math.isnan(image_mious[i]), image_mious[i])
    )


def write_evaluation(
    out: Path, metrics: dict[str, Any], scored: Scored, class_set: ClassSet, split: str
) -> None:
    """An evaluation folder: metrics.json, the per-class IoU chart, the confusion matrix, the
    reliability diagram when there is a calibration, and one grid per worst image (what
    report.html shows)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("worst_*.png"):  # an earlier scoring's, named by their source
        stale.unlink()
    write_json(out / "metrics.json", metrics)
    scores = scored.scores
    title = f"{split}: mIoU {scores.miou:.3f}"
    chart = out / "per_class_iou.png"
    viz.plot_class_bars(class_set.names, scores.iou.tolist(), chart, "IoU", title)
    viz.plot_confusion(scored.matrix, class_set.names, out / "confusion_matrix.png")
    if scored.calibration is not None:
        scored.calibration.plot(out / "reliability.png", f"{split}: calibration")
    worst = zip(scored.worst_rows, scored.worst_scores, scored.worst_sources)
    for rank, (row, value, source) in enumerate(worst, start=1):
        grid = viz.comparison_grid([row], class_set)
        viz.save_image(grid, out / f"worst_{rank:02d}_{Path(source).stem}_miou_{value:.3f}.png")
