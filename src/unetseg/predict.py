"""Inference: masks for image files at their original resolution, from a checkpoint or ONNX model.

Each image is resized so that its area matches the training area (the scale the model learned),
its logits are upsampled back to the original size and arg-maxed. Optionally the prediction is
averaged with that of the mirrored image and/or of rescaled copies (test-time augmentation), or the
image is tiled at its own resolution with overlapping windows of the training size instead of being
shrunk.
"""

from __future__ import annotations

import collections
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from unetseg import viz
from unetseg.checkpoint import MODEL_INPUT, CheckpointError, model_from_checkpoint
from unetseg.config import Config
from unetseg.data.classes import ClassSet
from unetseg.data.io import DataError, list_images, read_rgb
from unetseg.data.transforms import to_model_input
from unetseg.model import SegmentationNet, check_input_size
from unetseg.runtime import Runtime, local_runtime, sigterm_as_interrupt

OVERLAY_QUALITY = 90
UPSAMPLE_ROWS = 256  # output rows upsampled at once: bounds memory to C x 256 x W floats
WINDOW_OVERLAP = 1 / 3


class Predictor:
    """Wraps a PyTorch checkpoint or an ONNX model; maps a [0, 1] float batch (N, 3, H, W) to
    float32 logits (N, C, H, W)."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        class_set: ClassSet,
        input_size: tuple[int, int],
        size_factor: int,
        device: torch.device,
    ) -> None:
        self._run = run
        self.class_set = class_set
        self.input_size = input_size  # training (width, height)
        self.size_factor = size_factor  # input sides must be multiples of it
        self.device = device  # where inputs go and where ``device_logits`` returns them

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "auto") -> Predictor:
        """A checkpoint's model in eval mode on ``device`` (auto: CUDA, then MPS, then CPU)."""
        model, config, class_set = model_from_checkpoint(path)
        return cls.from_model(
            model, config, class_set, local_runtime(device, config.train.precision)
        )

    @classmethod
    def from_model(
        cls, model: SegmentationNet, config: Config, class_set: ClassSet, runtime: Runtime
    ) -> Predictor:
        """A loaded model with its run's configuration, at the runtime's precision and layout."""
        size = config.data.size
        return cls(
            _torch_runner(model, runtime),
            class_set,
            (size[0], size[1]),
            model.size_factor,
            runtime.device,
        )

    @classmethod
    def from_onnx(cls, path: Path, meta: dict[str, Any]) -> Predictor:
        """An exported ONNX model on the CPU; ``meta`` is the JSON that export wrote beside it."""
        import onnxruntime as ort

        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        # Spinning idle threads would steal the cores that torch and the image codecs need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

        def run(batch: torch.Tensor) -> torch.Tensor:
            images = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
            return torch.from_numpy(session.run(["logits"], {"images": images})[0])

        if meta.get("input") != MODEL_INPUT:
            raise CheckpointError(
                f"{path}: exported by an older unetseg (it takes normalised images); "
                "export the checkpoint again"
            )
        width, height = meta["input_size"]
        return cls(
            run,
            ClassSet.from_dict(meta["class_set"]),
            (width, height),
            int(meta["size_factor"]),
            torch.device("cpu"),
        )

    @torch.inference_mode()
    def device_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits left on ``self.device`` (for post-processing there)."""
        check_input_size(batch.shape[-2], batch.shape[-1], self.size_factor)
        return self._run(batch.to(self.device)).float()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits as a CPU tensor."""
        return self.device_logits(batch).cpu()


