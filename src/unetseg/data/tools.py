"""Looking at a data set before training: class statistics, suggested weights and sample grids."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from unetseg.config import AugmentConfig  # noqa: E402
from unetseg.data.classes import IGNORE_INDEX, ClassSet  # noqa: E402
from unetseg.data.io import DataError, Sample, read_pair, read_train_ids, resize_pair  # noqa: E402
from unetseg.data.transforms import prepare_batch  # noqa: E402
from unetseg.files import atomic_path  # noqa: E402
from unetseg.parallel import parallel_map  # noqa: E402
from unetseg.viz import colorize, legend_strip, save_image  # noqa: E402

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


def _weights_source(stats: dict[str, ClassStats]) -> tuple[str, ClassStats]:
    """The split the weights are suggested from: train if present, else the first one."""
    split = "train" if "train" in stats else next(iter(stats))
    return split, stats[split]


def _check_same_classes(stats: dict[str, ClassStats]) -> list[str]:
    if not stats:
        raise ValueError("no splits to compare")
    names = next(iter(stats.values())).names
    if any(s.names != names for s in stats.values()):
        raise ValueError("the splits use different class sets")
    return names


def stats_table(stats: dict[str, ClassStats]) -> str:
    """A terminal table: class, percent of pixels per split, and weights from the train split."""
    names = _check_same_classes(stats)
    source, train = _weights_source(stats)
    weights = train.median_frequency_weights()
    width = max(len("(ignored)"), *(len(n) for n in names))
    weight_header = f"weight ({source})"
    header = f"{'class':<{width}}" + "".join(f"  {split:>9}" for split in stats)
    lines = [header + f"  {weight_header:>14}"]
    for c, name in enumerate(names):
        shares = "".join(f"  {s.share[c]:8.2f}%" for s in stats.values())
        lines.append(f"{name:<{width}}{shares}  {weights[c]:14.4f}")
    ignored = "".join(f"  {s.ignored_share:8.2f}%" for s in stats.values())
    lines.append(f"{'(ignored)':<{width}}{ignored}")
    lines.append(f"{'images':<{width}}" + "".join(f"  {s.images:9d}" for s in stats.values()))
    return "\n".join(lines)


def plot_stats(stats: dict[str, ClassStats], path: Path) -> None:
    """Grouped horizontal bars: percent of pixels per class (and ignored), one bar per split."""
    names = [*_check_same_classes(stats), "(ignored)"]
    bar_height = 0.8 / len(stats)
    figure, axis = plt.subplots(figsize=(7, 0.25 * len(names) * len(stats) + 1.5))
    rows = np.arange(len(names))
    for i, (split, s) in enumerate(stats.items()):
        values = [*s.share.tolist(), s.ignored_share]
        axis.barh(rows + i * bar_height, values, height=bar_height, label=f"{split} ({s.images})")
    axis.set_yticks(rows + bar_height * (len(stats) - 1) / 2, names)
    axis.invert_yaxis()
    axis.set_xlabel("% of pixels")
    axis.grid(axis="x", alpha=0.3)
    axis.legend()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)


# Widest default panel: six full-size Cityscapes frames (2048x1024) would make a 4096x6144 grid.
MAX_PANEL_WIDTH = 1024


def _default_panel(rgb: np.ndarray) -> tuple[int, int]:
    """(W, H) of this image, shrunk to at most ``MAX_PANEL_WIDTH`` wide."""
    height, width = rgb.shape[:2]
    scale = min(1.0, MAX_PANEL_WIDTH / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _sample_row(
    rgb: np.ndarray,
    train_ids: np.ndarray,
    class_set: ClassSet,
    size: tuple[int, int],
    augment: AugmentConfig | None,
    generator: torch.Generator,
) -> np.ndarray:
    """image | colour mask of one decoded sample, resized to ``size`` = (W, H); with ``augment``,
    followed by one random draw of that training augmentation (image | mask, void black)."""
    if rgb.shape[:2] != (size[1], size[0]):
        rgb, train_ids = resize_pair(rgb, train_ids, size)
    columns = [rgb, colorize(train_ids, class_set)]
    if augment is not None:
        image, mask = _augmented(rgb, train_ids, augment, generator)
        columns += [image, colorize(mask, class_set)]
    return np.concatenate(columns, axis=1)


def _augmented(
    rgb: np.ndarray, train_ids: np.ndarray, augment: AugmentConfig, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """What training feeds the model for this pair, back as uint8 image and mask of the pair's
    size (a smaller ``augment.crop`` sits top left, the rest ignored)."""
    x, y = prepare_batch(
        torch.from_numpy(rgb.copy())[None],
        torch.from_numpy(train_ids.copy())[None],
        augment,
        generator,
    )
    image = np.zeros_like(rgb)
    mask = np.full_like(train_ids, IGNORE_INDEX)
    height, width = y.shape[1:]
    image[:height, :width] = (x[0].permute(1, 2, 0) * 255.0).round().byte().numpy()
    mask[:height, :width] = y[0].numpy()
    return image, mask


def show_samples(
    samples: Sequence[Sample],
    class_set: ClassSet,
    count: int,
    path: Path,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    augment: AugmentConfig | None = None,
) -> Path:
    """A PNG of ``count`` randomly chosen (seeded) samples: rows of image | colour mask, legend below.

    Every row is resized to ``size`` = (W, H), by default the first chosen image's size, shrunk to
    at most ``MAX_PANEL_WIDTH`` wide. With ``augment``, each row goes on with a random draw of that
    augmentation: what training sees.
    """
    if not samples or count < 1:
        raise ValueError("show_samples needs at least one sample and count >= 1")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(samples), size=min(count, len(samples)), replace=False))
    generator = torch.Generator().manual_seed(seed)
    first = read_pair(samples[chosen[0]], class_set)  # decoded once: it also sets the panel size
    size = size or _default_panel(first[0])
    pairs = itertools.chain([first], (read_pair(samples[i], class_set) for i in chosen[1:]))
    rows = [_sample_row(rgb, ids, class_set, size, augment, generator) for rgb, _, ids in pairs]
    grid = np.concatenate(rows, axis=0)
    grid = np.concatenate([grid, legend_strip(class_set, grid.shape[1])], axis=0)
    save_image(grid, path)
    return path
