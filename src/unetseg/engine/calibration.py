"""Calibrated confidence by temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks").

A segmentation network's softmax is usually over-confident: pixels predicted with 0.95 are right
less often than 95% of the time. One scalar T, fitted on validation pixels by minimising the
cross-entropy of ``softmax(logits / T)``, mostly fixes that; dividing by it never changes an
arg-max, so masks and scores stay what they were. The model keeps T as its ``temperature`` buffer
(``core/model.py``), so checkpoints, safetensors and ONNX exports all carry it.

The expected calibration error (ECE) is the pixel-weighted mean gap between accuracy and mean
confidence over 15 equal-width confidence bins, as in Guo et al.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unetseg.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, unwrap
from unetseg.core.classes import IGNORE_INDEX
from unetseg.core.runtime import Runtime
from unetseg.data.transforms import prepare_batch
from unetseg.engine import viz
from unetseg.engine.domain import DomainProfile

BINS = 15
SAMPLE_PIXELS = 1_000_000  # validation pixels the temperature is fitted on (a random sample)
IMAGE_PIXELS = 512  # pixels per val image whose mean confidence the domain check compares with


@dataclasses.dataclass
class Reliability:
    """Pixels per confidence bin, their summed confidence and how many were predicted right."""

    count: np.ndarray
    confidence: np.ndarray
    correct: np.ndarray

    @classmethod
    def empty(cls, bins: int = BINS) -> Reliability:
        return cls(*(np.zeros(bins, dtype=np.float64) for _ in range(3)))

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count (P, C) logits against (P,) labels (no ignored pixels among them)."""
        confidence, predicted = logits.float().softmax(-1).max(-1)
        self.add_confidence(confidence.cpu().numpy(), (predicted == labels).cpu().numpy())

    def add_confidence(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Count pixels' confidences in [0, 1] against whether each was predicted right."""
        bins = len(self.count)
        index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1).ravel()
        # Summed in float64: a million pixels' confidences.
        self.count += np.bincount(index, minlength=bins)
        self.confidence += np.bincount(index, confidence.ravel().astype(np.float64), minlength=bins)
        self.correct += np.bincount(index, correct.ravel().astype(np.float64), minlength=bins)

    def ece(self) -> float:
        """Expected calibration error: sum over bins of |accuracy - confidence| x pixel share."""
        if self.count.sum() == 0:
            return math.nan
        return float(np.abs(self.correct - self.confidence).sum() / self.count.sum())

    def accuracy(self) -> np.ndarray:
        """Accuracy per bin (NaN where a bin holds no pixel)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.correct / self.count

    def to_dict(self) -> dict[str, Any]:
        accuracy = [None if math.isnan(a) else float(a) for a in self.accuracy()]
        return {"ece": self.ece(), "count": self.count.tolist(), "accuracy": accuracy}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the mean cross-entropy of ``softmax(logits / T)`` on (P, C) logits
    and (P,) labels: L-BFGS over log T, so that T stays positive."""
    logits, labels = logits.detach().float().clone(), labels.detach().clone()  # out of inference
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


