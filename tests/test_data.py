"""Tests for finding, checking, caching, augmenting and sampling the data."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from unetseg.core.classes import IGNORE_INDEX, ClassSet, camvid11, cityscapes19, cityscapes24
from unetseg.core.config import AugmentConfig, DataConfig
from unetseg.data import cache
from unetseg.data.cache import CachedSplit, check_samples, prepare_split
from unetseg.data.folders import find_folders
from unetseg.data.io import DataError, Sample, read_mask_values, read_rgb
from unetseg.data.loader import StreamBatchSampler
from unetseg.data.sources import find_samples
from unetseg.data.statistics import rare_class_weights
from unetseg.data.transforms import gaussian_blur, prepare_batch

# ---------------------------------------------------------------- finding samples


def test_find_samples_cityscapes_layout(synthetic_root: Path) -> None:
    data = DataConfig(kind="cityscapes", root=str(synthetic_root))
    train, val = find_samples(data, "train"), find_samples(data, "val")
    assert (len(train), len(val)) == (6, 3)
    for sample in train + val:
        assert sample.image.name.endswith("_leftImg8bit.png")
        assert sample.mask is not None and sample.mask.is_file()
        assert sample.mask.name == sample.image.name.replace("leftImg8bit", "gtFine_labelIds")
        assert sample.mask_type == "index"
    assert check_samples(train + val, cityscapes19(), progress=False) == []


def test_find_samples_filters_by_file_name(synthetic_root: Path) -> None:
    data = DataConfig(kind="cityscapes", root=str(synthetic_root), train_filter=["pixelton_*"])
    train = find_samples(data, "train")
    assert train and all(s.image.name.startswith("pixelton_") for s in train)
    assert len(find_samples(data, "val")) == 3  # the train filter leaves val alone


def _colorize_label_ids(label_ids: np.ndarray) -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label_id in np.unique(label_ids):
        palette[label_id] = id2label[int(label_id)].color
    return palette[label_ids]


def test_colour_masks_decode_to_the_same_train_ids(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "colour"
    originals = {}
    for sample in find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train"):
        city = sample.image.parent.name
        image = root / "leftImg8bit" / "train" / city / sample.image.name
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.image, image)
        label_ids = read_mask_values(sample)
        mask = root / "gtFine" / "train" / city / sample.mask.name.replace("labelIds", "color")
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_colorize_label_ids(label_ids)).save(mask)
        originals[image.name] = label_ids

    samples = find_samples(
        DataConfig(kind="cityscapes", root=str(root), mask_type="color"), "train"
    )
    assert len(samples) == 6
    classes = cityscapes19()
    for sample in samples:
        assert sample.mask_type == "color" and sample.mask.name.endswith("_gtFine_color.png")
        decoded = classes.encode(read_mask_values(sample))
        assert np.array_equal(decoded, classes.encode(originals[sample.image.name]))


def test_colour_mask_with_unknown_colour_is_named(tmp_path: Path) -> None:
    mask = tmp_path / "odd_gtFine_color.png"
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[1, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    with pytest.raises(DataError, match=r"odd_gtFine_color.png.*\(1, 2, 3\)"):
        read_mask_values(Sample(image=tmp_path / "odd.png", mask=mask, mask_type="color"))


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(height: int = 8, width: int = 12) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)


def test_folders_pair_by_stem(tmp_path: Path) -> None:
    _write_png(tmp_path / "train" / "a.png", _rgb())
    Image.fromarray(_rgb()).save(tmp_path / "train" / "b.jpg")
    _write_png(tmp_path / "train" / "c.png", _rgb())
    _write_png(tmp_path / "trainannot" / "a.png", np.zeros((8, 12), np.uint8))
    _write_png(tmp_path / "trainannot" / "b.png", np.ones((8, 12), np.uint8))
    samples = find_samples(DataConfig(kind="folders", root=str(tmp_path)), "train")
    assert [(s.image.name, s.mask.name if s.mask else None) for s in samples] == [
        ("a.png", "a.png"),
        ("b.jpg", "b.png"),
        ("c.png", None),
    ]
    problems = check_samples(samples, camvid11(), progress=False)
    assert len(problems) == 1
    assert "c.png" in problems[0] and "no mask" in problems[0]


@pytest.mark.parametrize("split,count", [("train", 367), ("val", 101)])
def test_camvid_checks_clean(shared_data: Path, split: str, count: int) -> None:
    root = shared_data / "camvid"
    if not root.is_dir():
        pytest.skip("camvid not present")
    samples = find_folders(root, split)
    problems = check_samples(samples, camvid11(), progress=False)
    print(f"camvid {split}: {len(samples)} pairs, {len(problems)} problems")
    assert len(samples) == count
    assert all(s.mask is not None and s.mask.name == s.image.name for s in samples)
    assert problems == []


# ---------------------------------------------------------------- naming broken files


def _copy_as_folders(samples: list[Sample], root: Path, count: int) -> list[Path]:
    """The first ``count`` pairs as a folders data set (root/train, root/trainannot)."""
    names = []
    for sample in samples[:count]:
        name = sample.image.name
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "trainannot").mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.image, root / "train" / name)
        shutil.copy(sample.mask, root / "trainannot" / name)
        names.append(name)
    return names


def _break_three(root: Path, names: list[str]) -> None:
    """Truncate image 0, remove mask 1, write the value 40 into mask 2."""
    image = root / "train" / names[0]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    (root / "trainannot" / names[1]).unlink()
    mask_path = root / "trainannot" / names[2]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[3:5, 3:5] = 40
    Image.fromarray(mask).save(mask_path)


def _assert_three_named(root: Path, names: list[str], classes: ClassSet) -> None:
    samples = find_folders(root, "train")
    assert len(samples) == 5
    problems = check_samples(samples, classes, progress=False)
    assert len(problems) == 3, problems
    truncated, missing, value = sorted(
        problems, key=lambda p: names.index(Path(p.split(":")[0]).name)
    )
    assert names[0] in truncated and "truncated" in truncated
    assert names[1] in missing and "no mask" in missing
    assert names[2] in value and "trainannot" in value and "40" in value


def test_broken_camvid_copies_are_named(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "camvid"
    if not source.is_dir():
        pytest.skip("camvid not present")
    names = _copy_as_folders(find_folders(source, "train"), tmp_path, 5)
    _break_three(tmp_path, names)
    _assert_three_named(tmp_path, names, camvid11())


def test_broken_synthetic_copies_are_named(synthetic_root: Path, tmp_path: Path) -> None:
    samples = find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train")
    names = _copy_as_folders(samples, tmp_path, 5)
    _break_three(tmp_path, names)
    _assert_three_named(tmp_path, names, cityscapes19())


def test_each_bad_file_is_named(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "trainannot"
    for name in ("mismatch", "empty", "notimage", "deep", "deep_ok", "good"):
        _write_png(images / f"{name}.png", _rgb())
    _write_png(masks / "mismatch.png", np.zeros((8, 10), np.uint8))
    (masks / "empty.png").write_bytes(b"")
    (masks / "notimage.png").write_text("this is not a PNG\n")
    _write_png(masks / "deep.png", np.full((8, 12), 300, np.uint16))
    _write_png(masks / "deep_ok.png", np.full((8, 12), 7, np.uint16))
    _write_png(masks / "good.png", np.full((8, 12), 3, np.uint8))

    problems = check_samples(find_folders(tmp_path, "train"), camvid11(), progress=False)
    assert len(problems) == 4, problems
    by_file = {Path(p.split(":")[0]).name: p for p in problems}
    assert set(by_file) == {"mismatch.png", "empty.png", "notimage.png", "deep.png"}
    assert "10x8" in by_file["mismatch.png"] and "12x8" in by_file["mismatch.png"]
    assert "0 bytes" in by_file["empty.png"]
    assert "not an image" in by_file["notimage.png"]
    assert "300" in by_file["deep.png"]
    assert all(str(masks) in p for p in problems)


# ---------------------------------------------------------------- the training cache


@pytest.fixture
def synthetic_train(synthetic_root: Path) -> list[Sample]:
    return find_samples(DataConfig(kind="cityscapes", root=str(synthetic_root)), "train")


def test_prepare_split_arrays(synthetic_train: list[Sample], tmp_path: Path) -> None:
    classes = cityscapes19()
    split = prepare_split(synthetic_train, classes, (64, 32), tmp_path, "train", progress=False)
    assert split.images.shape == (6, 32, 64, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (6, 32, 64) and split.masks.dtype == np.uint8
    assert split.sources == [str(s.image) for s in synthetic_train]
    for i, sample in enumerate(synthetic_train):
        source_ids = set(np.unique(classes.encode(read_mask_values(sample))).tolist())
        assert set(np.unique(split.masks[i]).tolist()) <= source_ids
        image, mask = split[i]
        assert image.shape == (32, 64, 3) and mask.shape == (32, 64)
    # Nearest resizing by exactly 2 keeps one source pixel of every 2x2 block.
    full = classes.encode(read_mask_values(synthetic_train[0]))
    agree = np.mean(split.masks[0] == full[::2, ::2]) + np.mean(split.masks[0] == full[1::2, 1::2])
    assert agree > 0.9


def test_prepare_split_reuses_and_keys_its_cache(
    synthetic_train: list[Sample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def prepare(classes: ClassSet, size: tuple[int, int]) -> CachedSplit:
        return prepare_split(synthetic_train, classes, size, tmp_path, "train", progress=False)

    first = prepare(cityscapes19(), (64, 32))
    stamp = (first.folder / "images.npy").stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached split was decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(cache, "parallel_map", no_decoding)
        again = prepare(cityscapes19(), (64, 32))
    assert again.folder == first.folder
    assert (again.folder / "images.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(again.masks, first.masks)
    resized, other = prepare(cityscapes19(), (32, 16)), prepare(cityscapes24(), (64, 32))
    assert len({first.folder, resized.folder, other.folder}) == 3
    assert resized.masks.shape == (6, 16, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f.folder.name for f in (first, resized, other)
    )


def test_prepare_split_failure_leaves_nothing(
    synthetic_train: list[Sample], tmp_path: Path
) -> None:
    samples = [*synthetic_train[:3], Sample(synthetic_train[3].image, None), *synthetic_train[4:]]
    cache_root = tmp_path / "cache"
    with pytest.raises(DataError, match=synthetic_train[3].image.name):
        prepare_split(samples, cityscapes19(), (64, 32), cache_root, "train", progress=False)
    assert list(cache_root.iterdir()) == []


def test_prepare_split_removes_caches_abandoned_by_a_killed_process(
    synthetic_train: list[Sample], tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs, as after kill -9
    first = prepare_split(
        synthetic_train, cityscapes19(), (64, 32), cache_root, "t", progress=False
    )
    name = first.folder.name
    shutil.rmtree(first.folder)
    abandoned = cache_root / f".tmp-{name}-{dead.pid}"
    alive = cache_root / f".tmp-{name}-{os.getppid()}"  # another builder still at work
    abandoned.mkdir()
    alive.mkdir()
    prepare_split(synthetic_train, cityscapes19(), (64, 32), cache_root, "t", progress=False)
    assert not abandoned.exists() and alive.exists()


# ---------------------------------------------------------------- augmentation

COLOURS = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=torch.uint8)


def _coded_batch(
    n: int = 6, height: int = 64, width: int = 96
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose colour encodes the mask: class k is painted COLOURS[k]; diagonal bands."""
    rows = torch.arange(height).view(-1, 1) // 16
    cols = torch.arange(width).view(1, -1) // 24
    masks = torch.stack([(rows + cols + i) % 3 for i in range(n)]).to(torch.uint8)
    return COLOURS[masks.long()], masks


