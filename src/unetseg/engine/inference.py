"""Inference: the mask of an image at its original resolution, from a checkpoint or ONNX model.

Each image is resized so that its area matches the training area (the scale the model learned),
its logits are upsampled back to the original size and arg-maxed. Optionally the prediction is
averaged with that of the mirrored image and/or of rescaled copies (test-time augmentation), or the
image is tiled at its own resolution with overlapping windows of the training size instead of being
shrunk. The confidence of each pixel is the maximum of the (calibrated) softmax, as upsampled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unetseg.core.checkpoint import MODEL_INPUT, CheckpointError, model_from_checkpoint
from unetseg.core.classes import ClassSet
from unetseg.core.config import Config, check_scales
from unetseg.core.extras import require
from unetseg.core.model import SegmentationNet, check_input_size
from unetseg.core.runtime import Runtime, local_runtime
from unetseg.data.io import read_rgb, to_rgb
from unetseg.data.transforms import to_model_input
from unetseg.engine.domain import DomainProfile

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
        domain: dict[str, Any] | None = None,
    ) -> None:
        self._run = run
        self.class_set = class_set
        self.input_size = input_size  # training (width, height)
        self.size_factor = size_factor  # input sides must be multiples of it
        self.device = device  # where inputs go and where ``device_logits`` returns them
        # What the training data looked like (None: a model from before the domain check).
        self.domain = DomainProfile.from_dict(domain) if domain else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Predictor:
        """A checkpoint's model (a ``.pt``, a ``model.safetensors`` with its JSON, or a run
        folder) in eval mode on ``device`` (auto: CUDA, then MPS, then CPU)."""
        model, config, class_set = model_from_checkpoint(path)
        return cls.from_model(
            model, config, class_set, local_runtime(device, config.train.precision)
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Predictor:
        """An ONNX model (``.onnx``, with the JSON ``unetseg export`` wrote beside it; CPU only)
        or, for any other path, ``from_checkpoint``."""
        path = Path(path)
        if path.suffix != ".onnx":
            return cls.from_checkpoint(path, device)
        meta = path.with_suffix(".json")
        if not meta.is_file():
            raise CheckpointError(f"{meta}: missing (written by `unetseg export` beside the model)")
        try:
            return cls.from_onnx(path, json.loads(meta.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            message = f"{meta}: not metadata written by `unetseg export` ({error})"
            raise CheckpointError(message) from None

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
            model.domain,
        )

    @classmethod
    def from_onnx(cls, path: Path, meta: dict[str, Any]) -> Predictor:
        """An exported ONNX model on the CPU; ``meta`` is the JSON that export wrote beside it."""
        ort = require("onnxruntime", "onnx", "ONNX inference")
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
            meta.get("domain"),
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


ImageLike = np.ndarray | Image.Image | str | Path


def as_rgb(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file, a PIL image, or an array: uint8 or float in [0, 1],
    RGB, RGBA (alpha dropped) or grey (H, W). ValueError for anything else."""
    if isinstance(image, (str, Path)):
        return read_rgb(Path(image))
    if isinstance(image, Image.Image):
        return to_rgb(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise ValueError(f"an image must be (H, W, 3) RGB or (H, W) grey, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"a float image must hold values in [0, 1], got {array.min()} to {array.max()}"
            )
        return (array * 255).round().astype(np.uint8)
    raise ValueError(f"an image must be uint8 or float in [0, 1], not {array.dtype}")


class Prediction(NamedTuple):
    """An image's (H, W) uint8 class ids and, when asked for, (H, W) float32 confidence."""

    mask: np.ndarray
    confidence: np.ndarray | None = None


def predict_image(
    predictor: Predictor,
    image: ImageLike,
    tta: bool = False,
    sliding_window: bool = False,
    batch_size: int = 4,
    scales: Sequence[float] = (1.0,),
) -> np.ndarray:
    """One image (see ``as_rgb``) -> (H, W) uint8 train ids at the image's own resolution.

    By default the image is resized to ``inference_size``, and the logits are upsampled back
    (bilinear) and arg-maxed. ``tta`` averages the softmax with that of the mirrored image.
    ``sliding_window`` instead tiles the full-resolution image with windows of the training size
    (1/3 overlap, ``batch_size`` windows per forward pass), averaging softmax where they overlap.
    ``scales`` (resize path only) averages the softmax over the inference size times each scale.
    """
    return segment(predictor, image, tta, sliding_window, batch_size, scales).mask


@torch.inference_mode()
def segment(
    predictor: Predictor,
    image: ImageLike,
    tta: bool = False,
    sliding_window: bool = False,
    batch_size: int = 4,
    scales: Sequence[float] = (1.0,),
    confidence: bool = False,
) -> Prediction:
    """As ``predict_image``, as a ``Prediction``: with ``confidence`` also each pixel's
    confidence, the maximum of the softmax in [0, 1], calibrated once the model's temperature
    has been fitted (at the end of training, or by ``unetseg calibrate``)."""
    check_scales(scales, sliding_window)
    rgb = as_rgb(image)
    if sliding_window:
        return _predict_sliding(predictor, rgb, tta, batch_size, confidence)
    return predict_batch(predictor, [rgb], tta, scales, confidence)[0]


def predict_batch(
    predictor: Predictor,
    images: list[np.ndarray],
    tta: bool,
    scales: Sequence[float] = (1.0,),
    confidence: bool = False,
) -> list[Prediction]:
    """Predictions of images that share one inference size, one forward pass per scale."""
    height, width = images[0].shape[:2]
    factor = predictor.size_factor
    base = inference_size(width, height, predictor.input_size, factor)
    # Logits of different passes are not comparable; a confidence is a probability.
    softmax = tta or len(scales) > 1 or confidence
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
    scores = scores / len(scales)  # the mean softmax: a probability, for the confidence
    return [_upsample(s, i.shape[0], i.shape[1], confidence) for s, i in zip(scores, images)]


def _scores(predictor: Predictor, x: torch.Tensor, tta: bool, softmax: bool) -> torch.Tensor:
    """Logits, or softmax when ``softmax``; with ``tta`` the mean softmax of x and its mirror."""
    if not tta:
        logits = predictor.device_logits(x)
        return logits.softmax(1) if softmax else logits
    probabilities = predictor.device_logits(torch.cat([x, x.flip(-1)])).softmax(1)
    direct, mirrored = probabilities.chunk(2)
    return (direct + mirrored.flip(-1)) / 2


def _upsample(scores: torch.Tensor, height: int, width: int, confidence: bool) -> Prediction:
    """Arg-max (and with ``confidence`` the maximum) of (C, h, w) scores upsampled bilinearly
    (as align_corners=False) to (H, W).

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
    best = torch.empty(height, width, device=scores.device) if confidence else None
    for start in range(0, height, UPSAMPLE_ROWS):
        band = slice(start, start + UPSAMPLE_ROWS)
        mixed = torch.lerp(wide[top[band]], wide[bottom[band]], weight[band])
        values, labels = mixed.max(-1)
        mask[band] = labels.to(torch.uint8)
        if best is not None:
            best[band] = values
    return _prediction(mask, best)


def _prediction(mask: torch.Tensor, confidence: torch.Tensor | None) -> Prediction:
    """Device tensors as the numpy arrays of a ``Prediction``."""
    kept = None if confidence is None else confidence.float().clamp(0, 1).cpu().numpy()
    return Prediction(mask.cpu().numpy(), kept)


def _predict_sliding(
    predictor: Predictor, image: np.ndarray, tta: bool, batch_size: int, confidence: bool
) -> Prediction:
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
    values, labels = mean.max(0)
    return _prediction(labels.to(torch.uint8), values if confidence else None)


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