@torch.inference_mode()
def sample_pixels(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    fraction: float,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C) float32 logits and (P,) labels of a random ``fraction`` of the labelled pixels;
    and (N, IMAGE_PIXELS, C) logits of random pixels of each image, labelled or not."""
    generator = torch.Generator(device=runtime.device).manual_seed(seed)
    model.eval()
    kept_logits, kept_labels, per_image = [], [], []
    for images, masks in loader:
        x, y = prepare_batch(images.to(runtime.device), masks.to(runtime.device))
        with runtime.autocast():
            logits = model(runtime.prepare_input(x)).float()
        draw = torch.rand(y.shape, generator=generator, device=runtime.device)
        keep = (y != IGNORE_INDEX) & (draw < fraction)
        kept_logits.append(logits.permute(0, 2, 3, 1)[keep].cpu())
        kept_labels.append(y[keep].cpu())
        flat = logits.flatten(2)  # (N, C, H*W)
        pixels = torch.randint(
            flat.shape[2], (IMAGE_PIXELS,), generator=generator, device=runtime.device
        )
        per_image.append(flat[:, :, pixels].transpose(1, 2).cpu())
    return torch.cat(kept_logits), torch.cat(kept_labels), torch.cat(per_image)


@dataclasses.dataclass
class Calibration:
    """A fitted temperature, and the reliability of the sampled pixels before and after it
    (``before`` None: measured with the temperature only, as ``predict`` reports confidence)."""

    temperature: float
    before: Reliability | None
    after: Reliability
    image_confidence: list[float] = dataclasses.field(default_factory=list)  # per val image

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "ece_before": None if self.before is None else self.before.ece(),
            "ece_after": self.after.ece(),
            "pixels": int(self.after.count.sum()),
            "before": None if self.before is None else self.before.to_dict(),
            "after": self.after.to_dict(),
        }

    def line(self) -> str:
        pixels = int(self.after.count.sum())
        if self.before is None:
            return (
                f"temperature {self.temperature:.3f}: expected calibration error "
                f"{self.after.ece():.4f} of the confidence predict writes ({pixels} pixels)"
            )
        return (
            f"temperature {self.temperature:.3f}: expected calibration error "
            f"{self.before.ece():.4f} -> {self.after.ece():.4f} ({pixels} pixels)"
        )

    def plot(self, path: Path, title: str) -> None:
        """The reliability diagram, without the temperature (where measured) and with it."""
        curves = {f"T = {self.temperature:.2f}": (self.after.accuracy(), self.after.ece())}
        if self.before is not None:
            curves = {"T = 1": (self.before.accuracy(), self.before.ece()), **curves}
        viz.plot_reliability(curves, path, title)


def calibrate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    total_pixels: int,
) -> Calibration:
    """Fit the model's temperature on ``loader`` (which holds ``total_pixels`` pixels) and set it;
    the temperature it had is the starting point (a calibrated model is fitted again)."""
    fraction = min(1.0, SAMPLE_PIXELS / max(total_pixels, 1))
    logits, labels, per_image = sample_pixels(model, loader, runtime, fraction)
    if len(labels) == 0:
        raise ValueError("no labelled validation pixels to calibrate on")
    scale = fit_temperature(logits, labels)
    before, after = Reliability.empty(), Reliability.empty()
    current = unwrap(model).temperature
    before.add(logits * current.item(), labels)  # the uncalibrated logits
    after.add(logits / scale, labels)
    current.mul_(scale)
    confidence = (per_image / scale).softmax(-1).amax(-1).mean(-1)
    return Calibration(float(current), before, after, confidence.tolist())


def store_calibration(
    path: Path, calibration: Calibration, profile: DomainProfile | None = None
) -> None:
    """Rewrite checkpoint ``path`` with the fitted temperature in its weights (and weight
    average), and the val images' confidence under it in its domain profile (``profile``, else
    the one the file has, if any)."""
    state = load_checkpoint(path)
    average = state.get("ema") or {}
    for weights in (state["model"], average.get("weights")):
        if weights is not None:
            weights["temperature"] = torch.tensor(calibration.temperature)
    domain = profile.to_dict() if profile is not None else state.get("domain")
    if domain is not None:
        state["domain"] = {**domain, "val_confidence": calibration.image_confidence}
    save_checkpoint(state, path)


def calibrate_file(
    path: Path,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    total_pixels: int,
    profile: DomainProfile | None = None,
) -> Calibration:
    """Fit the temperature of the model that checkpoint ``path`` ships, and store it there (with
    ``profile``, when given, as its domain profile)."""
    model = model_from_checkpoint(path)[0].to(runtime.device)
    calibration = calibrate(model, loader, runtime, total_pixels)
    store_calibration(path, calibration, profile)
    return calibration