def _interior(mask: np.ndarray, value: int) -> np.ndarray:
    """Pixels of ``mask`` equal to ``value`` whose 5x5 neighbourhood is all ``value``."""
    padded = np.pad(mask == value, 2, constant_values=False)
    height, width = mask.shape
    inside = np.ones_like(mask, dtype=bool)
    for dy, dx in itertools.product(range(5), range(5)):
        inside &= padded[dy : dy + height, dx : dx + width]
    return inside


def test_prepare_batch_without_augmentation_is_unit_float_and_long() -> None:
    images, masks = _coded_batch()
    expected = images.permute(0, 3, 1, 2).float() / 255.0
    for augment in (None, AugmentConfig(enabled=False)):
        x, y = prepare_batch(images, masks, augment)
        assert x.shape == (6, 3, 64, 96) and x.dtype == torch.float32
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
        assert y.dtype == torch.int64 and torch.equal(y, masks.long())


@pytest.mark.parametrize("crop", [[], [64, 48]])
def test_augmentation_keeps_mask_aligned(crop: list[int]) -> None:
    images, masks = _coded_batch()
    augment = AugmentConfig(scale_min=0.6, scale_max=1.4, crop=crop)
    generator = torch.Generator().manual_seed(3)
    x, y = prepare_batch(images, masks, augment, generator)
    height, width = (crop[1], crop[0]) if crop else (64, 96)
    assert x.shape == (6, 3, height, width) and y.shape == (6, height, width)
    assert y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, IGNORE_INDEX}
    assert (y == IGNORE_INDEX).any(), "scales below 1 should bring in padding"
    colour = x.argmax(dim=1).numpy()  # jitter keeps the dominant channel
    for i in range(len(x)):
        target = y[i].numpy()
        for k in range(3):
            inside = _interior(target, k)
            assert inside.sum() > 20
            assert (colour[i][inside] == k).all(), f"image {i}: class {k} lost its colour"
        padded = _interior(target, IGNORE_INDEX)
        grey = (x[i] - 0.5).abs().amax(dim=0)
        assert (grey.numpy()[padded] < 1e-6).all()  # padding is mid-grey
        blank = _interior((grey < 1e-6).numpy().astype(np.uint8), 1)
        assert (target[blank] == IGNORE_INDEX).all()


