"""``unetseg evaluate``: a checkpoint's scores on a split, written as metrics.json, a per-class
table and chart, the confusion matrix, the reliability diagram and the worst images; and
``unetseg calibrate``: the checkpoint's temperature fitted on a split."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from unetseg.core.checkpoint import (
    CheckpointError,
    model_from_checkpoint,
    read_metadata,
    resolve_checkpoint,
)
from unetseg.core.classes import IGNORE_INDEX, ClassSet, cityscapes_categories
from unetseg.core.config import (
    Config,
    ConfigError,
    check_test_time_augmentation,
    with_overrides,
)
from unetseg.core.files import write_json
from unetseg.core.metrics import ConfusionMatrix, grouped_matrix, scores_from_matrix
from unetseg.core.runtime import Runtime, local_runtime
from unetseg.data.io import DataError, read_pair
from unetseg.data.prepare import prepare_data
from unetseg.data.sources import find_samples, no_samples
from unetseg.engine.calibration import Calibration, Reliability, calibrate, store_calibration
from unetseg.engine.domain import DomainProfile, profile_of
from unetseg.engine.evaluate import (
    Scored,
    comparison_rows,
    evaluate_model,
    image_miou,
    per_image_matrices,
    worst_first,
    write_evaluation,
)
from unetseg.engine.inference import Predictor, predict_image, segment
from unetseg.engine.report import write_report


def evaluate_checkpoint(
    checkpoint: str | Path,
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
    checkpoint = resolve_checkpoint(checkpoint)
    if full_res:
        predictor, config, temperature = _load_predictor(checkpoint, data_root, overrides, device)
        class_set = predictor.class_set
        scored = _score_full_resolution(
            predictor, temperature, config, split, tta, scales, worst, progress
        )
    else:
        model, config, class_set, runtime = _load(checkpoint, data_root, overrides, device)
        scored = _score_cached(model, config, class_set, runtime, split, worst, progress)
    out = out or checkpoint.parent / f"evaluation_{split}{'_fullres' if full_res else ''}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = scored.scores.to_dict(class_set.names)
    metrics.update(
        checkpoint=str(checkpoint),
        split=split,
        full_resolution=full_res,
        tta=tta,
        scales=list(scales),
        overrides=list(overrides),
        data_root=config.data.root,
    )
    categories = cityscapes_categories(class_set)
    if categories is not None:  # the official evaluation's second table
        matrix, names = grouped_matrix(scored.matrix, categories)
        by_category = scores_from_matrix(matrix)
        metrics["categories"] = by_category.to_dict(names)
        print(by_category.table(names))
    if scored.calibration is not None:
        metrics["calibration"] = scored.calibration.to_dict()
        print(f"calibration: {scored.calibration.line()}")
    print(scored.scores.table(class_set.names))
    write_evaluation(out, metrics, scored, class_set, split)
    if (checkpoint.parent / "report.html").is_file():  # a run folder: its report shows this
        write_report(checkpoint.parent)
    return {"metrics": metrics, "out": out}


def calibrate_checkpoint(
    checkpoint: str | Path,
    data_root: Path | None = None,
    split: str = "val",
    device: str = "auto",
    progress: bool = True,
    overrides: Sequence[str] = (),
) -> Calibration:
    """``unetseg calibrate``: fit the temperature of a checkpoint's model on ``split`` (at the
    training size) and store it in the checkpoint, with the domain profile of the training split
    and the model's confidence on ``split``; ``calibration_<split>/`` beside it gets
    calibration.json and the reliability diagram. Masks and scores do not change."""
    checkpoint = resolve_checkpoint(checkpoint)
    if checkpoint.suffix != ".pt":
        raise CheckpointError(
            f"{checkpoint}: calibrate stores the temperature in a .pt checkpoint (best.pt, "
            "final.pt); export again afterwards"
        )
    model, config, class_set, runtime = _load(checkpoint, data_root, overrides, device)
    cached = prepare_data(config, class_set, splits=(split,), progress=progress)[split]
    loader = torch.utils.data.DataLoader(cached, batch_size=config.train.batch_size)
    batches = tqdm(loader, desc=f"calibrate on {split}", disable=not progress)
    pixels = len(cached) * config.data.size[0] * config.data.size[1]
    calibration = calibrate(model, batches, runtime, pixels)
    store_calibration(checkpoint, calibration, _training_profile(config, class_set, calibration))
    out = checkpoint.parent / f"calibration_{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "calibration.json", {"split": split, **calibration.to_dict()})
    calibration.plot(out / "reliability.png", f"{split}: calibration")
    return calibration


def _training_profile(
    config: Config, class_set: ClassSet, calibration: Calibration
) -> DomainProfile | None:
    """The domain profile of the run's training split, or None (the checkpoint's own is kept)
    where that split is not at hand."""
    try:
        train = prepare_data(config, class_set, splits=("train",), progress=False)["train"]
    except DataError as error:
        print(f"note: domain profile not rebuilt: {error}", file=sys.stderr)
        return None
    return profile_of(train, class_set, calibration.image_confidence)


def _changed(config: Config, data_root: Path | None, overrides: Sequence[str]) -> Config:
    """A run's configuration as changed for this use: another data root, overrides."""
    if data_root is not None:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, root=str(data_root))
        )
    return with_overrides(config, list(overrides)) if overrides else config


