"""The main job on the embedded data: synthesize, train, evaluate, predict, and say where it all is."""

from __future__ import annotations

import time
from pathlib import Path

from unetseg.commands.evaluate import evaluate_checkpoint
from unetseg.commands.predict import predict_paths
from unetseg.core.config import load_config
from unetseg.engine.inference import Predictor
from unetseg.engine.report import fmt_score, write_report
from unetseg.engine.train import train

# The demo's recipe, and that of `unetseg train` without --config: a small U-Net on small
# synthetic scenes, minutes on a laptop CPU, seconds on a GPU.
QUICK_RECIPE = [
    "data.size=[256,128]",
    "model.width=16",
    "model.dropout=0.0",
    # Train and val come from one distribution: mild augmentation learns fastest in a short run.
    "augment.scale_min=1.0",
    "augment.scale_max=1.25",
    "augment.brightness=0.1",
    "augment.contrast=0.1",
    "augment.saturation=0.1",
    "train.batch_size=8",
    "train.accum_steps=1",
    "train.training_iterations=1100",
    "train.eval_interval=100",
    "train.eval_iterations=0",
    "train.save_model_interval=100",
    "train.snapshot_interval=100",
    "train.base_lr=5e-3",
    "train.min_lr=1e-4",
    "train.warmup_steps=30",
    "train.decay=cosine",
]
DEMO_RECIPE = [
    "data.kind=synthetic",
    "data.synthetic_train=400",
    *QUICK_RECIPE,
    "train.log_interval=10",
]


def run_demo(out: Path, overrides: list[str] | None = None) -> dict[str, Path]:
    """Run the demo into ``out``; returns (and prints) where each output lies."""

    started = time.perf_counter()
    recipe = [
        f"data.root={out / 'data'}",
        f"data.cache_dir={out / 'cache'}",
        *DEMO_RECIPE,
        *(overrides or []),
    ]
    config = load_config(None, recipe)
    run_dir = out / "run"
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.pt"))
    result = train(config, run_dir, resume=resume)
    checkpoint = result.best_checkpoint or result.final_checkpoint
    evaluation = evaluate_checkpoint(checkpoint, out=run_dir / "evaluation")
    val_images = sorted((out / "data" / "leftImg8bit" / config.data.val_split).rglob("*.png"))[:4]
    predictions = out / "predictions"
    predict_paths(val_images, predictions, Predictor.from_checkpoint(checkpoint))
    report = write_report(run_dir, {"predictions": predictions})
    outputs = {
        "run folder": run_dir,
        "checkpoint": checkpoint,
        "metrics.json": evaluation["out"] / "metrics.json",
        "per-class IoU chart": evaluation["out"] / "per_class_iou.png",
        "confusion matrix": evaluation["out"] / "confusion_matrix.png",
        "loss curves": run_dir / "curves_loss.png",
        "snapshots": run_dir / "snapshots",
        "predictions": predictions,
        "report": report,
    }
    miou = fmt_score(evaluation["metrics"]["miou"])
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; val mIoU {miou}")
    for name, path in outputs.items():
        print(f"  {name + ':':22s}{path}")
    return outputs
