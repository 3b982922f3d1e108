"""``unetseg predict``: colour masks, overlays and id masks for image files and folders, and
colour and overlay videos for clips (``commands/video.py``).

Images are decoded and outputs written in background threads; images of one inference size are
predicted as one batch (``engine.inference`` does the maths).
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetseg.commands.outputs import (
    FOLDER_FILES,
    clip_endings,
    ids_ending,
    output_endings,
    write_legend,
    write_outputs,
)
from unetseg.commands.video import ClipSettings, predict_clip
from unetseg.core.classes import ClassSet
from unetseg.core.config import check_scales
from unetseg.core.files import write_json
from unetseg.core.runtime import sigterm_as_interrupt
from unetseg.data.io import IMAGE_EXTENSIONS, DataError, list_images, read_rgb
from unetseg.data.video import VIDEO_EXTENSIONS, is_video
from unetseg.engine.domain import DomainCheck, DomainProfile, check
from unetseg.engine.inference import Prediction, Predictor, inference_size, predict_batch, segment

# Decoded images waiting or being written, in pixels: a few large photos, or many small ones,
# never many large ones at once (memory stays bounded whatever their number).
PIXELS_IN_FLIGHT = 32_000_000
MEDIA = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS  # what a folder is searched for


@dataclass
class PredictReport:
    """What a ``predict_paths`` run did: the first output file per written image or clip (the
    colour mask, or the id mask alone), the failures, and the inputs the domain check warned
    about."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason naming it)
    warned: list[Path] = field(default_factory=list)
    checked: bool = False  # whether the model had a domain profile to check inputs against


@dataclass(frozen=True)
class _Job:
    index: int
    source: Path
    stem: Path  # the output path without the "_color.png" etc. ending
    endings: tuple[str, ...]

    def targets(self) -> list[Path]:
        """This input's output paths, one per ending."""
        return [self.stem.with_name(f"{self.stem.name}_{ending}") for ending in self.endings]


