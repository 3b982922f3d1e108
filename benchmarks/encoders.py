"""Encoders side by side: training and inference images/s of each model in each precision and layout.

    python benchmarks/encoders.py [--size 320x256] [--infer-size 480x352] [--batch 4]
                                  [--repeats 5] [--only REGEX] [--record benchmarks/RESULTS.md]

Models: the CamVid from-scratch recipe's residual U-Net (width 16, ResNet-18 depths), the U-Net
decoder (width 16) over each EfficientNet-Lite encoder, Lite0 and Lite2 with their (ImageNet)
encoder frozen, as in a warm start's steps (``train.freeze_encoder_steps``), and Lite2 with its
first levels frozen (``train.freeze_encoder_levels``). Settings: fp32 and bf16 autocast, each in
NCHW and channels_last; ``--only REGEX`` keeps the arms whose "model | setting" matches.
Training is the real ``Trainer.train_step`` on one fixed batch of ``--size`` (model-only:
forward, loss, backward, AdamW); inference is one eval-mode forward of a batch-1 image of
``--infer-size`` (CamVid's frames at full resolution). Every arm takes turns with
every other (``common.alternating_rates``), so that a slow phase of the machine hits all of them.
bf16 arms are skipped on a CPU without native bf16. The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
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
    **{
        f"lite{i} frozen encoder": [
            f"model.encoder=efficientnet_lite{i}",
            "train.freeze_encoder_steps=1000000000",
        ]
        for i in (0, 2)
    },
    # the stem and the blocks at 1/2 and 1/4 (or down to 1/8) kept fixed for the whole run
    **{
        f"lite2 levels 1-{n} frozen": [
            "model.encoder=efficientnet_lite2",
            f"train.freeze_encoder_levels={n}",
        ]
        for n in (2, 3)
    },
}
SETTINGS = {
    "fp32 NCHW": ["train.precision=fp32", "train.channels_last=off"],
    "fp32 channels_last": ["train.precision=fp32", "train.channels_last=on"],
    "bf16 NCHW": ["train.precision=bf16", "train.channels_last=off"],
    "bf16 channels_last": ["train.precision=bf16", "train.channels_last=on"],
}


def pattern(text: str) -> re.Pattern[str]:
    """``--only``'s regular expression; argparse reports a bad one in a line."""
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None


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
    parser.add_argument("--only", type=pattern, help='arms whose "model | setting" matches')
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    args = parser.parse_args()
    use_fast_allocator()  # as the unetseg command does
    settings = {k: v for k, v in SETTINGS.items() if cpu_supports_bf16() or "bf16" not in k}
    chosen = [
        (model, setting)
        for model in MODELS
        for setting in settings
        if args.only is None or args.only.search(f"{model} | {setting}")
    ]
    if not chosen:
        parser.error(f"--only {args.only.pattern!r} matches no arm")
    models = list(dict.fromkeys(model for model, _ in chosen))
    settings = {s: settings[s] for s in dict.fromkeys(setting for _, setting in chosen)}
    arms = {
        (model, setting): trainer_for(
            args.work,
            args.size,
            16,
            args.batch,
            ["model.dropout=0", *MODELS[model], *settings[setting]],
        )
        for model, setting in chosen
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
    out(f"{'model':>22}" + "".join(f"{s:>22}" for s in settings))
    for model in models:
        cells = [
            f"{train[model, s]:9.2f} / {infer[model, s]:6.2f}" if (model, s) in arms else "-"
            for s in settings
        ]
        out(f"{model:>22}" + "".join(f"{c:>22}" for c in cells))
    recipe = "residual (recipe S)"
    for model in models:
        fastest = max((s for s in settings if (model, s) in arms), key=lambda s: train[model, s])
        against = (
            f"; {train[model, fastest] / train[recipe, fastest]:.2f}x the recipe's images there"
            if (recipe, fastest) in arms
            else ""
        )
        out(f"{model}: fastest training in {fastest}{against}")
    summary = {
        f"{model} | {setting}": {"train": round(train[key], 3), "infer": round(infer[key], 3)}
        for key in arms
        for model, setting in [key]
    }
    out(json.dumps(summary))
    out.record(args.record, "Encoders side by side (benchmarks/encoders.py)")


if __name__ == "__main__":
    main()
