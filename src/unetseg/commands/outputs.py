"""The files ``unetseg predict`` writes for an image, chosen by their endings, and the files that
say how to read them (the class table and legend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetseg.core.classes import ClassSet
from unetseg.core.files import write_json
from unetseg.engine import viz
from unetseg.engine.inference import Prediction

OVERLAY_QUALITY = 90
# Written once per output folder: the class table, the legend, and what each input gave.
FOLDER_FILES = ("classes.json", "legend.png", "predictions.json")
FRAMES = "frames"  # the ending of a clip's folder of per-frame id masks


def ids_ending(class_set: ClassSet) -> str:
    """An id mask's ending: Cityscapes tables write label ids, others their class ids."""
    return "labelIds.png" if class_set.label_ids is not None else "classIds.png"


def output_endings(
    class_set: ClassSet, ids_only: bool = False, confidence: bool = False
) -> tuple[str, ...]:
    """The files written per image: colour mask, overlay and id mask, or the id mask alone (the
    folder the official Cityscapes evaluation and test server take); with ``confidence`` also
    the confidence map."""
    ids = ids_ending(class_set)
    endings = (ids,) if ids_only else ("color.png", "overlay.jpg", ids)
    return endings + ("confidence.png",) if confidence else endings


def clip_endings(
    ids_only: bool = False, confidence: bool = False, frames: bool = False
) -> tuple[str, ...]:
    """The files written per video clip: colour and overlay videos (``frames``: also a folder
    of per-frame id masks), or the id masks alone; with ``confidence`` also a confidence video."""
    endings = (
        (FRAMES,) if ids_only else ("color.mp4", "overlay.mp4") + ((FRAMES,) if frames else ())
    )
    return endings + ("confidence.mp4",) if confidence else endings


def write_legend(output: Path, class_set: ClassSet) -> None:
    """What the masks mean: each id with its class name and colour, as JSON and as a picture."""
    ids = class_set.label_ids or range(class_set.num_classes)
    table = [
        {"id": int(i), "name": name, "color": list(color)}
        for i, name, color in zip(ids, class_set.names, class_set.colors)
    ]
    write_json(output / FOLDER_FILES[0], {"class_set": class_set.name, "classes": table})
    viz.save_image(viz.legend_strip(class_set, 800), output / FOLDER_FILES[1])


def write_outputs(
    targets: Sequence[Path], image: np.ndarray, prediction: Prediction, class_set: ClassSet
) -> None:
    """One image's output files, each kind chosen by its path's ending (see ``output_endings``):
    colour mask, overlay, confidence map, or the id mask."""
    mask = prediction.mask
    for path in targets:
        if path.name.endswith("_confidence.png"):
            if prediction.confidence is None:
                raise ValueError(f"{path}: this prediction was made without its confidence")
            viz.save_image(confidence_image(prediction.confidence), path)
        elif path.name.endswith("_color.png"):
            viz.save_image(viz.colorize(mask, class_set), path)
        elif path.name.endswith("_overlay.jpg"):
            overlay = viz.overlay(image, mask, class_set)
            viz.save_image(overlay, path, quality=OVERLAY_QUALITY)
        else:
            viz.save_image(written_ids(class_set)[mask], path)


def confidence_image(confidence: np.ndarray) -> np.ndarray:
    """A (H, W) confidence map in [0, 1] as 0-255 grey."""
    return (confidence * 255).round().astype(np.uint8)


def written_ids(class_set: ClassSet) -> np.ndarray:
    """Train id -> the id an id mask holds (Cityscapes label id, else the train id), as a
    256-entry lookup table."""
    table = np.zeros(256, dtype=np.uint8)
    table[: class_set.num_classes] = class_set.label_ids or range(class_set.num_classes)
    return table
