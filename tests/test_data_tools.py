"""Tests for the data set tools: class statistics, weights, tables and pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.commands import data as data_command
from unetseg.commands.cli import main
from unetseg.commands.data import plot_stats, show_samples, stats_table
from unetseg.core.classes import ClassSet, camvid11, cityscapes19, load_class_set
from unetseg.core.config import AugmentConfig, DataConfig
from unetseg.data.folders import find_folders
from unetseg.data.io import DataError, Sample
from unetseg.data.sources import find_samples
from unetseg.data.statistics import ClassStats, class_stats
from unetseg.engine.viz import legend_strip

# Pixel shares of CamVid train listed in shared/data/README.md.
CAMVID_TRAIN_SHARES = {
    "Road": 31.7,
    "Building": 23.3,
    "Sky": 16.9,
    "Tree": 9.7,
    "Car": 5.9,
    "Pavement": 4.5,
}
CAMVID_TRAIN_UNLABELLED = 4.0

FOUR_CLASSES = """\
name: four
ignore_values: [255]
classes:
  - {name: a, color: [255, 0, 0], values: [0]}
  - {name: b, color: [0, 255, 0], values: [1]}
  - {name: c, color: [0, 0, 255], values: [2]}
  - {name: never, color: [9, 9, 9], values: [3]}
"""


def test_camvid_train_shares_match_the_readme(shared_data: Path) -> None:
    root = shared_data / "camvid"
    if not root.is_dir():
        pytest.skip("camvid not present")
    stats = class_stats(find_folders(root, "train"), camvid11(), progress=False)
    shares = dict(zip(stats.names, stats.share.tolist()))
    print("camvid train shares:", {n: round(v, 2) for n, v in shares.items()})
    print(f"camvid train unlabelled: {stats.ignored_share:.2f}%")
    assert stats.images == 367
    assert stats.total == 367 * 480 * 360
    for name, expected in CAMVID_TRAIN_SHARES.items():
        assert shares[name] == pytest.approx(expected, abs=0.1), name
    assert stats.ignored_share == pytest.approx(CAMVID_TRAIN_UNLABELLED, abs=0.1)
    others = set(shares) - set(CAMVID_TRAIN_SHARES)
    assert all(shares[name] < 1.2 for name in others)
    assert shares["Bicyclist"] == pytest.approx(0.3, abs=0.1)
    assert stats.share.sum() + stats.ignored_share == pytest.approx(100.0)


@pytest.fixture
def four_classes(tmp_path: Path) -> ClassSet:
    path = tmp_path / "four.yaml"
    path.write_text(FOUR_CLASSES)
    return load_class_set(str(path))


def _tiny_split(root: Path) -> list[Sample]:
    """Two 4x4 masks: A = 12 a + 4 b; B = 8 a + 6 c + 2 ignored."""
    mask_a = np.zeros((4, 4), np.uint8)
    mask_a[0] = 1
    mask_b = np.zeros((4, 4), np.uint8)
    mask_b[2:] = 2
    mask_b[3, :2] = 255
    for name, mask in (("a", mask_a), ("b", mask_b)):
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "trainannot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / f"{name}.png")
        Image.fromarray(mask).save(root / "trainannot" / f"{name}.png")
    return find_folders(root, "train")


def test_class_stats_and_median_frequency_weights(tmp_path: Path, four_classes: ClassSet) -> None:
    stats = class_stats(_tiny_split(tmp_path), four_classes, progress=False)
    assert stats.names == ["a", "b", "c", "never"]
    assert stats.pixels.tolist() == [20, 4, 6, 0] and stats.pixels.dtype == np.int64
    assert (stats.ignored, stats.images) == (2, 2)
    np.testing.assert_allclose(stats.share, [62.5, 12.5, 18.75, 0.0])
    assert stats.ignored_share == pytest.approx(6.25)
    # Labelled pixels of the images containing each class: a in both (16 + 14), b in A, c in B.
    # freq = 20/30, 4/16, 6/14; median over the seen classes = 6/14; unseen weight 0.
    median = 6 / 14
    expected = [median / (20 / 30), median / (4 / 16), 1.0, 0.0]
    np.testing.assert_allclose(stats.median_frequency_weights(), expected)


def test_weights_with_no_labelled_pixel_are_finite() -> None:
    stats = ClassStats(["a", "b"], np.zeros(2, np.int64), 16, 1, np.zeros(2, np.int64))
    assert stats.median_frequency_weights() == [0.0, 0.0]
    assert stats.share.tolist() == [0.0, 0.0] and stats.ignored_share == 100.0


def test_class_stats_lists_every_problem(tmp_path: Path, four_classes: ClassSet) -> None:
    samples = _tiny_split(tmp_path)
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "trainannot" / "a.png")
    missing = Sample(image=tmp_path / "train" / "c.png", mask=None)
    with pytest.raises(DataError) as raised:
        class_stats([*samples, missing], four_classes, progress=False)
    message = str(raised.value)
    assert "2 problem(s)" in message
    assert "a.png" in message and "[7]" in message
    assert "c.png" in message and "no mask" in message


def test_stats_table_lists_every_class(synthetic_root: Path) -> None:
    data = DataConfig(kind="cityscapes", root=str(synthetic_root))
    classes = cityscapes19()
    stats = {
        s: class_stats(find_samples(data, s), classes, progress=False) for s in ("train", "val")
    }
    table = stats_table(stats)
    print(table)
    lines = table.splitlines()
    assert "train" in lines[0] and "val" in lines[0] and "weight (train)" in lines[0]
    for name, line in zip(classes.names, lines[1:]):
        assert line.startswith(name)
    weights = stats["train"].median_frequency_weights()
    assert [float(line.split()[-1]) for line in lines[1:20]] == pytest.approx(weights, abs=1e-4)
    assert lines[20].startswith("(ignored)") and lines[21].split()[1:] == ["6", "3"]


def test_plot_stats_writes_a_png(synthetic_root: Path, tmp_path: Path) -> None:
    data = DataConfig(kind="cityscapes", root=str(synthetic_root))
    stats = {
        s: class_stats(find_samples(data, s), cityscapes19(), progress=False)
        for s in ("train", "val")
    }
    path = tmp_path / "plots" / "shares.png"
    plot_stats(stats, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 400 and image.height > 19 * 2 * 10
    assert [p.name for p in path.parent.iterdir()] == ["shares.png"]  # no temporary left


def test_show_samples_grid(synthetic_root: Path, tmp_path: Path) -> None:
    samples = find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train")
    classes = cityscapes19()
    legend = legend_strip(classes, 2 * 128).shape[0]
    path = show_samples(samples, classes, 3, tmp_path / "grid.png", seed=1)
    with Image.open(path) as image:
        assert image.size == (2 * 128, 3 * 64 + legend)
        grid = np.asarray(image.convert("RGB"))
    # The mask half of every row holds only palette colours of the 19 classes (or black).
    colours = {tuple(c) for c in grid[: 3 * 64, 128:].reshape(-1, 3).tolist()}
    assert colours <= {*classes.colors, (0, 0, 0)}
    again = show_samples(samples, classes, 3, tmp_path / "again.png", seed=1)
    assert again.read_bytes() == path.read_bytes()
    small = show_samples(samples, classes, 10, tmp_path / "small.png", size=(64, 32))
    with Image.open(small) as image:  # count is capped at the number of samples
        assert image.size == (128, 6 * 32 + legend_strip(classes, 128).shape[0])


def test_show_samples_shrinks_wide_frames_by_default(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Frames wider than MAX_PANEL_WIDTH are shown at that width, aspect kept."""
    monkeypatch.setattr(data_command, "MAX_PANEL_WIDTH", 48)  # the scenes are 128x64
    samples = find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train")
    classes = cityscapes19()
    path = show_samples(samples, classes, 2, tmp_path / "grid.png")
    with Image.open(path) as image:
        assert image.size == (2 * 48, 2 * 24 + legend_strip(classes, 2 * 48).shape[0])


