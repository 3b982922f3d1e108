"""The data of a run, ready to train on: synthesized if need be, checked, and cached."""

from __future__ import annotations

import os
from pathlib import Path

from unetseg.core.classes import ClassSet
from unetseg.core.config import Config
from unetseg.data.cache import CachedSplit, prepare_split
from unetseg.data.sources import ensure_synthetic, find_samples


def cache_root(config: Config) -> Path:
    """The cache folder: ``data.cache_dir``, else $UNETSEG_CACHE, else ~/.cache/unetseg."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("UNETSEG_CACHE", Path.home() / ".cache" / "unetseg"))


def prepare_data(
    config: Config,
    class_set: ClassSet,
    splits: tuple[str, ...] = ("train", "val"),
    progress: bool = True,
) -> dict[str, CachedSplit]:
    """Synthesize (if needed), check and cache the splits; DataError lists every bad file."""
    ensure_synthetic(config.data, progress=progress)
    size = (config.data.size[0], config.data.size[1])
    return {
        split: prepare_split(
            find_samples(config.data, split),
            class_set,
            size,
            cache_root(config),
            name=f"{Path(config.data.root).name}-{split}",
            drop_rare=config.data.drop_rare_classes,
            progress=progress,
        )
        for split in splits
    }
