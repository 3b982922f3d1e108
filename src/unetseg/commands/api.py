"""The Python API: a trained model loaded from any of its forms, its predictions as objects, and
training and evaluation as the command line runs them::

    model = unetseg.load("runs/mine")     # a .pt, a model.safetensors, a run folder or an .onnx
    result = model.predict("street.jpg")  # or a PIL image, an (H, W, 3) array, or a list of them
    result.mask, result.classes, result.color(), result.overlay(), result.save("out")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unetseg.commands.outputs import output_endings, write_legend, write_outputs
from unetseg.core.classes import ClassSet
from unetseg.core.config import Config, check_scales, load_config, with_overrides
from unetseg.engine import viz
from unetseg.engine.domain import DomainCheck, check
from unetseg.engine.inference import (
    ImageLike,
    Prediction,
    Predictor,
    as_rgb,
    predict_batch,
    segment,
)
from unetseg.engine.train import TrainResult
from unetseg.engine.train import train as train_run

IMAGE_KINDS = "an image path (str or Path), a PIL image or an (H, W, 3) uint8 array"


class Segmentation:
    """One image's prediction at the image's own size: ``mask`` holds (H, W) uint8 class
    indices into ``classes``; ``confidence`` (H, W) float32 calibrated confidence, or None."""

    def __init__(
        self,
        image: np.ndarray,
        prediction: Prediction,
        class_set: ClassSet,
        name: str,
        domain: DomainCheck | None = None,
    ) -> None:
        self.image = image
        self.mask = prediction.mask
        self.confidence = prediction.confidence
        self.class_set = class_set
        self.name = name  # the source file's stem, or image_<index> for arrays and PIL images
        self.domain = domain  # how far the input lies outside the training data, if known

    @property
    def warnings(self) -> list[str]:
        """How the input lies far outside the model's training data (see ``engine/domain.py``)."""
        return self.domain.warnings if self.domain is not None else []

    def __repr__(self) -> str:
        height, width = self.mask.shape
        return f"Segmentation({self.name!r}, {width}x{height}, {self.class_set.name})"

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed as the mask is."""
        return self.class_set.names

    def color(self) -> np.ndarray:
        """The mask in the class table's colours, (H, W, 3) uint8."""
        return viz.colorize(self.mask, self.class_set)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The image blended with its colour mask, (H, W, 3) uint8."""
        return viz.overlay(self.image, self.mask, self.class_set, alpha)

    def save(self, folder: str | Path, name: str | None = None) -> list[Path]:
        """Write what ``unetseg predict`` writes for an image (colour mask, overlay, id mask, and
        the confidence map when there is one) and the folder's ``classes.json`` and
        ``legend.png``; returns the image's files."""
        folder = Path(folder)
        endings = output_endings(self.class_set, confidence=self.confidence is not None)
        stem = name or self.name
        targets = [folder / f"{stem}_{ending}" for ending in endings]
        write_outputs(targets, self.image, Prediction(self.mask, self.confidence), self.class_set)
        write_legend(folder, self.class_set)
        return targets


class Model:
    """A trained segmentation model, ready to predict (see ``load``)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def __repr__(self) -> str:
        width, height = self.predictor.input_size
        return f"Model({self.class_set.name}, {len(self.classes)} classes, trained at {width}x{height})"

    @property
    def class_set(self) -> ClassSet:
        return self.predictor.class_set

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed as the masks are."""
        return self.class_set.names

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        tta: bool = False,
        scales: Sequence[float] = (1.0,),
        sliding_window: bool = False,
        confidence: bool = True,
        batch_size: int = 4,
    ) -> Segmentation | list[Segmentation]:
        """A ``Segmentation`` of one image, or a list of them for a list of images (those of one
        inference size predicted ``batch_size`` at a time). ``tta``, ``scales`` and
        ``sliding_window`` are ``unetseg predict``'s options; ValueError for anything that is
        not an image."""
        check_scales(scales, sliding_window)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        rgbs = [_rgb(item, i) for i, item in enumerate(items)]
        names = [_name(item, i) for i, item in enumerate(items)]
        found: dict[int, Prediction] = {}
        for group in self._groups(rgbs, 1 if sliding_window else batch_size):
            batch = [rgbs[i] for i in group]
            if sliding_window:
                window = segment(
                    self.predictor, batch[0], tta, True, batch_size, confidence=confidence
                )
                predictions = [window]
            else:
                predictions = predict_batch(self.predictor, batch, tta, scales, confidence)
            found.update(zip(group, predictions))
        results = [
            Segmentation(rgb, found[i], self.class_set, name, self._check(rgb, found[i]))
            for i, (rgb, name) in enumerate(zip(rgbs, names))
        ]
        return results[0] if single else results

    def _check(self, rgb: np.ndarray, prediction: Prediction) -> DomainCheck | None:
        profile = self.predictor.domain
        if profile is None:
            return None
        return check(profile, rgb, prediction.mask, prediction.confidence, self.class_set)

    def _groups(self, rgbs: list[np.ndarray], size: int) -> list[list[int]]:
        """Indices of images sharing an image size (hence an inference size), ``size`` a group."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            by_shape.setdefault(rgb.shape[:2], []).append(i)
        return [
            indices[start : start + size]
            for indices in by_shape.values()
            for start in range(0, len(indices), size)
        ]


def _rgb(image: Any, index: int) -> np.ndarray:
    """``as_rgb``, with a ValueError naming what was expected for anything else."""
    if not isinstance(image, (str, Path, Image.Image, np.ndarray)):
        raise ValueError(f"image {index}: expected {IMAGE_KINDS}, got {type(image).__name__}")
    return as_rgb(image)


def _name(image: ImageLike, index: int) -> str:
    return Path(image).stem if isinstance(image, (str, Path)) else f"image_{index}"


def load(path: str | Path, device: str = "auto") -> Model:
    """A trained model from a checkpoint (``.pt``), a ``model.safetensors`` with its JSON, a run
    folder (its best.pt, else final.pt, else model.safetensors) or an ``.onnx`` from ``unetseg
    export``; on ``device`` (auto: CUDA, then MPS, then CPU; ONNX runs on the CPU)."""
    return Model(Predictor.load(path, device))


def train(
    config: Config | str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """``unetseg train``: a configuration (a ``Config``, or a YAML file) with ``section.key=value``
    overrides, trained into the run folder ``out``."""
    if isinstance(config, Config):
        config = with_overrides(config, list(overrides))
    else:
        config = load_config(config, list(overrides))
    return train_run(config, Path(out), resume, progress)