def test_show_samples_augmented_shows_what_training_sees(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Flip-only augmentation: each augmented pair is its row's pair, mirrored or not, together;
    a smaller crop sits top left with the rest black."""
    samples = find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train")
    classes = cityscapes19()
    still = {"scale_min": 1.0, "scale_max": 1.0, "brightness": 0.0, "contrast": 0.0}
    flip_only = AugmentConfig(**still, saturation=0.0)
    path = show_samples(samples, classes, 4, tmp_path / "a.png", (128, 64), 2, flip_only)
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert grid.shape[1] == 4 * 128
    mirrored = []
    for row in range(4):
        image, mask, seen, seen_mask = np.split(grid[row * 64 : (row + 1) * 64], 4, axis=1)
        mirrored.append(np.array_equal(seen_mask, mask[:, ::-1]))
        assert mirrored[-1] or np.array_equal(seen_mask, mask)
        expected = image[:, ::-1] if mirrored[-1] else image
        assert np.abs(seen - expected).max() <= 1
    assert any(mirrored) and not all(mirrored)
    cropped = AugmentConfig(**still, saturation=0.0, hflip=False, crop=[64, 32])
    path = show_samples(samples, classes, 1, tmp_path / "c.png", (128, 64), 0, cropped)
    _, _, seen, seen_mask = np.split(np.asarray(Image.open(path).convert("RGB"))[:64], 4, axis=1)
    assert seen[:32, :64].any() and not seen[32:].any() and not seen[:, 64:].any()
    assert not seen_mask[32:].any()  # ignored: black


def test_data_show_augmented_cli_draws_at_the_training_size(tmp_path: Path) -> None:
    for split in ("train", "trainannot"):
        (tmp_path / split).mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((30, 50, 3), 90, np.uint8)).save(tmp_path / "train" / f"{name}.png")
        Image.fromarray(np.full((30, 50), 3, np.uint8)).save(
            tmp_path / "trainannot" / f"{name}.png"
        )
    output = tmp_path / "shown.png"
    data = ["data.kind=folders", f"data.root={tmp_path}", "data.class_set=camvid11"]
    args = ["data", "show", "--augmented", "--output", str(output), *data, "data.size=[32,16]"]
    assert main(args) == 0
    with Image.open(output) as image:
        assert image.size == (4 * 32, 2 * 16 + legend_strip(camvid11(), 4 * 32).shape[0])


def test_show_samples_resizes_to_the_first_image(tmp_path: Path) -> None:
    for name, (width, height) in (("a", (40, 20)), ("b", (60, 30))):
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "trainannot").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(
            tmp_path / "train" / f"{name}.png"
        )
        Image.fromarray(np.full((height, width), 3, np.uint8)).save(
            tmp_path / "trainannot" / f"{name}.png"
        )
    samples = find_folders(tmp_path, "train")
    path = show_samples(samples, camvid11(), 2, tmp_path / "grid.png")
    with Image.open(path) as image:
        assert image.size == (80, 40 + legend_strip(camvid11(), 80).shape[0])
