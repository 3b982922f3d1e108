"""Frames (image files matching a glob, in name order) as one H.264 clip, to try ``unetseg predict``
on video with frames of a data set:

    python scripts/frames_to_clip.py "../shared/data/camvid/train/0001TP_*.png" clip.mp4 --fps 10
"""

from __future__ import annotations

import argparse
import glob
from fractions import Fraction
from pathlib import Path

from unetseg.data.io import read_rgb
from unetseg.data.video import VideoWriter


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", help="a glob of image files of one size (quote it)")
    parser.add_argument("out", type=Path, help="the clip (.mp4)")
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args(argv)
    paths = sorted(Path(p) for p in glob.glob(args.frames))
    if not paths:
        parser.error(f"no files match {args.frames}")
    first = read_rgb(paths[0])
    writer = VideoWriter(args.out, first.shape[1], first.shape[0], Fraction(args.fps))
    try:
        for path in paths:
            frame = read_rgb(path)
            if frame.shape != first.shape:
                parser.error(
                    f"{path}: {frame.shape[1]}x{frame.shape[0]}, not {first.shape[1]}x{first.shape[0]} as {paths[0]}"
                )
            writer.write(frame)
    except BaseException:
        writer.close(keep=False)
        raise
    writer.close()
    print(f"wrote {args.out}: {len(paths)} frames at {args.fps} frames/s")
    return args.out


if __name__ == "__main__":
    main()
