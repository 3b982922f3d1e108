"""Finding the samples of a split for any configured data set kind."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from unetseg.core.config import DataConfig
from unetseg.data.cityscapes import find_cityscapes
from unetseg.data.folders import find_folders
from unetseg.data.io import Sample
from unetseg.data.synthetic import COMPLETE_MARKER, synthesize


def find_samples(data: DataConfig, split: str, root: Path | None = None) -> list[Sample]:
    """The samples of ``split`` ("train" or "val" role names map to the configured splits)."""
    root = Path(root or data.root)
    split_name = {"train": data.train_split, "val": data.val_split}.get(split, split)
    if data.kind == "folders":
        samples = find_folders(root, split_name, data.mask_dir_suffix)
    else:
        samples = find_cityscapes(root, split_name, data.mask_type)
    patterns = {"train": data.train_filter, "val": data.val_filter}.get(split, [])
    if patterns:
        samples = [s for s in samples if any(fnmatch.fnmatch(s.image.name, p) for p in patterns)]
    return samples


def no_samples(data: DataConfig, split: str) -> str:
    """The problem of a split that holds no samples, naming where they were looked for."""
    split_name = {"train": data.train_split, "val": data.val_split}.get(split, split)
    return f"{split}: no samples of split {split_name!r} under {data.root}"


def ensure_synthetic(data: DataConfig, progress: bool = True) -> None:
    """Write the synthetic data set under ``data.root`` unless a complete one is there.

    Only for ``data.kind: synthetic``; an interrupted earlier attempt is simply written again.
    """

    root = Path(data.root)
    if data.kind != "synthetic" or (root / COMPLETE_MARKER).is_file():
        return

    synthesize(
        root,
        n_train=data.synthetic_train,
        n_val=data.synthetic_val,
        size=(data.size[0], data.size[1]),
        seed=data.synthetic_seed,
        progress=progress,
    )
