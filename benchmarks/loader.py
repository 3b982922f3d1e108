"""Is data loading ever the bottleneck? Loader rate vs. training rate at 512x256, side by side.

    python benchmarks/loader.py [--width 64] [--batch 4] [--repeats 5]

The loader rate covers what an epoch does besides the model: reading cached uint8 batches through
the DataLoader and the default augmentation (colour jitter, scale/crop/flip, normalisation). The
training rate is the real ``Trainer.train_step`` of the width-64 U-Net with the default precision
and layout. The last line is JSON: loader_img_s, train_img_s, ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from common import Output, alternating_rates, machine

from unetseg.commands.cli import parse_size
from unetseg.core.config import load_config
from unetseg.data.loader import StreamBatchSampler, train_loader
from unetseg.data.transforms import prepare_batch
from unetseg.engine.train import Trainer, step_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="U-Net width (64)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (4)")
    parser.add_argument("--size", type=parse_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (5)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-bench")
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    args = parser.parse_args()
    width, height = args.size
    config = load_config(
        None,
        [
            f"data.root={args.work / f'synthetic_{width}x{height}'}",
            f"data.cache_dir={args.work / 'cache'}",
            f"data.size=[{width},{height}]",
            "data.synthetic_train=64",
            "data.synthetic_val=4",
            f"model.width={args.width}",
            f"train.batch_size={args.batch}",
            "train.accum_steps=1",
            "train.training_iterations=1000000",
        ],
    )
    trainer = Trainer(config, args.work / "run", resume=False, progress=False)
    dataset, rt = trainer.data["train"], trainer.rt
    sampler = StreamBatchSampler(len(dataset), args.batch, seed=0)
    batches = iter(train_loader(dataset, sampler, trainer.workers, rt.device))
    counter = itertools.count()

    def load_batches() -> int:
        for _ in range(8):
            images, masks = next(batches)
            x, y = prepare_batch(
                images.to(rt.device),
                masks.to(rt.device),
                config.augment,
                step_generator(0, next(counter), 0, 0),
            )
        return 8 * args.batch

    def train_steps() -> int:
        trainer.train_step(batches)
        return args.batch

    rates = alternating_rates({"loader": load_batches, "train": train_steps}, args.repeats, 2)
    loader_rate, train_rate = rates["loader"], rates["train"]
    ratio = loader_rate / train_rate
    out = Output()
    out(
        f"machine: {machine()}; width {args.width}, batch {args.batch}, {width}x{height}, "
        f"precision {rt.amp_dtype}, channels_last {rt.channels_last}, workers {trainer.workers}"
    )
    out(f"loader (cache + augmentation): {loader_rate:9.2f} img/s")
    out(f"training (train_step):         {train_rate:9.2f} img/s")
    out(f"ratio loader / training:       {ratio:9.1f}x")
    out(
        json.dumps(
            {
                "loader_img_s": round(loader_rate, 2),
                "train_img_s": round(train_rate, 3),
                "ratio": round(ratio, 1),
            }
        )
    )
    out.record(args.record, "Data loading vs training (benchmarks/loader.py)")


if __name__ == "__main__":
    main()
