"""One parallel map over processes with a progress bar, for per-file work (decode, check, count)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    function: Callable[..., R],
    items: Sequence[T],
    *shared: object,
    description: str,
    unit: str = "img",
    progress: bool = True,
) -> Iterator[R]:
    """``function(item, *shared)`` for every item, results in order, over all cores.

    Small inputs stay in this process (starting workers costs more than it saves). Stopping the
    iteration early (or Ctrl-C) cancels the work not yet started.
    """
    workers = min(os.cpu_count() or 1, max(1, len(items) // 8))
    arguments = [itertools.repeat(value) for value in shared]
    with tqdm(total=len(items), desc=description, unit=unit, disable=not progress) as bar:
        if workers <= 1:
            for result in map(function, items, *arguments):
                bar.update()
                yield result
            return
        pool = ProcessPoolExecutor(workers)
        try:
            for result in pool.map(function, items, *arguments, chunksize=4):
                bar.update()
                yield result
        finally:
            pool.shutdown(cancel_futures=True)