@pytest.mark.parametrize("camera", [{}, {"gamma": 0.5, "blur": 1.0, "noise": 0.03}])
def test_augmentation_is_reproducible(camera: dict[str, float]) -> None:
    images, masks = _coded_batch()
    runs = [
        prepare_batch(
            images,
            masks,
            AugmentConfig(**camera),
            torch.Generator().manual_seed(s),
        )
        for s in (11, 11, 12)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def still_augment(**extra: object) -> AugmentConfig:
    """Augmentation that leaves images as they are (scale 1, no flip, no jitter) but for ``extra``."""
    still = {"scale_min": 1.0, "scale_max": 1.0, "hflip": False}
    still |= {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    return AugmentConfig(**(still | extra))


def test_crop_is_a_window_at_native_resolution() -> None:
    """At scale 1 a crop samples the image pixel for pixel: no squeezing, no padding."""
    n, height, width = 5, 64, 96
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ramp = torch.stack([cols * 2, rows * 3, torch.zeros_like(rows)], dim=-1).to(torch.uint8)
    images, masks = ramp.expand(n, -1, -1, -1).contiguous(), (cols % 3).expand(n, -1, -1)
    augment = still_augment(crop=[48, 32])
    generator = torch.Generator().manual_seed(5)
    x, y = prepare_batch(images, masks.to(torch.uint8), augment, generator)
    assert x.shape == (n, 3, 32, 48) and not (y == IGNORE_INDEX).any()
    pixels = x * 255.0
    torch.testing.assert_close(
        pixels[:, 0].diff(dim=2), torch.full((n, 32, 47), 2.0), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        pixels[:, 1].diff(dim=1), torch.full((n, 31, 48), 3.0), atol=1e-3, rtol=0
    )
    left = pixels[:, 0, 0, 0] / 2
    assert left.min() >= 0 and left.max() <= width - 48 and left.std() > 1  # random windows
    for i in range(n):  # the mask column pattern follows the image's column
        column = int(torch.round(left[i]))
        assert torch.equal(y[i, 0], (torch.arange(48) + column) % 3)


def augmented_grey(level: int, n: int, height: int, width: int, **augment: float) -> torch.Tensor:
    """``n`` flat grey images of ``level`` through ``still_augment(**augment)``, in [0, 1]."""
    grey = torch.full((n, height, width, 3), level, dtype=torch.uint8)
    masks = torch.zeros(n, height, width, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    x, _ = prepare_batch(grey, masks, still_augment(**augment), generator)
    return x


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_white_balance_tints_each_image_within_its_spread(spread: float) -> None:
    n = 64
    x = augmented_grey(128, n, 8, 16, white_balance=spread)
    gains = x.mean(dim=(2, 3)) / (128 / 255)  # (n, 3) per-channel gain of each image
    assert (x.amax(dim=(2, 3)) - x.amin(dim=(2, 3))).max() < 1e-5  # a flat image stays flat
    assert gains.min() >= 1 - spread - 1e-5 and gains.max() <= 1 + spread + 1e-5
    if spread:  # tinted: the channels of one image differ, and the gains cover the range
        assert (gains.amax(dim=1) - gains.amin(dim=1)).min() > 0
        assert gains.min() < 1 - spread / 2 and gains.max() > 1 + spread / 2
    else:
        torch.testing.assert_close(gains, torch.ones(n, 3))


def test_gamma_darkens_and_brightens_within_its_spread() -> None:
    spread = 0.5
    x = augmented_grey(64, 64, 8, 16, gamma=spread)
    assert (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).max() < 1e-5  # a flat image stays flat
    gammas = torch.log(x[:, 0, 0, 0]) / np.log(64 / 255)
    assert gammas.min() >= 1 / (1 + spread) - 1e-4 and gammas.max() <= 1 + spread + 1e-4
    assert gammas.min() < 0.8 and gammas.max() > 1.25  # both ways, over most of the range


def test_blur_matches_a_hand_computed_gaussian_per_image() -> None:
    """An impulse blurred with sigma s becomes the sampled 2-D Gaussian of s, normalised."""
    impulse = torch.zeros(2, 3, 15, 15)
    impulse[:, :, 7, 7] = 1.0
    sigmas = torch.tensor([0.0, 1.5])
    out = gaussian_blur(impulse, sigmas)
    torch.testing.assert_close(out[0], impulse[0])  # sigma 0 leaves the image as it is
    offsets = np.arange(-3, 4)  # radius ceil(2 * 1.5)
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    expected = np.zeros((15, 15))
    expected[4:11, 4:11] = weights / weights.sum()
    for channel in range(3):
        torch.testing.assert_close(out[1, channel].double(), torch.from_numpy(expected))


def test_noise_is_zero_mean_with_a_random_strength_per_image() -> None:
    strength = 0.05
    x = augmented_grey(128, 32, 32, 32, noise=strength)
    residual = x - 128 / 255
    stds = residual.std(dim=(1, 2, 3))
    assert residual.mean().abs() < 1e-3
    assert stds.max() <= strength * 1.05 and stds.min() < strength / 4 < strength / 2 < stds.max()


def test_flip_only_mirrors_exactly() -> None:
    _, masks = _coded_batch(n=8)
    images = torch.from_numpy(np.stack([_rgb(64, 96) for _ in range(8)]))  # any content
    flip_only = still_augment(hflip=True)
    generator = torch.Generator().manual_seed(0)
    x, y = prepare_batch(images, masks, flip_only, generator)
    plain, _ = prepare_batch(images, masks)
    flipped = [not torch.equal(y[i], masks[i].long()) for i in range(8)]
    assert any(flipped) and not all(flipped)
    for i in range(8):
        if flipped[i]:
            assert torch.equal(y[i], masks[i].long().flip(-1))
            # Grid coordinates carry float rounding; 1e-4 is far below one grey level (~0.017).
            torch.testing.assert_close(x[i], plain[i].flip(-1), rtol=0, atol=1e-4)
        else:
            torch.testing.assert_close(x[i], plain[i], rtol=0, atol=1e-4)


# ---------------------------------------------------------------- the batch stream


def _batches(sampler: StreamBatchSampler, count: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), count))


def test_stream_resumes_exactly() -> None:
    full = _batches(StreamBatchSampler(10, 3, seed=4), 20)
    for start in (1, 3, 7, 19):
        assert _batches(StreamBatchSampler(10, 3, seed=4, start=start), 20 - start) == full[start:]


def test_two_ranks_equal_one_rank_with_double_batch() -> None:
    single = _batches(StreamBatchSampler(11, 6, seed=2), 12)
    ranks = [_batches(StreamBatchSampler(11, 3, seed=2, rank=r, world_size=2), 12) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single


def test_weighted_stream_resumes_and_draws_in_proportion() -> None:
    weights = torch.tensor([0.0, 1.0, 3.0])
    full = _batches(StreamBatchSampler(3, 4, seed=5, weights=weights), 500)
    assert _batches(StreamBatchSampler(3, 4, seed=5, weights=weights, start=37), 10) == full[37:47]
    ranks = [
        _batches(StreamBatchSampler(3, 2, seed=5, rank=r, world_size=2, weights=weights), 500)
        for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks)] == full
    counts = np.bincount([i for batch in full for i in batch], minlength=3)
    assert counts[0] == 0  # a zero weight is never drawn
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.1)  # 2000 draws: about 1500 : 500


