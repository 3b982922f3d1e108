"""Evaluation: the confusion matrix of a model over a split, and the ``unetseg evaluate`` report."""

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
from tqdm import tqdm

from unetseg.data.classes import IGNORE_INDEX, ClassSet
from unetseg.data.transforms import prepare_batch
from unetseg.metrics import ConfusionMatrix
from unetseg.runtime import Runtime


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
) -> dict[str, Any]:
    """Scores (and mean loss) of ``model`` over ``loader``'s uint8 batches; all ranks reduced.

    Returns ``scores`` (SegmentationScores), ``loss`` (float or NaN), ``matrix`` (C x C numpy)
    and, with ``per_image``, ``image_miou``: this rank's per-image mIoU in loader order.
    """
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


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path | None = None,
    split: str = "val",
    full_res: bool = False,
    out: Path | None = None,
    worst: int = 4,
    device: str = "auto",
    progress: bool = True,
    tta: bool = False,
    scales: Sequence[float] = (1.0,),
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """``unetseg evaluate``: metrics.json, a per-class table, charts and the worst images.

    ``full_res`` scores each image at its own resolution through the predict path (where ``tta``,
    flip averaging, and multi-scale ``scales`` apply); otherwise the cached training-size split.
    ``overrides`` (``data.val_split=val`` ...) change the run's configuration for this scoring.
    """
    from unetseg import viz
    from unetseg.checkpoint import model_from_checkpoint
    from unetseg.config import with_overrides
    from unetseg.data.io import read_pair
    from unetseg.data.sources import find_samples
    from unetseg.files import write_json
    from unetseg.predict import Predictor, predict_image
    from unetseg.runtime import local_runtime
    from unetseg.train import prepare_data

    model, config, class_set = model_from_checkpoint(checkpoint)
    if data_root is not None:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, root=str(data_root))
        )
    if overrides:
        config = with_overrides(config, list(overrides))
    runtime = local_runtime(device, config.train.precision)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = out or checkpoint.parent / f"evaluation_{split}{'_fullres' if full_res else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if (tta or list(scales) != [1.0]) and not full_res:
        raise ValueError("test-time augmentation (tta, scales) applies to full-resolution scoring")

    if full_res:
        predictor = Predictor.from_model(model, config, class_set, runtime)

        def predict(rgb: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(predict_image(predictor, rgb, tta, scales=scales)).long()

        samples = find_samples(config.data, split)
        confusion = ConfusionMatrix(class_set.num_classes)
        records = []  # (image mIoU, sample)
        for sample in tqdm(samples, desc=f"evaluate {split} (full res)", disable=not progress):
            rgb, _, train_ids = read_pair(sample, class_set)
            prediction = predict(rgb)
            truth = torch.from_numpy(train_ids).long()
            confusion.update(prediction, truth)
            matrix = per_image_matrices(prediction[None], truth[None], class_set.num_classes)[0]
            records.append((image_miou(matrix.numpy()), sample))
        scores, matrix = confusion.compute(), confusion.matrix.numpy()
        records.sort(key=lambda r: (math.isnan(r[0]), r[0]))
        worst_scores, worst_rows = [r[0] for r in records[:worst]], []
        for _, sample in records[:worst]:  # decode again rather than hold every image in memory
            rgb, _, train_ids = read_pair(sample, class_set)
            worst_rows.append((rgb, train_ids, predict(rgb).numpy().astype(np.uint8)))
    else:
        cached = prepare_data(config, class_set, splits=(split,), progress=progress)[split]
        loader = torch.utils.data.DataLoader(cached, batch_size=config.train.batch_size)
        result = evaluate_model(
            model,
            tqdm(loader, desc=f"evaluate {split}", disable=not progress),
            class_set,
            runtime,
            per_image=True,
        )
        scores, matrix = result["scores"], result["matrix"]
        order = sorted(
            range(len(cached)),
            key=lambda i: (math.isnan(result["image_miou"][i]), result["image_miou"][i]),
        )[:worst]
        worst_scores = [result["image_miou"][i] for i in order]
        pairs = [cached[i] for i in order]
        worst_rows = comparison_rows(model, pairs, runtime)

    metrics = scores.to_dict(class_set.names)
    metrics.update(
        checkpoint=str(checkpoint),
        split=split,
        full_resolution=full_res,
        tta=tta,
        scales=list(scales),
        overrides=list(overrides),
        data_root=config.data.root,
    )
    write_json(out / "metrics.json", metrics)
    print(scores.table(class_set.names))
    viz.plot_class_bars(
        class_set.names,
        scores.iou.tolist(),
        out / "per_class_iou.png",
        "IoU",
        f"{split}: mIoU {scores.miou:.3f}",
    )
    viz.plot_confusion(matrix, class_set.names, out / "confusion_matrix.png")
    for rank, (row, value) in enumerate(zip(worst_rows, worst_scores), start=1):
        grid = viz.comparison_grid([row], class_set)
        viz.save_image(grid, out / f"worst_{rank:02d}_miou_{value:.3f}.png")
    return {"metrics": metrics, "out": out}
