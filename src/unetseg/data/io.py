"""Reading images and masks safely: every problem becomes a one-line DataError naming the file."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unetseg.core.classes import ClassSet, cityscapes_color_to_label_id

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Larger declared sizes are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000


class DataError(ValueError):
    """A problem with one input file; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``mask`` is None where it is missing)."""

    image: Path
    mask: Path | None
    mask_type: str = "index"  # index (values through the class table) | color (Cityscapes colours)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, EXIF orientation applied; DataError on any problem."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: declared size {width}x{height} exceeds the "
                        f"{MAX_IMAGE_PIXELS} pixel limit (decompression bomb?)"
                    )
                image.load()
                return ImageOps.exif_transpose(image)
    except DataError:
        raise
    except FileNotFoundError:
        what = "broken symbolic link" if path.is_symlink() else "file not found"
        raise DataError(f"{path}: {what}") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{path}: refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{path}: unreadable or truncated image: {error}") from None


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode (RGBA, grayscale, palette, 16- or 32-bit) as (H, W, 3) uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- and 32-bit grayscale: scale by the format's range (for 32-bit "I" the smallest of the
        # 8-, 16- and 31-bit ranges that holds the values), never clip or wrap at 255.
        array = np.asarray(image, dtype=np.int64)
        if array.min(initial=0) < 0:
            raise ValueError(f"negative pixel values (down to {array.min()})")
        maximum = 65535
        if image.mode == "I":
            maximum = next(m for m in (255, 65535, 2**31 - 1) if array.max(initial=0) <= m)
        gray = (array * 255 // maximum).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so that transparent areas don't turn into arbitrary colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def image_sizes(paths: Iterable[str | Path]) -> list[tuple[int, int]]:
    """(width, height) of each image file that can still be opened (its header alone is read)."""
    sizes = []
    for path in paths:
        with contextlib.suppress(OSError, ValueError), Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8; DataError naming the file on any problem."""
    image = open_image(path)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot convert mode {image.mode} to RGB: {error}") from None


def read_mask_values(sample: Sample) -> np.ndarray:
    """A mask file as (H, W) uint8 source values (Cityscapes label ids for colour masks)."""
    assert sample.mask is not None
    image = open_image(sample.mask)
    if sample.mask_type == "color":
        return _colors_to_label_ids(np.asarray(image.convert("RGB")), sample.mask)
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DataError(f"{sample.mask}: mask has mode {image.mode}, expected one index channel")
    values = np.asarray(image)
    if values.max(initial=0) > 255 or values.min(initial=0) < 0:
        bad = np.unique(values[(values > 255) | (values < 0)])[:5].tolist()
        raise DataError(f"{sample.mask}: mask values {bad} outside 0..255")
    return values.astype(np.uint8)


def read_train_ids(sample: Sample, class_set: ClassSet) -> tuple[np.ndarray, np.ndarray]:
    """A sample's mask as (source values, train ids); DataError if missing or not in the table."""
    if sample.mask is None:
        raise DataError(f"{sample.image}: no mask found for this image")
    values = read_mask_values(sample)
    try:
        return values, class_set.encode(values)
    except ValueError as error:
        raise DataError(f"{sample.mask}: {error}") from None


def read_pair(sample: Sample, class_set: ClassSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, mask source values, train ids) of a sample, checked to have the same size."""
    values, train_ids = read_train_ids(sample, class_set)
    rgb = read_rgb(sample.image)
    if values.shape != rgb.shape[:2]:
        raise DataError(
            f"{sample.mask}: mask is {values.shape[1]}x{values.shape[0]} but its image "
            f"{sample.image.name} is {rgb.shape[1]}x{rgb.shape[0]}"
        )
    return rgb, values, train_ids


def resize_pair(
    rgb: np.ndarray, train_ids: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` = (W, H): bilinear for the image, nearest neighbour for the mask.

    PIL's bilinear filter widens its support when shrinking, so it averages like an area filter.
    """
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(train_ids).resize(size, Image.Resampling.NEAREST))
    return image, mask


_COLOR_TABLE = cityscapes_color_to_label_id()
_COLOR_KEYS = np.array(sorted(r << 16 | g << 8 | b for r, g, b in _COLOR_TABLE), dtype=np.int64)
_COLOR_IDS = np.array(
    [_COLOR_TABLE[(k >> 16 & 255, k >> 8 & 255, k & 255)] for k in _COLOR_KEYS], dtype=np.uint8
)


def _colors_to_label_ids(rgb: np.ndarray, path: Path) -> np.ndarray:
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    position = np.clip(np.searchsorted(_COLOR_KEYS, keys), 0, len(_COLOR_KEYS) - 1)
    unknown = _COLOR_KEYS[position] != keys
    if unknown.any():
        r, g, b = rgb[unknown][0].tolist()
        raise DataError(f"{path}: colour ({r}, {g}, {b}) is not in the Cityscapes palette")
    return _COLOR_IDS[position]


def list_images(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files (files with these ``extensions``) below ``folder``, sorted. Links to folders
    are followed, each folder once (a link loop ends there); broken links are listed, so that
    reading them names the problem."""
    found, seen = [], set()
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        found += [Path(top, f) for f in files if Path(f).suffix.lower() in extensions]
    return sorted(found)
