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

from unetseg.core.config import load_config
from unetseg.core.runtime import cpu_supports_bf16
from unetseg.engine.train import Trainer


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
    """A one-line description of where the benchmark ran.

    Whether the CPU has native bf16 matters most on a CPU: without it the default precision is
    fp32 and training runs about half as fast (benchmarks/RESULTS.md).
    """
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    return (
        f"{cpu_name()} ({bf16}), {torch.get_num_threads()} torch threads, {device}, "
        f"torch {torch.__version__}"
    )


def cpu_name() -> str:
    """The CPU's model name (Linux), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{platform.machine()} {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def trainer_for(
    work: Path, size: tuple[int, int], width: int, batch: int, extra: list[str]
) -> Trainer:
    """A Trainer on a few synthetic scenes of ``size`` (written once under ``work``)."""
    config = load_config(
        None,
        [
            f"data.root={work / f'synthetic_{size[0]}x{size[1]}'}",
            f"data.cache_dir={work / 'cache'}",
            f"data.size=[{size[0]},{size[1]}]",
            "data.synthetic_train=16",
            "data.synthetic_val=4",
            f"model.width={width}",
            f"train.batch_size={batch}",
            "train.accum_steps=1",
            "train.training_iterations=1000000",
            *extra,
        ],
    )
    return Trainer(config, work / "run", resume=False, progress=False)
