"""Reading and writing video clips through PyAV (FFmpeg's libraries, bundled in its wheels).

Frames stream one at a time both ways, so a clip of any length costs a few frames of memory.
Every problem opening or decoding a clip becomes a one-line DataError naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from unetseg.data.io import DataError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
DEFAULT_RATE = Fraction(25)  # frames per second when a clip does not say
CODEC = "libx264"
# Near-lossless H.264 that every player opens (yuv420p); colour masks keep their flat colours.
ENCODER_OPTIONS = {"crf": "12", "preset": "veryfast"}
INSTALL = "pip install 'unetseg[video]'"


def is_video(path: Path) -> bool:
    """Whether ``path`` names a video clip (by its suffix)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class Clip:
    """A clip's first video stream: its frame size, rate and (where the container says) length."""

    path: Path
    width: int
    height: int
    rate: Fraction
    frames: int | None


def _av(path: Path) -> ModuleType:
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: reading and writing video needs PyAV: {INSTALL}") from None
    return av


@contextlib.contextmanager
def open_clip(path: Path) -> Iterator[tuple[Clip, Iterator[tuple[np.ndarray, float]]]]:
    """The clip's description and an iterator over its frames as ((H, W, 3) uint8 RGB, time in
    seconds), decoded as they are asked for. DataError naming the file on any problem."""
    av = _av(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise DataError(f"{path}: not a video FFmpeg can read ({_reason(error)})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream in this file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or DEFAULT_RATE
        clip = Clip(path, stream.width, stream.height, Fraction(rate), stream.frames or None)
        yield clip, _frames(av, container, stream, clip)


def _frames(av: ModuleType, container, stream, clip: Clip) -> Iterator[tuple[np.ndarray, float]]:
    index = 0
    try:
        for frame in container.decode(stream):
            time = frame.time if frame.time is not None else index / clip.rate
            yield frame.to_ndarray(format="rgb24"), float(time)
            index += 1
    except av.FFmpegError as error:
        raise DataError(f"{clip.path}: cannot decode frame {index}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """FFmpeg's own words, without the errno and file name it repeats."""
    return getattr(error, "strerror", None) or str(error)


class VideoWriter:
    """Writes RGB frames to an H.264 file at ``rate``. The file appears under its name only when
    closed: complete, or (``close(keep=True)`` after a stop) holding the frames written so far.
    Odd frame sides are padded by one repeated row or column (H.264 in yuv420p needs even ones).
    Encoding problems are OSErrors naming the file."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction) -> None:
        self.av = _av(path)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
        with self._errors_named():
            self.container = self.av.open(str(self.temporary), mode="w")
            self.stream = self.container.add_stream(CODEC, rate=rate, options=ENCODER_OPTIONS)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 frame of the size given at construction."""
        height, width = rgb.shape[:2]
        padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        with self._errors_named():
            frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
            self.container.mux(self.stream.encode(frame))

    def close(self, keep: bool = True) -> None:
        """Finish the file and move it under its name (``keep``), or remove it."""
        try:
            with self._errors_named():
                self.container.mux(self.stream.encode(None))
                self.container.close()
            if keep:
                os.replace(self.temporary, self.path)
        finally:
            self.temporary.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _errors_named(self) -> Iterator[None]:
        try:
            yield
        except self.av.FFmpegError as error:
            self.temporary.unlink(missing_ok=True)
            raise OSError(f"{self.path}: cannot write video: {_reason(error)}") from None
