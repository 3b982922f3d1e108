"""``unetseg evaluate``: a checkpoint's scores on a split, written as metrics.json, a per-class
table and chart, the confusion matrix and the worst images."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from unetseg.core.checkpoint import model_from_checkpoint
from unetseg.core.config import check_test_time_augmentation, with_overrides
from unetseg.core.files import write_json
from unetseg.core.metrics import ConfusionMatrix
from unetseg.core.runtime import local_runtime
from unetseg.data.io import read_pair
from unetseg.data.prepare import prepare_data
from unetseg.data.sources import find_samples
from unetseg.engine import viz
from unetseg.engine.evaluate import comparison_rows, evaluate_model, image_miou, per_image_matrices
from unetseg.engine.inference import Predictor, predict_image


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

    check_test_time_augmentation(tta, scales, full_res)
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
