"""Train the CamVid recipe for a wall-clock budget and score it on unseen frames.

    python benchmarks/quality_camvid.py --budget-min 60 [--config configs/camvid.yaml]
        [--out RUN_DIR] [--cross-sequence] [--tta flip] [--scales 0.75,1,1.25] [key=value ...]

Trains ``configs/camvid.yaml`` (plus any ``section.key=value`` overrides) until the budget is spent:
the learning rate decays over the clock (``train.time_budget_min``), so a shorter budget is the
same recipe compressed. Then the best checkpoint (by periodic val mIoU) is scored on CamVid's val
split at the full 480x360 resolution, over the 11 classes (void ignored), without test-time
augmentation (how anyone scoring the checkpoint with ``unetseg evaluate --full-res`` gets it), and
again with ``--tta``/``--scales`` when given.

``--cross-sequence`` is the generalisation check used to choose the recipe: it trains on the 0006R0
and 0016E5 frames of the train split only and validates on its 62 0001TP frames, a street the
model never saw (the standard val frames come from 0016E5, whose other frames are trained on).
The standard val split is scored as well, both with the final checkpoint (the held-out split must
not choose the checkpoint it scores).

``--rescore RUN_DIR`` scores the checkpoints an earlier run left (by the same rule, on the splits
of that run) without training, for example with test-time augmentation; the recipe line then lists
where that run's configuration differs from ``--config``.

The run folder keeps everything ``unetseg train`` writes (report.html included) plus one
``evaluation_*`` folder per scoring. The last line printed is JSON with ``encoder``, ``val_miou``,
``budget_min``, ``images_seen`` and ``checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Output, machine

from unetseg.commands.cli import parse_scales
from unetseg.commands.evaluate import evaluate_checkpoint
from unetseg.core.allocator import use_fast_allocator
from unetseg.core.checkpoint import config_of, load_checkpoint
from unetseg.core.config import Config, load_config
from unetseg.engine.train import train

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ["0001TP*"]  # the street the cross-sequence check never trains on
CROSS_SEQUENCE = [
    "data.val_split=train",
    f"data.val_filter={HELD_OUT}",
    "data.train_filter=['0006R0*','0016E5*']",
]
STANDARD_VAL = ["data.val_split=val", "data.val_filter=[]"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=60.0, help="training minutes (60)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "camvid.yaml")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/quality_camvid-...)")
    parser.add_argument("--cross-sequence", action="store_true", help="hold out sequence 0001TP")
    parser.add_argument("--rescore", type=Path, metavar="RUN_DIR", help="score, do not train")
    parser.add_argument("--tta", choices=["none", "flip"], default="none")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), help="e.g. 0.75,1,1.25")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--record", type=Path, help="append the summary to this results file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()
    if args.budget_min <= 0:
        parser.error("--budget-min must be positive")
    return args


def score(
    checkpoint: Path, name: str, overrides: list[str], args: argparse.Namespace, tta: bool
) -> dict[str, Any]:
    """Full-resolution scores of ``checkpoint`` on the split the overrides select."""
    scales = args.scales if tta else (1.0,)
    flip = tta and args.tta == "flip"
    suffix = "_tta" if tta else ""
    print(f"\n== {name}{' with test-time augmentation' if tta else ''}", flush=True)
    result = evaluate_checkpoint(
        checkpoint,
        full_res=True,
        out=checkpoint.parent / f"evaluation_{name}{suffix}",
        device=args.device,
        tta=flip,
        scales=scales,
        overrides=overrides,
    )
    metrics = result["metrics"]
    per_class = {name: value["iou"] for name, value in metrics["per_class"].items()}
    return {"miou": metrics["miou"], "per_class_iou": per_class}


def flatten(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(config: Config, reference: Config) -> list[str]:
    """``key=value`` for each setting of ``config`` that differs from ``reference``."""
    ours, theirs = flatten(config.to_dict()), flatten(reference.to_dict())
    return [f"{key}={value}" for key, value in ours.items() if theirs.get(key) != value]


@dataclass
class Trained:
    """What scoring needs of a run: its checkpoints, the final one's state, its recipe's changes."""

    final: Path
    best: Path | None
    state: dict[str, Any]  # the final checkpoint, loaded once
    recipe: list[str]


def train_run(args: argparse.Namespace) -> Trained:
    """Train the recipe for the budget."""
    split = CROSS_SEQUENCE if args.cross_sequence else []
    overrides = [
        *split,
        f"train.time_budget_min={args.budget_min}",
        "train.training_iterations=100000000",  # the budget ends the run
        f"train.device={args.device}",
        *args.overrides,
    ]
    config = load_config(args.config, overrides)
    run_dir = args.out or REPO / "runs" / f"quality_camvid-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"run folder: {run_dir}; budget {args.budget_min} min", flush=True)
    result = train(config, run_dir)
    final = result.final_checkpoint
    return Trained(final, result.best_checkpoint, load_checkpoint(final), args.overrides)


def earlier_run(args: argparse.Namespace) -> Trained:
    """The checkpoints of ``--rescore RUN_DIR``; its recipe: where it differs from ``--config``.

    Sets ``args.cross_sequence`` to whether that run held out 0001TP."""
    final, best = args.rescore / "final.pt", args.rescore / "best.pt"
    if not final.is_file():
        sys.exit(f"{final}: no final checkpoint to rescore (did that run finish?)")
    state = load_checkpoint(final)
    config = config_of(state)
    args.cross_sequence = config.data.val_filter == HELD_OUT  # the split that run trained on
    reference = load_config(args.config, CROSS_SEQUENCE if args.cross_sequence else [])
    ignored = ("train.time_budget_min", "train.training_iterations", "train.device")
    changed = [c for c in differences(config, reference) if not c.startswith(ignored)]
    return Trained(final, best if best.is_file() else None, state, changed)


def main() -> None:
    args = parse_args()
    use_fast_allocator()  # as the unetseg command does: the default being measured
    print(f"machine: {machine()}")
    run = earlier_run(args) if args.rescore else train_run(args)
    # The held-out split must not pick the checkpoint it then scores: cross-sequence runs score the
    # final weights; standard runs the best by periodic val mIoU, as the issue asks.
    checkpoint = run.best if run.best is not None and not args.cross_sequence else run.final
    state, recipe = run.state, run.recipe
    t = config_of(state).train
    images_seen = int(state["step"]) * t.batch_size * t.accum_steps
    train_minutes = float(state.get("elapsed_s", 0.0)) / 60

    splits = {"val": STANDARD_VAL}
    if args.cross_sequence:
        splits["cross_sequence"] = CROSS_SEQUENCE[:2]
    with_tta = args.tta != "none" or args.scales != (1.0,)
    scores = {}
    for name, split_overrides in splits.items():
        scores[name] = score(checkpoint, name, split_overrides, args, tta=False)
        if with_tta:
            scores[f"{name}_tta"] = score(checkpoint, name, split_overrides, args, tta=True)

    out = Output()
    out()
    out(f"recipe {args.config.name} + {' '.join(recipe) or 'no overrides'}")
    held_out = "cross-sequence (train 0006R0 + 0016E5, val 0001TP)"
    out(f"split: {held_out if args.cross_sequence else 'standard'}")
    out(f"images seen {images_seen} in {int(state['step'])} steps; wall {train_minutes:.1f} min")
    out(f"scored: {checkpoint}, at full resolution")
    for name, value in scores.items():
        per_class = ", ".join(f"{k} {v or 0:.3f}" for k, v in value["per_class_iou"].items())
        out(f"{name}: mIoU {value['miou']:.4f} ({per_class})")
    summary = {
        "encoder": config_of(state).model.encoder,
        "val_miou": scores["val"]["miou"],
        "cross_sequence_miou": scores.get("cross_sequence", {}).get("miou"),
        "budget_min": t.time_budget_min,
        "images_seen": images_seen,
        "steps": int(state["step"]),
        "checkpoint": str(checkpoint),
        "train_wall_min": round(train_minutes, 2),
        "tta": {"flip": args.tta == "flip", "scales": list(args.scales)} if with_tta else None,
        "scores": scores,
        "overrides": recipe,
        "command": " ".join(["python", *sys.argv]),
    }
    out(json.dumps(summary))
    out.record(
        args.record, f"CamVid quality, {t.time_budget_min:g} min (benchmarks/quality_camvid.py)"
    )


if __name__ == "__main__":
    main()
