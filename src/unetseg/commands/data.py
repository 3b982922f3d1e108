"""``unetseg data check | stats | show``: a data set looked at before training."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from unetseg.core.classes import IGNORE_INDEX, ClassSet, load_class_set  # noqa: E402
from unetseg.core.config import AugmentConfig, Config  # noqa: E402
from unetseg.core.files import atomic_path  # noqa: E402
from unetseg.data.cache import check_samples  # noqa: E402
from unetseg.data.io import Sample, read_pair, resize_pair  # noqa: E402
from unetseg.data.sources import ensure_synthetic, find_samples, no_samples  # noqa: E402
from unetseg.data.statistics import ClassStats, class_stats  # noqa: E402
from unetseg.data.transforms import prepare_batch  # noqa: E402
from unetseg.engine.viz import colorize, legend_strip, save_image  # noqa: E402


def check_data(config: Config, splits: Sequence[str]) -> int:
    """Print every problem of each split's pairs; 1 if there is any, else 0."""
    class_set = load_class_set(config.data.class_set)
    ensure_synthetic(config.data)
    total_problems = 0
    for split in splits:
        samples = find_samples(config.data, split)
        problems = (
            check_samples(samples, class_set) if samples else [no_samples(config.data, split)]
        )
        total_problems += len(problems)
        print(f"{split}: {len(samples)} pairs, {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    return 1 if total_problems else 0


def data_stats(config: Config, splits: Sequence[str], plot: Path) -> None:
    """Print the class statistics table of the splits and draw their bar chart at ``plot``."""
    class_set = load_class_set(config.data.class_set)
    ensure_synthetic(config.data)
    stats = {split: class_stats(find_samples(config.data, split), class_set) for split in splits}
    print(stats_table(stats))
    plot_stats(stats, plot)
    print(f"bar chart: {plot}")


def show_data(
    config: Config, split: str, count: int, output: Path, seed: int, augmented: bool
) -> None:
    """Write a grid of image | colour mask samples of ``split`` (with an augmented draw beside
    each when ``augmented``, at the size training sees, so that it looks as it acts)."""
    ensure_synthetic(config.data)
    samples = find_samples(config.data, split)
    classes = load_class_set(config.data.class_set)
    size = tuple(config.data.size) if augmented else None
    augment = config.augment if augmented else None
    path = show_samples(samples, classes, count, output, size, seed, augment)
    print(f"grid: {path}")


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