def _load(
    checkpoint: Path, data_root: Path | None, overrides: Sequence[str], device: str
) -> tuple[torch.nn.Module, Config, ClassSet, Runtime]:
    """A checkpoint's model on the device, with its configuration as changed for this use."""
    if checkpoint.suffix == ".onnx":
        raise ConfigError(
            f"{checkpoint}: an ONNX model is scored through the predict path: add --full-res"
        )
    model, config, class_set = model_from_checkpoint(checkpoint)
    config = _changed(config, data_root, overrides)
    runtime = local_runtime(device, config.train.precision)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    return model.to(device=runtime.device, memory_format=layout), config, class_set, runtime


def _load_predictor(
    checkpoint: Path, data_root: Path | None, overrides: Sequence[str], device: str
) -> tuple[Predictor, Config, float]:
    """The predict path of a checkpoint or an exported ONNX model (whose JSON holds the run's
    configuration), that configuration as changed for this use, and the model's temperature."""
    if checkpoint.suffix != ".onnx":
        model, config, class_set, runtime = _load(checkpoint, data_root, overrides, device)
        predictor = Predictor.from_model(model, config, class_set, runtime)
        return predictor, config, float(model.temperature)
    predictor = Predictor.load(checkpoint)  # first: its errors name a missing file plainly
    meta, config, _ = read_metadata(checkpoint)
    temperature = float(meta.get("temperature", {}).get("value", 1.0))  # 1: exported uncalibrated
    return predictor, _changed(config, data_root, overrides), temperature


def _score_full_resolution(
    predictor: Predictor,
    temperature: float,
    config: Config,
    split: str,
    tta: bool,
    scales: Sequence[float],
    worst: int,
    progress: bool,
) -> Scored:
    """Each image of ``split`` predicted at its own resolution, through the predict path, and
    the calibration of the confidence that path gives (temperature, TTA and scales included)."""
    class_set = predictor.class_set

    def predict(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(predict_image(predictor, rgb, tta, scales=scales)).long()

    samples = find_samples(config.data, split)
    if not samples:
        raise DataError(no_samples(config.data, split))
    confusion = ConfusionMatrix(class_set.num_classes)
    reliability = Reliability.empty()
    image_mious = []
    for sample in tqdm(samples, desc=f"evaluate {split} (full res)", disable=not progress):
        rgb, _, train_ids = read_pair(sample, class_set)
        found = segment(predictor, rgb, tta, scales=scales, confidence=True)
        prediction, truth = torch.from_numpy(found.mask).long(), torch.from_numpy(train_ids).long()
        labelled = train_ids != IGNORE_INDEX
        reliability.add_confidence(
            found.confidence[labelled], found.mask[labelled] == train_ids[labelled]
        )
        confusion.update(prediction, truth)
        matrix = per_image_matrices(prediction[None], truth[None], class_set.num_classes)[0]
        image_mious.append(image_miou(matrix.numpy()))
    order = worst_first(image_mious)[:worst]
    rows = []
    for i in order:  # decoded again rather than every image held in memory
        rgb, _, train_ids = read_pair(samples[i], class_set)
        rows.append((rgb, train_ids, predict(rgb).numpy().astype(np.uint8)))
    scores = confusion.compute()
    worst_scores, sources = [image_mious[i] for i in order], [str(samples[i].image) for i in order]
    calibration = Calibration(temperature, None, reliability)
    return Scored(scores, confusion.matrix.numpy(), rows, worst_scores, sources, calibration)


def _score_cached(
    model: torch.nn.Module,
    config: Config,
    class_set: ClassSet,
    runtime: Runtime,
    split: str,
    worst: int,
    progress: bool,
) -> Scored:
    """The cached split at the training size, in batches."""
    cached = prepare_data(config, class_set, splits=(split,), progress=progress)[split]
    loader = torch.utils.data.DataLoader(cached, batch_size=config.train.batch_size)
    batches = tqdm(loader, desc=f"evaluate {split}", disable=not progress)
    result = evaluate_model(model, batches, class_set, runtime, per_image=True, reliability=True)
    order = worst_first(result["image_miou"])[:worst]
    rows = comparison_rows(model, [cached[i] for i in order], runtime)
    worst_scores = [result["image_miou"][i] for i in order]
    sources = [cached.sources[i] for i in order]
    calibration = result["calibration"]
    return Scored(result["scores"], result["matrix"], rows, worst_scores, sources, calibration)
