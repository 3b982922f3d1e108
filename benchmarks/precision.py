"""Default precision and layout vs fp32 NCHW: training speed side by side, and accuracy kept.

    python benchmarks/precision.py [--width 32] [--size 512x256] [--accuracy-steps 300]
                                   [KEY=VALUE ...]

1. Speed: the real ``Trainer.train_step`` on one fixed batch (model-only), fp32 NCHW, fp32
   channels_last and the defaults (``precision: auto``, ``channels_last: auto``) taking turns,
   median of the repeats. Config overrides (``model.encoder=residual model.width=24``) shape the
   model of all three.
2. Accuracy (skipped with ``--accuracy-steps 0``): two identical short runs on synthetic scenes
   (width 16 at 256x128), fp32 NCHW and the defaults; their loss curves go into one plot and their
   final val mIoU side by side.
The last line is JSON: fp32_img_s, fp32_channels_last_img_s, default_img_s, speedup, fp32_miou,
default_miou.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from common import Output, alternating_rates, machine, trainer_for

from unetseg.commands.cli import parse_size
from unetseg.core.allocator import use_fast_allocator
from unetseg.core.config import load_config
from unetseg.engine.train import Trainer, train
from unetseg.engine.viz import plot_curves

FP32 = ["train.precision=fp32", "train.channels_last=off"]
FP32_CHANNELS_LAST = ["train.precision=fp32", "train.channels_last=on"]


def speed(args: argparse.Namespace, size: tuple[int, int]) -> tuple[dict[str, float], str, int]:
    """Median training images/s of fp32 NCHW, fp32 channels_last and the defaults, alternately;
    the default arm's precision label and the model width in effect (overrides win over --width)."""
    arms = {"fp32": FP32, "fp32_channels_last": FP32_CHANNELS_LAST, "default": []}
    trainers = {
        name: trainer_for(args.work, size, args.width, args.batch, [*extra, *args.overrides])
        for name, extra in arms.items()
    }
    batch = trainers["fp32"].data["train"][0]
    images = batch[0][None].repeat(args.batch, 1, 1, 1)
    masks = batch[1][None].repeat(args.batch, 1, 1)
    fixed = itertools.repeat((images, masks))

    def step(trainer: Trainer):
        def run() -> int:
            trainer.train_step(fixed)
            return args.batch

        return run

    rates = alternating_rates({name: step(t) for name, t in trainers.items()}, args.repeats, 2)
    rt = trainers["default"].rt
    label = f"{rt.amp_dtype or 'fp32'}, channels_last {rt.channels_last}"
    return rates, label, trainers["default"].config.model.width


def accuracy(args: argparse.Namespace) -> dict[str, dict]:
    """Final val mIoU and the loss curve of the same short run in fp32 and with the defaults."""
    results = {}
    for name, extra in (("fp32 NCHW", FP32), ("default", [])):
        config = load_config(
            None,
            [
                f"data.root={args.work / 'synthetic_256x128'}",
                f"data.cache_dir={args.work / 'cache'}",
                "data.size=[256,128]",
                "data.synthetic_train=200",
                "data.synthetic_val=20",
                "model.width=16",
                "train.batch_size=8",
                "train.accum_steps=1",
                f"train.training_iterations={args.accuracy_steps}",
                f"train.eval_interval={args.accuracy_steps}",
                "train.eval_iterations=0",
                f"train.save_model_interval={args.accuracy_steps}",
                f"train.snapshot_interval={args.accuracy_steps}",
                "train.base_lr=3e-3",
                "train.warmup_steps=20",
                "train.decay=cosine",
                *extra,
            ],
        )
        run_dir = args.work / f"accuracy-{name.split()[0]}"
        result = train(config, run_dir, progress=False)
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        results[name] = {"miou": result.metrics["miou"], "rows": rows}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="U-Net width for the speed part (32)")
    parser.add_argument("--batch", type=int, default=4, help="batch size for the speed part (4)")
    parser.add_argument("--size", type=parse_size, default=(512, 256), help="WIDTHxHEIGHT (speed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per setting (5)")
    parser.add_argument("--accuracy-steps", type=int, default=300, help="steps per accuracy run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-prec")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/precision_loss.png"))
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    parser.add_argument("overrides", nargs="*", help="config overrides for the speed part")
    args = parser.parse_intermixed_args()  # overrides may come before options
    use_fast_allocator()  # as the unetseg command does: the setting being measured
    size = args.size
    rates, label, width = speed(args, size)
    fp32, default = rates["fp32"], rates["default"]
    out = Output()
    out(f"machine: {machine()}")
    shown = [o for o in args.overrides if not o.startswith("model.width=")]
    model = f"width {width}" + "".join(f", {o}" for o in shown)
    out(f"training, {model}, batch {args.batch}, {size[0]}x{size[1]} (model-only steps):")
    out(f"  fp32 NCHW: {fp32:7.3f} img/s")
    out(f"  fp32 channels_last: {rates['fp32_channels_last']:7.3f} img/s")
    out(f"  default ({label}): {default:7.3f} img/s")
    out(f"  speed-up of the default over fp32 NCHW: {default / fp32:5.2f}x")
    out(
        f"  speed-up of fp32 channels_last over fp32 NCHW: {rates['fp32_channels_last'] / fp32:5.2f}x"
    )
    summary = {
        "fp32_img_s": round(fp32, 3),
        "fp32_channels_last_img_s": round(rates["fp32_channels_last"], 3),
        "default_img_s": round(default, 3),
        "speedup": round(default / fp32, 2),
    }
    if args.accuracy_steps > 0:
        summary |= accuracy_part(args, out)
    out(json.dumps(summary))
    out.record(args.record, "Default precision vs fp32 NCHW (benchmarks/precision.py)")


def accuracy_part(args: argparse.Namespace, out: Output) -> dict[str, float]:
    """Run, plot and print the accuracy comparison; its val mIoUs for the JSON line."""
    results = accuracy(args)
    plot_curves(
        {
            name: ([r["step"] for r in res["rows"]], [r["loss"] for r in res["rows"]])
            for name, res in results.items()
        },
        args.plot,
        "training loss",
    )
    for name, res in results.items():
        last = statistics.mean(r["loss"] for r in res["rows"][-5:])
        out(
            f"  {name}: val mIoU {res['miou']:.4f} after {args.accuracy_steps} steps, "
            f"mean loss of the last 5 logged steps {last:.4f}"
        )
    out(f"loss curves: {args.plot}")
    miou = {name: round(res["miou"], 4) for name, res in results.items()}
    return {"fp32_miou": miou["fp32 NCHW"], "default_miou": miou["default"]}


if __name__ == "__main__":
    main()
