"""Shared pieces of the benchmarks: median timing and a description of the machine."""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def alternating_rates(
    runs: dict[str, Callable[[], int]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median items/s of each run, the runs taking turns (so slow phases of the machine hit all)."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(warmup + repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            items = run()
            if repeat >= warmup:
                rates[name].append(items / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def median_rate(run: Callable[[], int], repeats: int, warmup: int = 2) -> float:
    """Median items/second of ``run`` (which returns how many items it processed)."""
    return alternating_rates({"run": run}, repeats, warmup)["run"]


def machine() -> str:
    """A one-line description of where the benchmark ran."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, {device}, torch {torch.__version__}"


class Output:
    """Prints lines and keeps them, so ``--record`` can append exactly what was printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def record(self, results: Path | None, title: str) -> None:
        """Append a dated section (machine, command, output) to the results file."""
        if results is None:
            return
        command = " ".join(["python", *sys.argv])
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        section = [
            f"## {title}",
            "",
            f"{stamp}, {machine()}",
            "",
            f"`{command}`",
            "",
            "```",
            *self.lines,
            "```",
            "",
        ]
        with open(results, "a", encoding="utf-8") as handle:
            handle.write("\n".join(section) + "\n")
