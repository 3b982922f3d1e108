"""The memory allocator: U-Net training and inference under glibc vs mimalloc, side by side.

    python benchmarks/allocator.py [--width 32] [--size 512x256] [--batch 4] [--rounds 2]
                                   [--record benchmarks/RESULTS.md]

An allocator is fixed when a process starts, so each measurement runs in a fresh process (this
script with ``--child``): the system allocator, and mimalloc preloaded as ``unetseg`` does it
(``unetseg.core.allocator``). The two alternate for ``--rounds`` rounds; each child reports the median of
5 training steps (bf16 autocast where native + channels_last, cross-entropy, AdamW) and 5 batch-1
inferences after 3 warm-up calls, plus its system CPU time (page faults show up there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Output

from unetseg.commands.cli import parse_size
from unetseg.core.allocator import PRELOADED, mimalloc_library
from unetseg.core.model import UNet
from unetseg.core.runtime import select_precision


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="U-Net width (32)")
    parser.add_argument("--size", type=parse_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=int, default=4, help="training batch (4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (2)")
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def median_rate(run, items: int) -> float:
    """Median items/s of 5 calls after 3 warm-up calls."""
    for _ in range(3):
        run()
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def child(args: argparse.Namespace) -> None:
    """Measure in this process and print one JSON line."""
    torch.manual_seed(0)
    width, height = args.size
    dtype = select_precision("auto", torch.device("cpu"))
    model = UNet(19, width=args.width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(args.batch, 3, height, width).to(memory_format=torch.channels_last)
    y = torch.randint(0, 19, (args.batch, height, width))
    autocast = torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None)

    def train_step() -> None:
        model.train()
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast:
            model(x[:1])

    train = median_rate(train_step, args.batch)
    inference = median_rate(infer, 1)
    print(json.dumps({"train": train, "infer": inference, "system_s": os.times().system}))


def measure(args: argparse.Namespace, preload: Path | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
    env[PRELOADED] = "1"  # measure exactly the allocator chosen here
    if preload is not None:
        env.update(LD_PRELOAD=str(preload), MIMALLOC_PURGE_DELAY="-1")
    command = [sys.executable, __file__, "--child", f"--width={args.width}"]
    command += [f"--size={args.size[0]}x{args.size[1]}", f"--batch={args.batch}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    library = mimalloc_library()
    if library is None:
        sys.exit("cmeel-mimalloc is not installed: nothing to compare")
    out = Output()
    width, height = args.size
    out(
        f"U-Net width {args.width}, {width}x{height}, training batch {args.batch}, inference batch 1"
    )
    results: dict[str, list[dict[str, float]]] = {"glibc": [], "mimalloc": []}
    for _ in range(args.rounds):
        for name, preload in (("glibc", None), ("mimalloc", library)):
            results[name].append(measure(args, preload))
            row = results[name][-1]
            out(
                f"{name:>8}: train {row['train']:.3f} img/s, infer {row['infer']:.3f} img/s, "
                f"system CPU {row['system_s']:.1f} s"
            )
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in ("train", "infer")}
        for name, rows in results.items()
    }
    ratios = {key: medians["mimalloc"][key] / medians["glibc"][key] for key in ("train", "infer")}
    out(f"mimalloc / glibc: training {ratios['train']:.2f}x, inference {ratios['infer']:.2f}x")
    out(json.dumps({"ratios": ratios, "medians": medians, "width": args.width}))
    out.record(args.record, "Allocator: glibc vs mimalloc (benchmarks/allocator.py)")


if __name__ == "__main__":
    main()
