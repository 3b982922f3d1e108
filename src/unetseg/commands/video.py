"""``unetseg predict`` on video clips: colour, overlay and confidence videos, per-frame id masks,
and each frame's confidence and domain check for ``predictions.json``.

Frames stream from the decoder through the model, ``batch_size`` at a time, to the encoders:
memory holds one batch of frames whatever the clip's length.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetseg.commands.outputs import FRAMES, confidence_image, written_ids
from unetseg.core.classes import ClassSet
from unetseg.data.video import Clip, VideoWriter, open_clip
from unetseg.engine import viz
from unetseg.engine.domain import DomainProfile, check
from unetseg.engine.inference import Prediction, Predictor, predict_batch, segment


@dataclass(frozen=True)
class ClipSettings:
    """How each frame is predicted (as ``predict_paths`` predicts an image)."""

    batch_size: int
    tta: bool
    scales: Sequence[float]
    sliding_window: bool
    confidence: bool  # computed: asked for, or needed by the domain check


@dataclass
class ClipResult:
    """One clip's ``predictions.json`` entry and its domain check summed up."""

    entry: dict[str, Any]
    warning: str | None  # None: no frame lies far outside the training data
    stopped: bool  # by Ctrl-C: the outputs hold the frames before it


def predict_clip(
    source: Path,
    targets: Mapping[str, Path],
    predictor: Predictor,
    settings: ClipSettings,
    profile: DomainProfile | None,
    ids_name: str,
    progress: bool = True,
) -> ClipResult:
    """Segment every frame of ``source``, writing each output in ``targets`` (ending -> path, see
    ``commands.outputs.clip_endings``; per-frame masks are named ``NNNNNN_<ids_name>``). On
    Ctrl-C the videos keep the frames done so far (``stopped``); on a decoding error they are
    removed and the DataError propagates."""
    frame_records: list[dict[str, Any]] = []
    stopped = False
    class_set = predictor.class_set
    with open_clip(source) as (clip, frames):
        writers = {
            ending: VideoWriter(path, clip.width, clip.height, clip.rate)
            for ending, path in targets.items()
            if ending.endswith(".mp4")
        }
        bar = tqdm(total=clip.frames, unit="frame", desc=source.name, disable=not progress)
        keep = False
        try:
            for batch in _batches(frames, settings.batch_size):
                images = [image for image, _ in batch]
                for (image, time), prediction in zip(batch, _predict(predictor, images, settings)):
                    index = len(frame_records)
                    _write_frame(index, image, prediction, writers, targets, ids_name, class_set)
                    frame_records.append(
                        _frame_record(index, time, image, prediction, profile, class_set)
                    )
                bar.update(len(batch))
            keep = True
        except KeyboardInterrupt:
            keep = stopped = True  # what was done stays, as complete videos of fewer frames
        finally:
            bar.close()
            for writer in writers.values():
                writer.close(keep)
    return _result(clip, targets, frame_records, profile is not None, stopped)


def _result(
    clip: Clip,
    targets: Mapping[str, Path],
    frame_records: list[dict[str, Any]],
    checked: bool,
    stopped: bool,
) -> ClipResult:
    """The clip's ``predictions.json`` entry, and one warning line for all its warned frames."""
    warned = [r for r in frame_records if r.get("warnings")]
    entry = {
        "source": str(clip.path),
        "outputs": [str(path) for path in targets.values()],
        "frames": len(frame_records),
        "fps": float(clip.rate),
        "stopped": stopped,
        "warned_frames": len(warned) if checked else None,
        "frame_checks": frame_records,
    }
    warning = None
    if warned:
        first = warned[0]
        warning = (
            f"{len(warned)} of {len(frame_records)} frames lie far outside the training data; "
            f"the first, frame {first['frame']} ({first['time']:.2f} s): "
            + "; ".join(first["warnings"])
        )
    return ClipResult(entry, warning, stopped)


def _batches(
    frames: Iterator[tuple[np.ndarray, float]], size: int
) -> Iterator[list[tuple[np.ndarray, float]]]:
    while batch := list(islice(frames, size)):
        yield batch


def _predict(
    predictor: Predictor, images: list[np.ndarray], settings: ClipSettings
) -> list[Prediction]:
    if settings.sliding_window:
        return [
            segment(
                predictor,
                image,
                settings.tta,
                True,
                settings.batch_size,
                confidence=settings.confidence,
            )
            for image in images
        ]
    return predict_batch(predictor, images, settings.tta, settings.scales, settings.confidence)


def _write_frame(
    index: int,
    image: np.ndarray,
    prediction: Prediction,
    writers: Mapping[str, VideoWriter],
    targets: Mapping[str, Path],
    ids_name: str,
    class_set: ClassSet,
) -> None:
    for ending, writer in writers.items():
        if ending == "confidence.mp4":
            assert prediction.confidence is not None  # computed whenever it is written
            grey = confidence_image(prediction.confidence)
            writer.write(np.repeat(grey[..., None], 3, axis=2))
        elif ending == "color.mp4":
            writer.write(viz.colorize(prediction.mask, class_set))
        else:
            writer.write(viz.overlay(image, prediction.mask, class_set))
    if FRAMES in targets:
        ids = written_ids(class_set)[prediction.mask]
        viz.save_image(ids, targets[FRAMES] / f"{index:06d}_{ids_name}")


def _frame_record(
    index: int,
    time: float,
    image: np.ndarray,
    prediction: Prediction,
    profile: DomainProfile | None,
    class_set: ClassSet,
) -> dict[str, Any]:
    """A frame's line in ``predictions.json``: when it is, its mean confidence, and (with a
    profile) its distance from the training images' appearance and its warnings."""
    record: dict[str, Any] = {"frame": index, "time": round(time, 3)}
    if prediction.confidence is not None:
        record["mean_confidence"] = round(float(prediction.confidence.mean()), 4)
    if profile is not None:
        found = check(profile, image, prediction.mask, prediction.confidence, class_set)
        record["appearance_distance"] = found.scores["appearance_distance"]
        record["warnings"] = found.warnings
    return record