def predict_paths(
    inputs: Sequence[Path],
    output: Path,
    predictor: Predictor,
    batch_size: int = 4,
    tta: bool = False,
    sliding_window: bool = False,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
    ids_only: bool = False,
    confidence: bool = False,
    domain_check: bool = True,
    frames: bool = False,
) -> PredictReport:
    """Write colour, overlay and id masks (``ids_only``: id masks alone) for every image in
    ``inputs`` (files and folders), ``classes.json`` + ``legend.png`` for reading them, and
    ``predictions.json``: each input's outputs and domain check. With ``confidence``, also
    ``X_confidence.png``: each pixel's confidence (the maximum of the calibrated softmax) as
    0-255 grey. With ``domain_check``, each input that lies far outside the model's training
    data (``engine/domain.py``) gets a "warning:" line naming how.

    Video files (``data.video.VIDEO_EXTENSIONS``) get ``X_color.mp4`` and ``X_overlay.mp4``
    (``confidence``: also ``X_confidence.mp4``), with ``frames`` (or ``ids_only``) a folder
    ``X_frames`` of per-frame id masks, and each frame's confidence and domain check in
    ``predictions.json``. On Ctrl-C, what was done is kept and listed there.

    Outputs keep an input folder's sub-folders below ``output`` and the original image size.
    Unreadable images, and images whose outputs would replace an input file, are reported in
    ``failed`` (and on stderr) and skipped. Images of one inference size are batched together;
    decoding and writing run in background threads.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    check_scales(scales, sliding_window)
    profile = predictor.domain if domain_check else None
    report = PredictReport(checked=profile is not None)
    endings = output_endings(predictor.class_set, ids_only, confidence)
    endings_of_clips = clip_endings(ids_only, confidence, frames)
    confidence = confidence or profile is not None  # the check compares mean confidence
    jobs = _plan(inputs, output, endings, endings_of_clips, report)
    clips = [job for job in jobs if is_video(job.source)]
    workers = min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict-io")
    bar = tqdm(total=len(jobs) + len(report.failed), disable=not progress, unit="input")
    bar.update(len(report.failed))
    writer = _Writer(pool, predictor.class_set, profile, report, bar, 2 * workers)
    batcher = _Batcher(predictor, batch_size, tta, scales, confidence, writer)
    with sigterm_as_interrupt():  # SIGTERM: the same clean stop as Ctrl-C
        try:
            images = [job for job in jobs if not is_video(job.source)]
            for job, image in _read_ahead(pool, images, 2 * batch_size, writer):
                if sliding_window:
                    found = segment(predictor, image, tta, True, batch_size, confidence=confidence)
                    writer.submit(job, image, found)
                else:
                    batcher.add(job, image)
            batcher.flush()
            writer.drain()
            settings = ClipSettings(batch_size, tta, tuple(scales), sliding_window, confidence)
            for job in clips:
                writer.clip(job, predictor, settings, progress)
        finally:
            # On Ctrl-C: drop queued work; running writes finish (and are atomic anyway), and
            # what was finished is listed.
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            _finish(report, writer, output, predictor.class_set)
    return report


def _finish(report: PredictReport, writer: _Writer, output: Path, class_set: ClassSet) -> None:
    """The report's lists, and the folder's legend and ``predictions.json``."""
    report.written = [path for _, path in sorted(writer.written)]
    report.warned = [source for _, source in sorted(writer.warned)]
    if report.written:
        write_legend(output, class_set)
        entries = [entry for _, entry in sorted(writer.entries, key=lambda e: e[0])]
        write_json(output / FOLDER_FILES[2], {"domain_check": report.checked, "inputs": entries})


def _plan(
    inputs: Sequence[Path],
    output: Path,
    endings: tuple[str, ...],
    endings_of_clips: tuple[str, ...],
    report: PredictReport,
) -> list[_Job]:
    """One job per distinct image or clip; inputs whose outputs would collide or replace an
    input fail."""
    sources: list[tuple[Path, Path]] = []  # (file, output stem relative to ``output``)
    for item in inputs:
        if item.is_dir():
            found = [f for f in list_images(item, MEDIA) if not _is_output_inside(f, item, output)]
            if not found:
                raise DataError(f"{item}: no images or clips in this folder ({', '.join(MEDIA)})")
            sources += [(f, f.relative_to(item).with_suffix("")) for f in found]
        else:
            sources.append((item, Path(item.stem)))
    protected = {f.resolve(): f for f, _ in sources}
    # The folder's own files: no image's outputs, nor an input, may be them.
    claimed: dict[Path, Path] = {(output / n).resolve(): Path(n) for n in FOLDER_FILES}
    for name in FOLDER_FILES:
        if (output / name).resolve() in protected:
            _fail(report, output / name, f"{output / name}: an input where {name} goes")
            return []
    seen: set[Path] = set()
    jobs: list[_Job] = []
    for source, relative in sources:
        if source.resolve() in seen:
            continue  # the same file given twice (e.g. a folder and a file in it)
        seen.add(source.resolve())
        kind = endings_of_clips if is_video(source) else endings
        job = _Job(len(jobs), source, output / relative, kind)
        problem = _output_problem(job, protected, claimed)
        if problem:
            _fail(report, source, problem)
        else:
            jobs.append(job)
    return jobs


def _is_output_inside(file: Path, folder: Path, output: Path) -> bool:
    """Whether ``file`` lies in ``output`` placed below the input ``folder`` (an earlier run's
    results, which would otherwise be segmented again on every run)."""
    output, folder = output.resolve(), folder.resolve()
    return (
        output != folder and output.is_relative_to(folder) and file.resolve().is_relative_to(output)
    )


def _output_problem(
    job: _Job, protected: dict[Path, Path], claimed: dict[Path, Path]
) -> str | None:
    """Why ``job`` may not write its outputs (None: it may, and they are claimed for it)."""
    targets = job.targets()
    for target in targets:
        resolved = target.resolve()
        if resolved in protected:
            return f"{job.source}: output {target} would overwrite input {protected[resolved]}"
        if resolved in claimed:
            return f"{job.source}: output {target} is already claimed by {claimed[resolved]}"
    claimed.update((target.resolve(), job.source) for target in targets)
    return None


def _fail(report: PredictReport, source: Path, message: str) -> None:
    report.failed.append((source, message))
    tqdm.write(f"skipped: {message}", file=sys.stderr)


def _read_ahead(
    pool: ThreadPoolExecutor, jobs: list[_Job], depth: int, writer: _Writer
) -> Iterator[tuple[_Job, np.ndarray]]:
    """Decoded images in job order, up to ``depth`` decoding ahead; unreadable ones reported."""
    queue: collections.deque[tuple[_Job, Future[np.ndarray]]] = collections.deque()

    def oldest() -> Iterator[tuple[_Job, np.ndarray]]:
        job, future = queue.popleft()
        try:
            yield job, future.result()
        except DataError as error:
            writer.fail(job, str(error))

    last_pixels = PIXELS_IN_FLIGHT  # one at a time until an image's size is known
    for job in jobs:
        queue.append((job, pool.submit(read_rgb, job.source)))
        # As deep as ``depth`` for small images, shallower as the last decoded one was larger.
        while len(queue) > max(1, min(depth, PIXELS_IN_FLIGHT // last_pixels)):
            for decoded in oldest():
                last_pixels = decoded[1].shape[0] * decoded[1].shape[1]
                yield decoded
    while queue:
        yield from oldest()


class _Batcher:
    """Groups images by inference size and predicts a group once it holds ``batch_size``."""

    def __init__(
        self,
        predictor: Predictor,
        batch_size: int,
        tta: bool,
        scales: Sequence[float],
        confidence: bool,
        writer: _Writer,
    ) -> None:
        self.predictor, self.batch_size, self.writer = predictor, batch_size, writer
        self.tta, self.scales, self.confidence = tta, scales, confidence
        self.groups: dict[tuple[int, int], list[tuple[_Job, np.ndarray]]] = {}

    def add(self, job: _Job, image: np.ndarray) -> None:
        predictor = self.predictor
        size = inference_size(
            image.shape[1], image.shape[0], predictor.input_size, predictor.size_factor
        )
        self.groups.setdefault(size, []).append((job, image))
        if len(self.groups[size]) >= self.batch_size:
            self._run(size)
        elif sum(map(len, self.groups.values())) >= 4 * self.batch_size or self._pixels() > (
            PIXELS_IN_FLIGHT
        ):
            # Many sizes, few images each, or large ones: bound the decoded images held.
            self._run(max(self.groups, key=lambda s: len(self.groups[s])))

    def flush(self) -> None:
        for size in list(self.groups):
            self._run(size)

    def _pixels(self) -> int:
        return sum(image.shape[0] * image.shape[1] for g in self.groups.values() for _, image in g)

    def _run(self, size: tuple[int, int]) -> None:
        group = self.groups.pop(size)
        images = [image for _, image in group]
        found = predict_batch(self.predictor, images, self.tta, self.scales, self.confidence)
        for (job, image), prediction in zip(group, found):
            self.writer.submit(job, image, prediction)


class _Writer:
    """Writes each image's outputs in the pool, with at most ``depth`` images in flight, and
    each clip's (streamed, in this thread)."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        class_set: ClassSet,
        profile: DomainProfile | None,
        report: PredictReport,
        bar: tqdm,
        depth: int,
    ) -> None:
        self.pool = pool
        self.class_set = class_set
        self.profile = profile
        self.report = report
        self.bar = bar
        self.depth = depth
        # By job index: the first output file, the predictions.json entry, the warned inputs.
        self.written: list[tuple[int, Path]] = []
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self.warned: list[tuple[int, Path]] = []
        # (job, its write and check, its pixels)
        self.in_flight: collections.deque[tuple[_Job, Future[DomainCheck | None], int]] = (
            collections.deque()
        )

    def submit(self, job: _Job, image: np.ndarray, prediction: Prediction) -> None:
        pixels = prediction.mask.size
        write = self.pool.submit(self._write_and_check, job, image, prediction)
        self.in_flight.append((job, write, pixels))
        while len(self.in_flight) > 1 and (
            len(self.in_flight) > self.depth
            or sum(p for _, _, p in self.in_flight) > PIXELS_IN_FLIGHT
        ):
            self._finish_oldest()

    def drain(self) -> None:
        while self.in_flight:
            self._finish_oldest()

    def fail(self, job: _Job, message: str) -> None:
        _fail(self.report, job.source, message)
        self.bar.update()

    def _finish_oldest(self) -> None:
        job, future, _ = self.in_flight.popleft()
        try:
            found = future.result()
        except (OSError, ValueError) as error:
            self.fail(job, f"{job.source}: cannot write outputs: {error}")
            return
        entry = {"source": str(job.source), "outputs": [str(t) for t in job.targets()]}
        entry["domain"] = found and found.to_dict()
        self._record(job, entry, "; ".join(found.warnings) if found and found.outside else None)

    def clip(self, job: _Job, predictor: Predictor, settings: ClipSettings, progress: bool) -> None:
        """Predict and write one clip (KeyboardInterrupt once what was done is recorded)."""
        targets = dict(zip(job.endings, job.targets()))
        ids_name = ids_ending(self.class_set)
        try:
            found = predict_clip(
                job.source, targets, predictor, settings, self.profile, ids_name, progress
            )
        except (DataError, OSError) as error:
            self.fail(job, str(error) if isinstance(error, DataError) else f"{job.source}: {error}")
            return
        self._record(job, found.entry, found.warning)
        if found.stopped:
            frames = found.entry["frames"]
            tqdm.write(f"stopped: {job.source} after {frames} frames, kept", file=sys.stderr)
            raise KeyboardInterrupt

    def _record(self, job: _Job, entry: dict[str, Any], warning: str | None) -> None:
        self.written.append((job.index, job.targets()[0]))
        self.entries.append((job.index, entry))
        if warning:
            self.warned.append((job.index, job.source))
            tqdm.write(f"warning: {job.source}: {warning}", file=sys.stderr)
        self.bar.update()

    def _write_and_check(
        self, job: _Job, image: np.ndarray, prediction: Prediction
    ) -> DomainCheck | None:
        write_outputs(job.targets(), image, prediction, self.class_set)
        if self.profile is None:
            return None
        return check(self.profile, image, prediction.mask, prediction.confidence, self.class_set)