def _torch_runner(
    model: SegmentationNet, runtime: Runtime
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's forward pass with the runtime's precision and memory layout."""
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = model.to(device=runtime.device, memory_format=layout).eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(runtime.prepare_input(batch))

    return run


def inference_size(
    width: int, height: int, train_size: tuple[int, int], factor: int
) -> tuple[int, int]:
    """Scale the image so its area matches the training area (keeping aspect ratio), each side
    rounded to a multiple of ``factor`` (at least ``factor``)."""
    scale = math.sqrt(train_size[0] * train_size[1] / (width * height))
    return _round_to(width * scale, factor), _round_to(height * scale, factor)


def _round_to(side: float, factor: int) -> int:
    return max(1, math.floor(side / factor + 0.5)) * factor


def _ceil_to(side: int, factor: int) -> int:
    return -(-side // factor) * factor


@torch.inference_mode()
def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    tta: bool = False,
    sliding_window: bool = False,
    batch_size: int = 4,
    scales: Sequence[float] = (1.0,),
) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 train ids at the image's own resolution.

    By default the image is resized to ``inference_size``, and the logits are upsampled back
    (bilinear) and arg-maxed. ``tta`` averages the softmax with that of the mirrored image.
    ``sliding_window`` instead tiles the full-resolution image with windows of the training size
    (1/3 overlap, ``batch_size`` windows per forward pass), averaging softmax where they overlap.
    ``scales`` (resize path only) averages the softmax over the inference size times each scale.
    """
    check_scales(scales, sliding_window)
    if sliding_window:
        return _predict_sliding(predictor, image, tta, batch_size)
    return _predict_resized(predictor, [image], tta, scales)[0]


def check_scales(scales: Sequence[float], sliding_window: bool) -> None:
    """Multi-scale test-time augmentation needs positive scales and the resize path."""
    if not scales or any(not 0 < s <= 4 for s in scales):
        raise ValueError(f"test-time scales must lie in (0, 4], got {list(scales)}")
    if sliding_window and list(scales) != [1.0]:
        raise ValueError(
            "multi-scale test-time augmentation cannot be combined with sliding windows"
        )


def _predict_resized(
    predictor: Predictor,
    images: list[np.ndarray],
    tta: bool,
    scales: Sequence[float] = (1.0,),
) -> list[np.ndarray]:
    """Masks of images that share one inference size, one forward pass per scale."""
    height, width = images[0].shape[:2]
    factor = predictor.size_factor
    base = inference_size(width, height, predictor.input_size, factor)
    softmax = tta or len(scales) > 1  # logits of different passes are not comparable
    scores = None
    for scale in scales:
        size = (_round_to(base[0] * scale, factor), _round_to(base[1] * scale, factor))
        resized = [
            np.asarray(Image.fromarray(i).resize(size, Image.Resampling.BILINEAR)) for i in images
        ]
        batch = torch.from_numpy(np.stack(resized)).to(predictor.device)
        part = _scores(predictor, to_model_input(batch), tta, softmax)
        if size != base:
            part = F.interpolate(part, size=base[::-1], mode="bilinear", align_corners=False)
        scores = part if scores is None else scores + part
    return [
        _upsample_argmax(s, i.shape[0], i.shape[1]).cpu().numpy() for s, i in zip(scores, images)
    ]


def _scores(predictor: Predictor, x: torch.Tensor, tta: bool, softmax: bool) -> torch.Tensor:
    """Logits, or softmax when ``softmax``; with ``tta`` the mean softmax of x and its mirror."""
    if not tta:
        logits = predictor.device_logits(x)
        return logits.softmax(1) if softmax else logits
    probabilities = predictor.device_logits(torch.cat([x, x.flip(-1)])).softmax(1)
    direct, mirrored = probabilities.chunk(2)
    return (direct + mirrored.flip(-1)) / 2


def _upsample_argmax(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Arg-max of (C, h, w) scores upsampled bilinearly (as align_corners=False) to (H, W) uint8.

    Widened in one go, then interpolated vertically a band of rows at a time, so that a huge
    image never holds all C full-resolution score planes at once. Classes are made the last,
    contiguous axis: the arg-max over them is then fastest.
    """
    rows = scores.shape[1]
    wide = F.interpolate(scores[None], size=(rows, width), mode="bilinear", align_corners=False)
    wide = wide[0].permute(1, 2, 0).contiguous()  # (h, W, C)
    output_rows = torch.arange(height, device=scores.device)
    source = ((output_rows + 0.5) * (rows / height) - 0.5).clamp(min=0)
    top = source.floor().long().clamp(max=rows - 1)
    bottom = (top + 1).clamp(max=rows - 1)
    weight = (source - top).view(-1, 1, 1)
    mask = torch.empty(height, width, dtype=torch.uint8, device=scores.device)
    for start in range(0, height, UPSAMPLE_ROWS):
        band = slice(start, start + UPSAMPLE_ROWS)
        mixed = torch.lerp(wide[top[band]], wide[bottom[band]], weight[band])
        mask[band] = mixed.argmax(-1).to(torch.uint8)
    return mask


def _predict_sliding(
    predictor: Predictor, image: np.ndarray, tta: bool, batch_size: int
) -> np.ndarray:
    """Mean softmax of overlapping training-size windows over the full-resolution image."""
    height, width = image.shape[:2]
    window_w = min(predictor.input_size[0], _ceil_to(width, predictor.size_factor))
    window_h = min(predictor.input_size[1], _ceil_to(height, predictor.size_factor))
    x = torch.tensor(image)[None].to(predictor.device)
    x = _pad(to_model_input(x), window_h, window_w)
    windows = [
        (slice(top, top + window_h), slice(left, left + window_w))
        for top in _window_starts(x.shape[2], window_h)
        for left in _window_starts(x.shape[3], window_w)
    ]
    total = torch.zeros(predictor.class_set.num_classes, *x.shape[2:], device=predictor.device)
    count = torch.zeros(1, *x.shape[2:], device=predictor.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        crops = torch.cat([x[..., rows, columns] for rows, columns in chunk])
        for (rows, columns), p in zip(chunk, _scores(predictor, crops, tta, softmax=True)):
            total[:, rows, columns] += p
            count[:, rows, columns] += 1
    mean = total[:, :height, :width] / count[:, :height, :width]
    return mean.argmax(0).to(torch.uint8).cpu().numpy()


def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad bottom/right up to at least (height, width): mirrored where the image is big enough,
    else mid-grey."""
    pad_h, pad_w = max(0, height - x.shape[2]), max(0, width - x.shape[3])
    if not pad_h and not pad_w:
        return x
    if pad_h < x.shape[2] and pad_w < x.shape[3]:
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return F.pad(x, (0, pad_w, 0, pad_h), mode="constant", value=0.5)


def _window_starts(side: int, window: int) -> list[int]:
    """Window offsets along one side: stride 2/3 of the window, the last flush with the end."""
    stride = max(1, round(window * (1 - WINDOW_OVERLAP)))
    count = -(-max(0, side - window) // stride) + 1
    return [min(i * stride, side - window) for i in range(count)]


@dataclass
class PredictReport:
    """What a ``predict_paths`` run did: the colour file per written image, and the failures."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    index: int
    source: Path
    stem: Path  # the output path without the "_color.png" etc. ending

    def targets(self, class_set: ClassSet) -> list[Path]:
        """The colour, overlay and id mask paths."""
        ids = "labelIds" if class_set.label_ids is not None else "trainIds"
        endings = ("color.png", "overlay.jpg", f"{ids}.png")
        return [self.stem.with_name(f"{self.stem.name}_{ending}") for ending in endings]


def predict_paths(
    inputs: Sequence[Path],
    output: Path,
    predictor: Predictor,
    batch_size: int = 4,
    tta: bool = False,
    sliding_window: bool = False,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
) -> PredictReport:
    """Write colour, overlay and id masks for every image in ``inputs`` (files and folders).

    Outputs keep an input folder's sub-folders below ``output`` and the original image size.
    Unreadable images, and images whose outputs would replace an input file, are reported in
    ``failed`` (and on stderr) and skipped. Images of one inference size are batched together;
    decoding and writing run in background threads.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    check_scales(scales, sliding_window)
    report = PredictReport()
    jobs = _plan(inputs, output, predictor.class_set, report)
    workers = min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict-io")
    bar = tqdm(total=len(jobs) + len(report.failed), disable=not progress, unit="image")
    bar.update(len(report.failed))
    writer = _Writer(pool, predictor.class_set, report, bar, depth=2 * workers)
    batcher = _Batcher(predictor, batch_size, tta, scales, writer)
    with sigterm_as_interrupt():  # SIGTERM: the same clean stop as Ctrl-C
        try:
            for job, image in _read_ahead(pool, jobs, 2 * batch_size, writer):
                if sliding_window:
                    mask = predict_image(predictor, image, tta, True, batch_size)
                    writer.submit(job, image, mask)
                else:
                    batcher.add(job, image)
            batcher.flush()
            writer.drain()
        finally:
            # On Ctrl-C: drop queued work; running writes finish (and are atomic anyway).
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    report.written = [path for _, path in sorted(writer.written)]
    return report


def _plan(
    inputs: Sequence[Path], output: Path, class_set: ClassSet, report: PredictReport
) -> list[_Job]:
    """One job per distinct image; images whose outputs would collide or replace an input fail."""
    sources: list[tuple[Path, Path]] = []  # (file, output stem relative to ``output``)
    for item in inputs:
        if item.is_dir():
            sources += [
                (f, f.relative_to(item).with_suffix(""))
                for f in list_images(item)
                if not _is_output_inside(f, item, output)
            ]
        else:
            sources.append((item, Path(item.stem)))
    protected = {f.resolve(): f for f, _ in sources}
    claimed: dict[Path, Path] = {}
    seen: set[Path] = set()
    jobs: list[_Job] = []
    for source, relative in sources:
        if source.resolve() in seen:
            continue  # the same file given twice (e.g. a folder and a file in it)
        seen.add(source.resolve())
        job = _Job(len(jobs), source, output / relative)
        problem = _output_problem(job, class_set, protected, claimed)
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
    job: _Job, class_set: ClassSet, protected: dict[Path, Path], claimed: dict[Path, Path]
) -> str | None:
    """Why ``job`` may not write its outputs (None: it may, and they are claimed for it)."""
    targets = job.targets(class_set)
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

    for job in jobs:
        queue.append((job, pool.submit(read_rgb, job.source)))
        if len(queue) > depth:
            yield from oldest()
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
        writer: _Writer,
    ) -> None:
        self.predictor, self.batch_size, self.writer = predictor, batch_size, writer
        self.tta, self.scales = tta, scales
        self.groups: dict[tuple[int, int], list[tuple[_Job, np.ndarray]]] = {}

    def add(self, job: _Job, image: np.ndarray) -> None:
        predictor = self.predictor
        size = inference_size(
            image.shape[1], image.shape[0], predictor.input_size, predictor.size_factor
        )
        self.groups.setdefault(size, []).append((job, image))
        if len(self.groups[size]) >= self.batch_size:
            self._run(size)
        elif sum(map(len, self.groups.values())) >= 4 * self.batch_size:
            # Many sizes, few images each: bound the decoded images held in memory.
            self._run(max(self.groups, key=lambda s: len(self.groups[s])))

    def flush(self) -> None:
        for size in list(self.groups):
            self._run(size)

    def _run(self, size: tuple[int, int]) -> None:
        group = self.groups.pop(size)
        images = [image for _, image in group]
        masks = _predict_resized(self.predictor, images, self.tta, self.scales)
        for (job, image), mask in zip(group, masks):
            self.writer.submit(job, image, mask)


class _Writer:
    """Writes each image's outputs in the pool, with at most ``depth`` images in flight."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        class_set: ClassSet,
        report: PredictReport,
        bar: tqdm,
        depth: int,
    ) -> None:
        self.pool = pool
        self.class_set = class_set
        self.report = report
        self.bar = bar
        self.depth = depth
        self.written: list[tuple[int, Path]] = []  # (job index, colour file)
        self.in_flight: collections.deque[tuple[_Job, Future[None]]] = collections.deque()
        # Train id -> the id written to the mask file (Cityscapes label id, else the train id).
        self.id_table = np.zeros(256, dtype=np.uint8)
        self.id_table[: class_set.num_classes] = class_set.label_ids or range(class_set.num_classes)

    def submit(self, job: _Job, image: np.ndarray, mask: np.ndarray) -> None:
        self.in_flight.append((job, self.pool.submit(self._write, job, image, mask)))
        while len(self.in_flight) > self.depth:
            self._finish_oldest()

    def drain(self) -> None:
        while self.in_flight:
            self._finish_oldest()

    def fail(self, job: _Job, message: str) -> None:
        _fail(self.report, job.source, message)
        self.bar.update()

    def _finish_oldest(self) -> None:
        job, future = self.in_flight.popleft()
        try:
            future.result()
        except (OSError, ValueError) as error:
            self.fail(job, f"{job.source}: cannot write outputs: {error}")
            return
        self.written.append((job.index, job.targets(self.class_set)[0]))
        self.bar.update()

    def _write(self, job: _Job, image: np.ndarray, mask: np.ndarray) -> None:
        color, blend, ids = job.targets(self.class_set)
        viz.save_image(viz.colorize(mask, self.class_set), color)
        viz.save_image(viz.overlay(image, mask, self.class_set), blend, quality=OVERLAY_QUALITY)
        viz.save_image(self.id_table[mask], ids)
