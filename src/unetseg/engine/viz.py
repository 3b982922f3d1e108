"""Pictures: colour masks, overlays, image | ground truth | prediction grids, curves and charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from unetseg.core.classes import ClassSet  # noqa: E402
from unetseg.core.files import atomic_path  # noqa: E402


def colorize(train_ids: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 colours (ignored pixels black)."""
    return class_set.palette()[train_ids]


def overlay(
    image: np.ndarray, train_ids: np.ndarray, class_set: ClassSet, alpha: float = 0.5
) -> np.ndarray:
    """The image blended with its colour mask (in uint8 by Pillow: a 60-megapixel photo costs
    its own size a few times over, not float copies of it)."""
    colours = Image.fromarray(colorize(train_ids, class_set))
    return np.asarray(Image.blend(Image.fromarray(image), colours, alpha))


def save_image(array: np.ndarray, path: Path, **options) -> None:
    """Atomically save an array as an image (format from the suffix)."""
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, **options)


def comparison_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_set: ClassSet,
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
) -> np.ndarray:
    """Rows of (image, ground-truth ids, predicted ids) side by side, with a title strip."""
    tiles = []
    for image, truth, prediction in rows:
        tiles.append(
            np.concatenate([image, colorize(truth, class_set), colorize(prediction, class_set)], 1)
        )
    grid = np.concatenate(tiles, axis=0)
    header = Image.new("RGB", (grid.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    width = rows[0][0].shape[1]
    for i, title in enumerate(titles):
        draw.text((i * width + 4, 1), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(header), grid], axis=0)


def legend_strip(class_set: ClassSet, width: int) -> np.ndarray:
    """A strip of colour swatches with class names, for the bottom of a grid."""
    columns = max(1, width // 110)
    rows = -(-class_set.num_classes // columns)
    strip = Image.new("RGB", (width, rows * 14 + 2), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (name, color) in enumerate(zip(class_set.names, class_set.colors)):
        x, y = (i % columns) * 110 + 2, (i // columns) * 14 + 2
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(color), outline=(0, 0, 0))
        draw.text((x + 14, y), name[:15], fill=(0, 0, 0))
    return np.asarray(strip)


def _save_figure(figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_schedule(values: Sequence[float], path: Path, title: str = "learning rate") -> None:
    """The learning rate over the whole run."""
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(range(len(values)), values)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("learning rate")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    _save_figure(figure, path)


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Named (steps, values) lines on one chart; ``ylim`` fixes the value axis (scores on 0..1,
    so that a flat curve looks flat)."""
    figure, axis = plt.subplots(figsize=(6, 3.2))
    for name, (steps, values) in series.items():
        axis.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(ylabel)
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.grid(alpha=0.3)
    axis.legend()
    _save_figure(figure, path)


def plot_class_curves(
    steps: Sequence[int], per_class: dict[str, Sequence[float]], path: Path
) -> None:
    """One IoU line per class over the steps, on 0..1, with the legend beside the chart (a
    class that never comes alive, or one that falls while the mean rises, shows here)."""
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    colours = plt.get_cmap("tab20").colors
    for i, (name, values) in enumerate(per_class.items()):
        style = "-" if i < len(colours) else "--"
        axis.plot(steps, values, style, color=colours[i % len(colours)], label=name, lw=1.2)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("val IoU")
    axis.set_ylim(0.0, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    _save_figure(figure, path)


def plot_class_bars(
    names: Sequence[str], values: Sequence[float], path: Path, xlabel: str, title: str = ""
) -> None:
    """A horizontal bar per class (NaN bars are left empty and marked n/a)."""
    figure, axis = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    clean = [0.0 if v is None or np.isnan(v) else v for v in values]
    axis.barh(range(len(names)), clean, color="#4a7ab5")
    for i, v in enumerate(values):
        label = "n/a" if v is None or np.isnan(v) else f"{v:.3f}"
        axis.text(clean[i], i, f" {label}", va="center", fontsize=8)
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    axis.set_xlim(0, max(1.0, max(clean, default=0) * 1.15))
    _save_figure(figure, path)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix heat map (rows: ground truth)."""
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = 0.4 * len(names) + 2
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=90)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("ground truth")
    figure.colorbar(image, fraction=0.046)
    _save_figure(figure, path)


def plot_reliability(curves: dict[str, tuple[np.ndarray, float]], path: Path, title: str) -> None:
    """Reliability diagram: accuracy per equal-width confidence bin, one line per label
    (``label: (accuracy per bin, ECE)``), against the diagonal of perfect calibration."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="calibrated")
    for label, (accuracy, ece) in curves.items():
        centres = (np.arange(len(accuracy)) + 0.5) / len(accuracy)
        axis.plot(centres, accuracy, marker="o", label=f"{label} (ECE {ece:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (max softmax)")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.legend(loc="upper left")
    _save_figure(figure, path)
