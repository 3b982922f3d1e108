"""One parallel map over processes with a progress bar, for per-file work (decode, check, count)."""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


def _die_with_parent(parent: int) -> None:
    """Worker initializer: kill this worker when the parent process dies, even by SIGKILL.

    Forked workers hold both ends of the pool's queues, so a killed parent would leave them waiting
    forever, holding memory and cores."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


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
        pool = ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            for result in pool.map(function, items, *arguments, chunksize=4):
                bar.update()
                yield result
        finally:
            pool.shutdown(cancel_futures=True)
