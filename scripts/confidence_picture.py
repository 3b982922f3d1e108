"""The README's picture of confidence maps and the domain check: one row per input (image |
overlay | calibrated confidence, dark where the model is unsure), captioned with the input's
name and its domain-check warnings, through the Python API.

    python scripts/confidence_picture.py --checkpoint RUN/final.pt --input A.png B.png \
        --out docs/images/confidence.png
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import unetseg
from unetseg.commands.outputs import confidence_image
from unetseg.engine import viz

TILE_WIDTH = 320
CAPTION_CHARS = 3 * TILE_WIDTH // 6  # the default bitmap font is about 6 pixels a character


def row(result: unetseg.Segmentation) -> np.ndarray:
    """Image | overlay | confidence, each TILE_WIDTH wide, above a caption of its warnings."""
    grey = confidence_image(result.confidence)
    tiles = [result.image, result.overlay(), np.repeat(grey[..., None], 3, axis=2)]
    height = round(TILE_WIDTH * result.image.shape[0] / result.image.shape[1])
    strip = np.concatenate(
        [np.asarray(Image.fromarray(t).resize((TILE_WIDTH, height))) for t in tiles], axis=1
    )
    words = "; ".join(result.warnings) or "no warning: like the training data"
    lines = textwrap.wrap(f"{result.name}: {words}", CAPTION_CHARS)
    caption = Image.new("RGB", (strip.shape[1], 4 + 12 * len(lines)), (255, 255, 255))
    ImageDraw.Draw(caption).multiline_text((4, 2), "\n".join(lines), fill=(0, 0, 0), spacing=1)
    return np.concatenate([strip, np.asarray(caption)], axis=0)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--input", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model = unetseg.load(args.checkpoint, device="cpu")
    results = model.predict([str(p) for p in args.input], confidence=True)
    viz.save_image(np.concatenate([row(r) for r in results], axis=0), args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