@pytest.mark.parametrize("weights", [torch.ones(4), torch.zeros(3), torch.tensor([-1.0, 2.0, 1.0])])
def test_weights_of_the_wrong_size_negative_or_all_zero_are_refused(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="need 3 non-negative sampling weights"):
        StreamBatchSampler(3, 2, seed=0, weights=weights)


def test_rare_class_weights_match_a_hand_computation() -> None:
    """Three 40x50 masks (2000 pixels): class 1 covers 100 pixels of image 1 and a single pixel
    (0.05%, below the presence share of 0.1%) of image 2; class 2 covers 300 pixels of image 2."""
    masks = np.zeros((3, 40, 50), dtype=np.uint8)
    masks[0, :4] = IGNORE_INDEX  # 200 ignored pixels count for no class
    masks[1, :2] = 1
    masks[2, :6] = 2
    masks[2, 39, 49] = 1
    temperature = 0.5
    labelled = 6000 - 200
    shares = [(5800 - 100 - 300 - 1) / labelled, 101 / labelled, 300 / labelled, 0.0]
    unnormalised = [math.exp((1 - f) / temperature) for f in shares[:3]] + [0.0]  # 3: absent
    probability = [u / sum(unnormalised) for u in unnormalised]
    # class 0 is in all three images, class 1 counts in image 1 only, class 2 in image 2
    expected = [
        probability[0] / 3,
        probability[0] / 3 + probability[1],
        probability[0] / 3 + probability[2],
    ]
    weights, class_probability = rare_class_weights(masks, 4, temperature)
    assert class_probability == pytest.approx(probability)
    assert weights.tolist() == pytest.approx(expected)
    assert weights.sum().item() == pytest.approx(1.0)


