"""Class statistics of masks: pixel shares, median-frequency weights, rare-class sampling weights."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unetseg.core.classes import IGNORE_INDEX, ClassSet
from unetseg.core.parallel import parallel_map
from unetseg.data.io import DataError, Sample, read_train_ids

# A class counts as present in an image from this share of its pixels on, so that a few stray
# pixels (a distant speck, a resize artefact) do not make an image one to draw for that class.
PRESENT_SHARE = 0.001


@dataclass
class ClassStats:
    """Pixel counts of one split at the original resolution.

    ``present_pixels[c]`` is the number of labelled (not ignored) pixels of the images in which
    class ``c`` appears: the denominator of Eigen & Fergus' class frequency.
    """

    names: list[str]
    pixels: np.ndarray  # (C,) int64 pixels per train id
    ignored: int  # pixels mapped to IGNORE_INDEX
    images: int
    present_pixels: np.ndarray  # (C,) int64

    @property
    def total(self) -> int:
        """All pixels, ignored ones included."""
        return int(self.pixels.sum()) + self.ignored

    @property
    def share(self) -> np.ndarray:
        """Percent of all pixels (ignored included) per class; with ``ignored_share`` sums to 100."""
        return 100.0 * self.pixels / max(self.total, 1)

    @property
    def ignored_share(self) -> float:
        """Percent of all pixels that are ignored."""
        return 100.0 * self.ignored / max(self.total, 1)

    def median_frequency_weights(self) -> list[float]:
        """Median-frequency balancing (Eigen & Fergus 2015): ``median(freq) / freq_c``.

        ``freq_c = pixels_c / present_pixels_c``. Ignored pixels count nowhere, as the loss never
        sees them. The median runs over the classes that occur; a class that never occurs gets
        weight 0: it contributes no loss anyway, and a finite value keeps the loss usable.
        """
        seen = self.pixels > 0
        freq = np.zeros(len(self.names))
        freq[seen] = self.pixels[seen] / self.present_pixels[seen]
        if not seen.any():
            return [0.0] * len(self.names)
        median = float(np.median(freq[seen]))
        weights = np.zeros(len(self.names))
        weights[seen] = median / freq[seen]
        return weights.tolist()


@dataclass(frozen=True)
class _MaskCounts:
    counts: np.ndarray | None  # (C,) pixels per train id
    ignored: int = 0
    problem: str | None = None


def _histogram(train_ids: np.ndarray, num_classes: int) -> _MaskCounts:
    counts = np.bincount(np.asarray(train_ids).ravel(), minlength=256).astype(np.int64)
    return _MaskCounts(counts[:num_classes], int(counts[IGNORE_INDEX]))


def _count_mask(sample: Sample, class_set: ClassSet) -> _MaskCounts:
    """Train-id histogram of one mask; problems are returned, not raised (runs in a worker)."""
    try:
        _, train_ids = read_train_ids(sample, class_set)
    except DataError as error:
        return _MaskCounts(None, problem=str(error))
    return _histogram(train_ids, class_set.num_classes)


def _accumulate(histograms: Iterable[_MaskCounts], names: Sequence[str]) -> ClassStats:
    """Sum per-mask histograms; DataError listing every problem among them."""
    pixels = np.zeros(len(names), dtype=np.int64)
    present_pixels = np.zeros(len(names), dtype=np.int64)
    ignored, images, problems = 0, 0, []
    for result in histograms:
        images += 1
        if result.counts is None:
            problems.append(result.problem)
            continue
        pixels += result.counts
        present_pixels[result.counts > 0] += result.counts.sum()
        ignored += result.ignored
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the masks:\n" + "\n".join(problems))
    return ClassStats(list(names), pixels, ignored, images, present_pixels)


def class_stats(
    samples: Sequence[Sample], class_set: ClassSet, progress: bool = True
) -> ClassStats:
    """Pixel counts per class over the masks of ``samples`` (images are not decoded).

    Raises DataError listing every problem (missing mask, unreadable file, unknown value).
    """
    if not samples:
        raise DataError("class statistics: no samples")
    counted = parallel_map(
        _count_mask, samples, class_set, description="class stats", unit="mask", progress=progress
    )
    return _accumulate(counted, class_set.names)


def stats_of_masks(masks: Iterable[np.ndarray], names: Sequence[str]) -> ClassStats:
    """Pixel counts of train-id masks already in memory (e.g. a training cache)."""
    return _accumulate((_histogram(mask, len(names)) for mask in masks), names)


def rare_class_weights(
    masks: np.ndarray, num_classes: int, temperature: float
) -> tuple[torch.Tensor, np.ndarray]:
    """Per-image weights of rare-class sampling (Hoyer et al., DAFormer, CVPR 2022).

    A class ``c`` is drawn with probability proportional to ``exp((1 - f_c) / temperature)``,
    ``f_c`` its share of the labelled pixels of ``masks`` (N, H, W train ids), then an image
    uniformly among those where ``c`` covers at least ``PRESENT_SHARE`` of the pixels. An image's
    weight is therefore the sum, over the classes present in it, of ``P(c) / images with c``.
    Returns the (N,) float64 weights and the (num_classes,) class probabilities (0 for a class
    present in no image).
    """
    counts = np.stack([_histogram(mask, num_classes).counts for mask in masks])
    present = counts >= PRESENT_SHARE * masks[0].size
    images_with = present.sum(axis=0)
    if not images_with.any():
        raise ValueError("rare-class sampling: no class covers enough of any image")
    share = counts.sum(axis=0) / counts.sum()
    # exp((1 - f) / T) is proportional to exp(-f / T); less its maximum, finite at any temperature
    logits = np.where(images_with > 0, -share / temperature, -np.inf)
    class_probability = np.exp(logits - logits.max())
    class_probability /= class_probability.sum()
    weights = present @ (class_probability / np.maximum(images_with, 1))
    return torch.from_numpy(weights), class_probability
