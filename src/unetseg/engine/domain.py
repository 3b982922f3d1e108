"""The domain check: how far an input lies outside the data a model was trained on.

At the end of training the model keeps a profile of its training data (``DomainProfile``): each
training image's brightness, contrast, saturation and fine detail, the source images' sizes, the
classes' pixel shares, and the model's own calibrated confidence on each val image. ``check``
compares one input with it and names what differs: a feature beyond every training image's, or
a mix of them far from the nearest training images (in units of the training images' own
spread); an aspect ratio or size no training image had; a mean confidence below every val
image's; a class covering much more of the input than of the training pixels. On CamVid these
features alone separate the darker 0001TP street and synthetic scenes from the streets trained on
(tests/test_domain.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from unetseg.core.classes import ClassSet
from unetseg.data.cache import CachedSplit
from unetseg.data.io import image_sizes
from unetseg.data.statistics import stats_of_masks

FEATURES = ("brightness", "contrast", "saturation", "detail")
# Per-feature words for an input below / above every training image.
WORDS = {
    "brightness": ("darker", "brighter"),
    "contrast": ("lower in contrast", "higher in contrast"),
    "saturation": ("greyer", "more saturated"),
    "detail": ("smoother", "more detailed (texture or noise)"),
}
# Features are read at this area (or the training images' own, if smaller): cheap, and the same
# for an image and its copy at another resolution.
THUMBNAIL_PIXELS = 96 * 72
NEIGHBOURS = 5
MAX_IMAGES = 2000  # training images a profile keeps (an even spread of a larger split)
ASPECT_TOLERANCE = 1.15  # an aspect ratio within 15% of a training one is not "another"
SMALLER = 0.5  # inputs with both sides under half the smallest training image's are "smaller"
CLASS_SHARE = (0.3, 10.0)  # a class over 30% of an input and 10x its training share
# Below every val image's mean confidence by this much: a model that is unsure everywhere (barely
# trained) would otherwise warn on noise in the third decimal.
CONFIDENCE_MARGIN = 0.01
PROFILE_VERSION = 1


def image_features(rgb: np.ndarray, pixels: int = THUMBNAIL_PIXELS) -> np.ndarray:
    """(4,) float64 ``FEATURES`` of an (H, W, 3) uint8 image, read at an area of ``pixels``:
    brightness (mean luma), contrast (luma std), saturation (mean HSV saturation) and detail
    (mean absolute difference of each luma pixel from its 3x3 neighbourhood's mean)."""
    height, width = rgb.shape[:2]
    scale = min(1.0, math.sqrt(pixels / (height * width)))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = (
        np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), np.float64) / 255
    )
    luma = small @ np.array([0.299, 0.587, 0.114])
    top, bottom = small.max(axis=2), small.min(axis=2)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-12), 0.0)
    padded = np.pad(luma, 1, mode="edge")
    rows, columns = luma.shape
    box = sum(padded[i : i + rows, j : j + columns] for i in range(3) for j in range(3)) / 9
    return np.array([luma.mean(), luma.std(), saturation.mean(), np.abs(luma - box).mean()])


@dataclasses.dataclass
class DomainProfile:
    """What a model's training data looked like (see the module's docstring)."""

    features: np.ndarray  # (N, 3) FEATURES of the training images
    sizes: dict[str, int]  # "WxH" of the source images -> how many
    class_share: dict[str, float]  # labelled-pixel share per class in training
    val_confidence: list[float]  # mean calibrated confidence of each val image
    thumbnail_pixels: int = THUMBNAIL_PIXELS  # the area the features were read at
    distance_limit: float = 0.0  # the training images' own 99th-percentile neighbour distance

    def __post_init__(self) -> None:
        if not self.distance_limit and len(self.features) > 1:
            self.distance_limit = float(np.percentile(self._neighbour_distances(), 99))
        self.distance_limit = self.distance_limit or 1.0  # one image: its own spread unknown

    @property
    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features.mean(0), self.features.std(0) + 1e-6

    def _neighbour_distances(self) -> np.ndarray:
        """Each training image's distance to its nearest others (itself left out)."""
        mean, std = self._scale
        z = (self.features - mean) / std
        squared = (z**2).sum(1)
        distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * z @ z.T, 0))
        np.fill_diagonal(distances, np.inf)
        k = max(1, min(NEIGHBOURS, len(z) - 1))
        return np.sort(distances, axis=1)[:, k - 1]

    def distance(self, features: np.ndarray) -> float:
        """An input's distance to its nearest training images, in units of ``distance_limit``:
        above 1, farther than 99% of the training images lie from their own neighbours."""
        mean, std = self._scale
        z = (self.features - mean) / std
        own = np.sqrt(((z - (features - mean) / std) ** 2).sum(-1))
        nearest = np.sort(own)[min(NEIGHBOURS, len(own)) - 1]
        return float(nearest / max(self.distance_limit, 1e-6))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "features": list(FEATURES),
            "train_features": self.features.tolist(),
            "thumbnail_pixels": self.thumbnail_pixels,
            "distance_limit": self.distance_limit,
            "sizes": self.sizes,
            "class_share": self.class_share,
            "val_confidence": [round(c, 5) for c in self.val_confidence],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainProfile:
        return cls(
            np.asarray(data["train_features"], dtype=np.float64).reshape(-1, len(FEATURES)),
            {str(k): int(v) for k, v in data["sizes"].items()},
            {str(k): float(v) for k, v in data["class_share"].items()},
            [float(c) for c in data["val_confidence"]],
            int(data["thumbnail_pixels"]),
            float(data["distance_limit"]),
        )


