"""The one-time training cache: every pair decoded, checked and resized once, then memory-mapped.

An epoch then decodes no PNGs: images live in one uint8 (N, H, W, 3) array and masks (already train
ids) in one uint8 (N, H, W) array, both ``.npy`` files opened with ``mmap_mode="r"``. A cache is keyed
by its source files (paths, sizes, mtimes), class set and size, and built in a temporary folder that is
renamed into place only when complete, so an interrupted prepare leaves no half cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetseg.core.classes import ClassSet
from unetseg.core.parallel import parallel_map
from unetseg.core.runtime import sigterm_as_interrupt
from unetseg.data.io import DataError, Sample, read_pair, resize_pair

CACHE_VERSION = 1


@dataclass(frozen=True)
class PreparedPair:
    """One pair at the training size, or the problem that stopped it."""

    image: np.ndarray | None
    mask: np.ndarray | None
    has_rare: bool = False
    problem: str | None = None


def load_pair(sample: Sample, class_set: ClassSet, size: tuple[int, int] | None) -> PreparedPair:
    """Decode, check and (if ``size`` = (W, H) is given) resize one pair; never raises DataError."""
    try:
        rgb, values, train_ids = read_pair(sample, class_set)
    except DataError as error:
        return PreparedPair(None, None, problem=str(error))
    has_rare = bool(class_set.rare_values) and bool(np.isin(values, class_set.rare_values).any())
    if size is not None:
        rgb, train_ids = resize_pair(rgb, train_ids, size)
    return PreparedPair(rgb, train_ids, has_rare)


def pair_problem(sample: Sample, class_set: ClassSet) -> str | None:
    """What is wrong with a pair, or None (the decoded arrays stay in the worker)."""
    return load_pair(sample, class_set, None).problem


def check_samples(
    samples: Sequence[Sample], class_set: ClassSet, progress: bool = True
) -> list[str]:
    """Every problem of every pair (missing mask, unreadable file, size mismatch, bad value)."""
    problems = parallel_map(
        pair_problem, samples, class_set, description="checking", progress=progress
    )
    return [problem for problem in problems if problem]


class CachedSplit(torch.utils.data.Dataset):
    """A prepared split: ``(image uint8 (H, W, 3), mask uint8 (H, W))`` tensors by index."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = json.loads((folder / "index.json").read_text())
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.masks = np.load(folder / "masks.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[i])), torch.from_numpy(np.array(self.masks[i]))

    @property
    def sources(self) -> list[str]:
        """The source image path of each entry."""
        return self.index["images"]


def cache_key(
    samples: Sequence[Sample], class_set: ClassSet, size: tuple[int, int], drop_rare: bool
) -> str:
    """A digest of everything the cache content depends on."""
    files = []
    for sample in samples:
        for path in (sample.image, sample.mask):
            stat = path.stat() if path is not None and path.exists() else None
            files.append(
                [str(path), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1]
            )
    blob = json.dumps(
        [CACHE_VERSION, files, class_set.lookup, list(size), drop_rare], separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def prepare_split(
    samples: Sequence[Sample],
    class_set: ClassSet,
    size: tuple[int, int],
    cache_root: Path,
    name: str,
    drop_rare: bool = False,
    progress: bool = True,
) -> CachedSplit:
    """The cached split for these samples, built (checking every pair) unless it already exists.

    Raises DataError listing every problem found; nothing is cached then.
    """
    if not samples:
        raise DataError(f"{name}: no samples found")
    folder = cache_root / f"{name}-{cache_key(samples, class_set, size, drop_rare)}"
    if (folder / "index.json").is_file():
        return CachedSplit(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache_root, folder.name)
    temporary = cache_root / f".tmp-{folder.name}-{os.getpid()}"
    with sigterm_as_interrupt():  # SIGTERM too removes the half-built cache
        temporary.mkdir()
        try:
            _write_cache(samples, class_set, size, temporary, drop_rare, name, progress)
            try:
                os.replace(temporary, folder)
            except OSError:  # another process finished the same cache first
                if not (folder / "index.json").is_file():
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return CachedSplit(folder)


def _remove_abandoned(cache_root: Path, name: str) -> None:
    """Delete half-built caches of ``name`` whose builder process is gone (killed with -9)."""
    for partial in cache_root.glob(f".tmp-{name}-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 .npy array memory-mapped for writing, its blocks allocated on disk first: a
    memory-mapped write to a sparse file on a full disk kills the process with SIGBUS, while
    allocating says "No space left on device" (OSError) before any work."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if allocate is not None:
        with open(path, "r+b") as handle:
            try:
                allocate(handle.fileno(), 0, os.path.getsize(path))
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # unsupported: go on
                    raise
    return array


def _write_cache(
    samples: Sequence[Sample],
    class_set: ClassSet,
    size: tuple[int, int],
    folder: Path,
    drop_rare: bool,
    name: str,
    progress: bool,
) -> None:
    width, height = size
    images = _allocated_memmap(folder / "images.npy", (len(samples), height, width, 3))
    masks = _allocated_memmap(folder / "masks.npy", (len(samples), height, width))
    kept, problems = [], []
    pairs = parallel_map(
        load_pair, samples, class_set, size, description=f"prepare {name}", progress=progress
    )
    for sample, pair in zip(samples, pairs):
        if pair.problem:
            problems.append(pair.problem)
        elif not (drop_rare and pair.has_rare):
            images[len(kept)], masks[len(kept)] = pair.image, pair.mask
            kept.append(sample)
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {name}:\n" + "\n".join(problems))
    if not kept:
        raise DataError(f"{name}: every sample was dropped")
    images.flush()
    masks.flush()
    del images, masks
    if len(kept) < len(samples):  # shrink to the kept rows
        for file in ("images.npy", "masks.npy"):
            full = np.load(folder / file, mmap_mode="r")
            np.save(folder / f"{file}.part", np.ascontiguousarray(full[: len(kept)]))
            del full
            os.replace(folder / f"{file}.part.npy", folder / file)
    index = {
        "version": CACHE_VERSION,
        "size": list(size),
        "class_set": class_set.name,
        "images": [str(s.image) for s in kept],
        "masks": [str(s.mask) for s in kept],
        "dropped": len(samples) - len(kept),
    }
    (folder / "index.json").write_text(json.dumps(index, indent=1))
