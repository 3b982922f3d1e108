"""The official Cityscapes layout: leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/."""

from __future__ import annotations

from pathlib import Path

from unetseg.data.io import DataError, Sample

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "color": "_gtFine_color.png"}


def find_cityscapes(root: Path, split: str, mask_type: str = "labelIds") -> list[Sample]:
    """Image/mask pairs of one split, sorted; a missing mask leaves ``mask=None``."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(
            f"{image_dir}: no such folder (expected the Cityscapes layout under {root})"
        )
    suffix = MASK_SUFFIXES[mask_type]
    samples = []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[: -len(IMAGE_SUFFIX)]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}{suffix}"
        samples.append(
            Sample(
                image=image,
                mask=mask if mask.is_file() else None,
                mask_type="color" if mask_type == "color" else "index",
            )
        )
    return samples
