"""Any folder of images with a sibling folder of index masks, paired by file stem (CamVid style)."""

from __future__ import annotations

from pathlib import Path

from unetseg.data.io import DataError, Sample, list_images


def find_folders(root: Path, split: str, mask_dir_suffix: str = "annot") -> list[Sample]:
    """Pairs ``root/<split>/X.*`` with ``root/<split><suffix>/X.png`` (any image extension)."""
    image_dir, mask_dir = root / split, root / f"{split}{mask_dir_suffix}"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such folder (expected images in {root}/<split>)")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in _images_if_dir(mask_dir)}
    return [
        Sample(image=image, mask=masks.get(image.relative_to(image_dir).with_suffix("")))
        for image in list_images(image_dir)
    ]


def _images_if_dir(folder: Path) -> list[Path]:
    return list_images(folder) if folder.is_dir() else []