def test_every_epoch_covers_every_sample_once() -> None:
    size = 10
    stream = [i for batch in _batches(StreamBatchSampler(size, 3, seed=9), 20) for i in batch]
    epochs = [stream[e * size : (e + 1) * size] for e in range(len(stream) // size)]
    assert len(epochs) == 6
    assert all(sorted(epoch) == list(range(size)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # a fresh order per epoch


def test_32_bit_grayscale_images_scale_to_8_bits_without_wrapping(tmp_path):
    path = tmp_path / "deep.tif"
    values = np.array([[0, 70000, 2**30, 2**31 - 1]], dtype=np.int32)  # needs the 31-bit range
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    assert read_rgb(path)[..., 0].tolist() == [[0, 0, 127, 255]]
    Image.fromarray(np.array([[0, 300, 65535]], dtype=np.int32)).save(path)
    assert read_rgb(path)[..., 0].tolist() == [[0, 1, 255]]  # 16-bit values in a 32-bit file
    Image.fromarray(np.array([[0, 200, 255]], dtype=np.int32)).save(path)
    assert read_rgb(path)[..., 0].tolist() == [[0, 200, 255]]  # 8-bit values stay as they are
    Image.fromarray(np.array([[0, -5]], dtype=np.int32)).save(path)
    with pytest.raises(DataError, match=r"deep\.tif: cannot convert mode I .*negative"):
        read_rgb(path)
