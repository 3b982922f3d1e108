"""Shared pieces of the benchmarks: median timing and a description of the machine."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_rate(run: Callable[[], int], repeats: int, warmup: int = 2) -> float:
    """Median items/second of ``run`` (which returns how many items it processed)."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def machine() -> str:
    """A one-line description of where the benchmark ran."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, {device}, torch {torch.__version__}"