def build_profile(
    images: Sequence[np.ndarray],
    source_sizes: Iterable[tuple[int, int]],
    class_share: dict[str, float],
    val_confidence: Sequence[float],
) -> DomainProfile:
    """The profile of training ``images`` ((H, W, 3) uint8; an even spread of at most
    ``MAX_IMAGES`` is read), their sources' (W, H) sizes and the classes' shares."""
    step = max(1, math.ceil(len(images) / MAX_IMAGES))
    height, width = np.asarray(images[0]).shape[:2]
    pixels = min(THUMBNAIL_PIXELS, height * width)
    chosen = range(0, len(images), step)
    features = np.stack([image_features(np.asarray(images[i]), pixels) for i in chosen])
    sizes: dict[str, int] = {}
    for width, height in source_sizes:
        sizes[f"{width}x{height}"] = sizes.get(f"{width}x{height}", 0) + 1
    return DomainProfile(features, sizes, class_share, list(val_confidence), pixels)


def profile_of(
    train: CachedSplit, class_set: ClassSet, val_confidence: Sequence[float]
) -> DomainProfile:
    """The profile of a cached training split, with the model's confidence on val."""
    pixels = stats_of_masks(train.masks, class_set.names).pixels
    share = dict(zip(class_set.names, (pixels / max(pixels.sum(), 1)).tolist()))
    return build_profile(train.images, image_sizes(train.sources), share, val_confidence)


@dataclasses.dataclass
class DomainCheck:
    """One input against a profile: its scores, and a warning per way it lies far outside."""

    scores: dict[str, Any]
    warnings: list[str]

    @property
    def outside(self) -> bool:
        return bool(self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores, "outside": self.outside, "warnings": self.warnings}


def check(
    profile: DomainProfile,
    rgb: np.ndarray,
    mask: np.ndarray,
    confidence: np.ndarray | None,
    class_set: ClassSet,
) -> DomainCheck:
    """How far an input (its image, predicted mask and confidence map) lies outside ``profile``."""
    features = image_features(rgb, profile.thumbnail_pixels)
    height, width = rgb.shape[:2]
    scores: dict[str, Any] = dict(zip(FEATURES, np.round(features, 4).tolist()))
    scores["appearance_distance"] = round(profile.distance(features), 3)
    scores["size"] = [width, height]
    warnings = [
        w
        for w in (
            _appearance(profile, features, scores["appearance_distance"]),
            _aspect(profile, width, height),
            _size(profile, width, height),
        )
        if w
    ]
    if confidence is not None:
        scores["mean_confidence"] = round(float(confidence.mean()), 4)
        warnings += filter(None, [_confidence(profile, scores["mean_confidence"])])
    shares = np.bincount(mask.ravel(), minlength=class_set.num_classes) / mask.size
    scores["class_share"] = {n: round(float(s), 4) for n, s in zip(class_set.names, shares)}
    warnings += _classes(profile, scores["class_share"])
    return DomainCheck(scores, warnings)


def _appearance(profile: DomainProfile, features: np.ndarray, distance: float) -> str | None:
    """Each feature beyond every training image's, or else, when the input is far from its
    nearest training images, the mix of them."""
    low, high = profile.features.min(0), profile.features.max(0)
    named = [
        f"{WORDS[name][int(value > high[i])]} than any training image ({name} {value:.2f} "
        f"against {low[i]:.2f} to {high[i]:.2f})"
        for i, (name, value) in enumerate(zip(FEATURES, features))
        if not low[i] <= value <= high[i]
    ]
    if named:
        return "; ".join(named)
    if distance > 1:
        return f"an unusual mix of {', '.join(FEATURES)} ({distance:.1f}x the training spread)"
    return None


def _aspect(profile: DomainProfile, width: int, height: int) -> str | None:
    trained = [_parse_size(size) for size in profile.sizes]
    ratios = [w / h for w, h in trained]
    if not ratios or min(abs(math.log(width / height / r)) for r in ratios) <= math.log(
        ASPECT_TOLERANCE
    ):
        return None
    common = max(profile.sizes, key=profile.sizes.get)
    return f"aspect {_ratio(width, height)} against {_ratio(*_parse_size(common))}"


def _size(profile: DomainProfile, width: int, height: int) -> str | None:
    trained = [_parse_size(size) for size in profile.sizes]
    if not trained:
        return None
    smallest = min(trained, key=lambda s: s[0] * s[1])
    if width >= SMALLER * smallest[0] or height >= SMALLER * smallest[1]:
        return None
    return f"smaller than any training image ({width}x{height} against {smallest[0]}x{smallest[1]})"


def _confidence(profile: DomainProfile, mean: float) -> str | None:
    if not profile.val_confidence or mean >= min(profile.val_confidence) - CONFIDENCE_MARGIN:
        return None
    typical = float(np.median(profile.val_confidence))
    return f"mean confidence {mean:.2f} against {typical:.2f} on val (lower than every val image)"


def _classes(profile: DomainProfile, shares: dict[str, float]) -> list[str]:
    least, factor = CLASS_SHARE
    return [
        f"{name} covers {share:.0%} of it against {profile.class_share[name]:.1%} of training pixels"
        for name, share in shares.items()
        if share > least and share > factor * profile.class_share.get(name, 0.0)
    ]


def _parse_size(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


def _ratio(width: int, height: int) -> str:
    """4:3, 2:1, 16:9 ...; an aspect without a small fraction as a decimal (1.41:1)."""
    simple = Fraction(width, height).limit_denominator(9)
    if abs(simple - Fraction(width, height)) <= 0.01 * width / height:
        return f"{simple.numerator}:{simple.denominator}"
    return f"{width / height:.2f}:1"
