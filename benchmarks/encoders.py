"""Encoders side by side: training and inference images/s of each model in each precision and layout.

    python benchmarks/encoders.py [--size 320x256] [--infer-size 480x352] [--batch 4]
                                  [--repeats 5] [--record benchmarks/RESULTS.md]

Models: the CamVid from-scratch recipe's residual U-Net (width 16, ResNet-18 depths), the U-Net
decoder (width 16) over each EfficientNet-Lite encoder, and Lite0 with its (ImageNet) encoder
frozen, as in a warm start's steps (``train.freeze_encoder_steps``). Settings: fp32 and bf16 autocast, each
in NCHW and channels_last. Training is the real ``Trainer.train_step`` on one fixed batch of
``--size`` (model-only: forward, loss, backward, AdamW); inference is one eval-mode forward of a
batch-1 image of ``--infer-size`` (CamVid's frames at full resolution). Every arm takes turns with
every other (``common.alternating_rates``), so that a slow phase of the machine hits all of them.
bf16 arms are skipped on a CPU without native bf16. The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import Output, alternating_rates, machine, trainer_for

from unetseg.commands.cli import parse_size
from unetseg.core.allocator import use_fast_allocator
from unetseg.core.runtime import cpu_supports_bf16
from unetseg.engine.train import Trainer

MODELS = {
    "residual (recipe S)": ["model.encoder=residual", "model.blocks=[2,2,2,2]"],
    **{
        f"lite{i}": [f"model.encoder=efficientnet_lite{i}", "model.pretrained=false"]
        for i in range(3)
    },
    # the warm start's steps: the pretrained encoder frozen, so no backward pass through it
    "lite0 frozen encoder": [
        "model.encoder=efficientnet_lite0",
        "train.freeze_encoder_steps=1000000000",
    ],
}
SETTINGS = {
    "fp32 NCHW": ["train.precision=fp32", "train.channels_last=off"],
    "fp32 channels_last": ["train.precision=fp32", "train.channels_last=on"],
    "bf16 NCHW": ["train.precision=bf16", "train.channels_last=off"],
    "bf16 channels_last": ["train.precision=bf16", "train.channels_last=on"],
}


def training_run(trainer: Trainer, batch: int) -> Callable[[], int]:
    """One training step on a fixed batch; returns the images it took."""
    images, masks = trainer.data["train"][0]
    fixed = itertools.repeat((images[None].repeat(batch, 1, 1, 1), masks[None].repeat(batch, 1, 1)))

    def run() -> int:
        trainer.train_step(fixed)
        return batch

    return run


def inference_run(trainer: Trainer, size: tuple[int, int]) -> Callable[[], int]:
    """One eval-mode forward pass of a batch-1 image of ``size``."""
    model, rt = trainer.model, trainer.rt
    image = rt.prepare_input(torch.rand(1, 3, size[1], size[0]))

    def run() -> int:
        model.eval()
        with torch.inference_mode(), rt.autocast():
            model(image)
        return 1

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(320, 256), help="training WxH")
    parser.add_argument("--infer-size", type=parse_size, default=(480, 352), help="inference WxH")
    parser.add_argument("--batch", type=int, default=4, help="training batch (4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per arm (5)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-enc")
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    args = parser.parse_args()
    use_fast_allocator()  # as the unetseg command does
    settings = {k: v for k, v in SETTINGS.items() if cpu_supports_bf16() or "bf16" not in k}
    arms = {
        (model, setting): trainer_for(
            args.work, args.size, 16, args.batch, ["model.dropout=0", *overrides, *extra]
        )
        for model, overrides in MODELS.items()
        for setting, extra in settings.items()
    }
    train = alternating_rates(
        {key: training_run(t, args.batch) for key, t in arms.items()}, args.repeats, 2
    )
    infer = alternating_rates(
        {key: inference_run(t, args.infer_size) for key, t in arms.items()}, args.repeats, 2
    )
    out = Output()
    out(f"machine: {machine()}")
    out(
        f"training img/s (batch {args.batch}, {args.size[0]}x{args.size[1]}, model-only) / "
        f"inference img/s (batch 1, {args.infer_size[0]}x{args.infer_size[1]})"
    )
    out(f"{'model':>20}" + "".join(f"{s:>22}" for s in settings))
    for model in MODELS:
        cells = [f"{train[model, s]:9.2f} / {infer[model, s]:6.2f}" for s in settings]
        out(f"{model:>20}" + "".join(f"{c:>22}" for c in cells))
    for model in MODELS:
        fastest = max(settings, key=lambda s: train[model, s])
        ratio = train[model, fastest] / train["residual (recipe S)", fastest]
        out(f"{model}: fastest training in {fastest}; {ratio:.2f}x the recipe's images there")
    summary = {
        f"{model} | {setting}": {"train": round(train[key], 3), "infer": round(infer[key], 3)}
        for key in arms
        for model, setting in [key]
    }
    out(json.dumps(summary))
    out.record(args.record, "Encoders side by side (benchmarks/encoders.py)")


if __name__ == "__main__":
    main()
