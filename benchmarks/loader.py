"""Is data loading ever the bottleneck? Loader rate vs. training rate, side by side, per size.

    python benchmarks/loader.py [--sizes 512x256,1024x512,2048x1024] [--images 2975] [--width 64]

For each size, a training cache of ``--images`` rows (Cityscapes' 2,975 train images by default;
the rows repeat ``--distinct`` synthetic scenes, since what is measured is reading and augmenting,
not the scenes) is written as ``prepare`` writes it: memory-mapped uint8 arrays. At 2048x1024 it
holds 25 GB, more than this machine's memory, so batches drawn at random across it come from disk.
The loader rate covers what an epoch does besides the model: random batches through the
DataLoader (``--workers`` processes, each mapping the same files) and the default augmentation.
The training rate is the real ``Trainer.train_step`` of the width-64 U-Net, fed by that loader,
with the default precision and layout. Memory is the machine's used memory (MemTotal minus
MemAvailable: every process's private memory, not the reclaimable page cache of the mapped
files), before and at its peak while the loader alone runs. The last line is JSON, one entry per size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import Output, alternating_rates, machine

from unetseg.commands.cli import parse_size
from unetseg.core.config import load_config
from unetseg.data.cache import CachedSplit
from unetseg.data.loader import StreamBatchSampler, train_loader
from unetseg.data.transforms import prepare_batch
from unetseg.engine.train import Trainer, step_generator


def used_memory_gb() -> float:
    """MemTotal - MemAvailable of the machine, in GB."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 2**20


class PeakMemory:
    """The highest ``used_memory_gb`` seen, sampled every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.peak = used_memory_gb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, used_memory_gb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def tiled_cache(source: CachedSplit, rows: int, folder: Path) -> CachedSplit:
    """A cache of ``rows`` pairs repeating ``source``'s, written in the cache's own format."""
    if (folder / "index.json").is_file():
        return CachedSplit(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(
        folder / "images.npy", "w+", np.uint8, (rows, *source.images.shape[1:])
    )
    masks = np.lib.format.open_memmap(
        folder / "masks.npy", "w+", np.uint8, (rows, *source.masks.shape[1:])
    )
    for row in range(rows):
        images[row], masks[row] = source.images[row % len(source)], source.masks[row % len(source)]
    images.flush()
    masks.flush()
    del images, masks
    index = {**source.index, "images": [source.sources[r % len(source)] for r in range(rows)]}
    (folder / "index.json").write_text(json.dumps(index))
    return CachedSplit(folder)


def measure_size(args: argparse.Namespace, width: int, height: int, out: Output) -> dict:
    config = load_config(
        None,
        [
            f"data.root={args.work / f'synthetic_{width}x{height}'}",
            f"data.cache_dir={args.work / 'cache'}",
            f"data.size=[{width},{height}]",
            f"data.synthetic_train={args.distinct}",
            "data.synthetic_val=2",
            f"model.width={args.width}",
            f"train.batch_size={args.batch}",
            "train.accum_steps=1",
            "train.training_iterations=1000000",
            f"data.num_workers={args.workers}",
        ],
    )
    trainer = Trainer(config, args.work / f"run_{width}x{height}", resume=False, progress=False)
    started = time.perf_counter()
    dataset = tiled_cache(
        trainer.data["train"], args.images, args.work / f"tiled_{args.images}_{width}x{height}"
    )
    written_s = time.perf_counter() - started
    size_gb = sum(f.stat().st_size for f in dataset.folder.glob("*.npy")) / 1e9
    rt = trainer.rt
    before = used_memory_gb()
    sampler = StreamBatchSampler(len(dataset), args.batch, seed=0)
    batches = iter(train_loader(dataset, sampler, args.workers, rt.device))
    counter = itertools.count()

    def load_batches() -> int:
        for _ in range(args.loader_batches):
            images, masks = next(batches)
            prepare_batch(
                images.to(rt.device),
                masks.to(rt.device),
                config.augment,
                step_generator(0, next(counter), 0, 0),
            )
        return args.loader_batches * args.batch

    def train_steps() -> int:
        trainer.train_step(batches)
        return args.batch

    with PeakMemory() as memory:  # the loader alone: the model's activations are not its own
        for _ in range(args.repeats):
            load_batches()
    rates = alternating_rates({"loader": load_batches, "train": train_steps}, args.repeats, 1)
    result = {
        "size": f"{width}x{height}",
        "cache_gb": round(size_gb, 1),
        "loader_img_s": round(rates["loader"], 2),
        "train_img_s": round(rates["train"], 3),
        "ratio": round(rates["loader"] / rates["train"], 1),
        "used_gb_before": round(before, 2),
        "used_gb_peak": round(memory.peak, 2),
    }
    out(
        f"{width}x{height}: cache {size_gb:.1f} GB ({args.images} rows, written in "
        f"{written_s:.0f} s); loader {rates['loader']:.2f} img/s, training "
        f"{rates['train']:.3f} img/s, ratio {result['ratio']}x; used memory "
        f"{before:.2f} GB before, {memory.peak:.2f} GB at the loader's peak"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="U-Net width (64)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (4)")
    parser.add_argument(
        "--sizes",
        type=lambda text: [parse_size(s) for s in text.split(",")],
        default=[(512, 256)],
        help="WIDTHxHEIGHT[,...] (512x256)",
    )
    parser.add_argument("--images", type=int, default=64, help="rows of the cache (64)")
    parser.add_argument("--distinct", type=int, default=16, help="distinct scenes in it (16)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (0)")
    parser.add_argument("--loader-batches", type=int, default=8, help="batches per timing (8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (5)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-bench")
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    args = parser.parse_args()
    out = Output()
    out(
        f"machine: {machine()}; width {args.width}, batch {args.batch}, workers {args.workers}, "
        f"{args.images} cached images"
    )
    results = [measure_size(args, width, height, out) for width, height in args.sizes]
    out(json.dumps(results))
    out.record(args.record, "Data loading vs training (benchmarks/loader.py)")


if __name__ == "__main__":
    main()
