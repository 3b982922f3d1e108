"""benchmarks/quality_camvid.py end to end on the real CamVid folder, with a tiny model and budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.core.config import load_config

REPO = Path(__file__).resolve().parents[1]
VOID = 11


def valid_pixels(folder: Path, prefix: str = "") -> int:
    """Non-void ground-truth pixels of the masks in ``folder``, at their own resolution."""
    total = 0
    for path in sorted(folder.glob(f"{prefix}*.png")):
        total += int((np.asarray(Image.open(path)) != VOID).sum())
    return total


def test_budgeted_run_scores_both_splits_at_full_resolution(shared_data, tmp_path):
    camvid = shared_data / "camvid"
    run = tmp_path / "run"
    command = [
        sys.executable, str(REPO / "benchmarks" / "quality_camvid.py"),
        "--budget-min", "0.1", "--cross-sequence", "--out", str(run), "--device", "cpu",
        f"data.root={camvid}", f"data.cache_dir={tmp_path / 'cache'}", "data.size=[64,64]",
        "augment.crop=[32,32]", "model.width=4", "train.warmup_steps=2", "train.eval_interval=5",
        "train.save_model_interval=5", "train.snapshot_interval=1000",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["budget_min"] == 0.1
    assert summary["images_seen"] == 8 * summary["steps"] > 0  # the recipe's batch of 8
    assert summary["checkpoint"] == str(run / "final.pt")  # held-out runs never pick by val
    assert (run / "report.html").is_file()
    val = json.loads((run / "evaluation_val" / "metrics.json").read_text())
    held_out = json.loads((run / "evaluation_cross_sequence" / "metrics.json").read_text())
    assert summary["val_miou"] == val["miou"]
    assert summary["cross_sequence_miou"] == held_out["miou"]
    # Every non-void pixel of the right frames was scored, at 480x360.
    counted = sum(c["gt_pixels"] for c in val["per_class"].values())
    assert counted == valid_pixels(camvid / "valannot")
    counted = sum(c["gt_pixels"] for c in held_out["per_class"].values())
    assert counted == valid_pixels(camvid / "trainannot", prefix="0001TP")

    # Rescoring the run without training gives the same scores and names the recipe's changes.
    rescore = [
        sys.executable,
        str(REPO / "benchmarks" / "quality_camvid.py"),
        "--rescore",
        str(run),
    ]
    done = subprocess.run(rescore, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads(done.stdout.strip().splitlines()[-1])
    assert (again["val_miou"], again["cross_sequence_miou"]) == (
        summary["val_miou"],
        summary["cross_sequence_miou"],
    )
    assert (again["images_seen"], again["budget_min"]) == (summary["images_seen"], 0.1)
    assert "data.size=[64, 64]" in again["overrides"] and "model.width=4" in again["overrides"]
    recipe = load_config(REPO / "configs" / "camvid.yaml", [])
    assert summary["encoder"] == again["encoder"] == recipe.model.encoder
    assert not any(o.startswith("data.val_filter") for o in again["overrides"])


def write_camvid_frames(root: Path, names: list[str], rng: np.random.Generator) -> None:
    """Tiny CamVid-format frames: ``train/NAME.png`` (RGB) and ``trainannot/NAME.png`` (0-11)."""
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "train" / f"{name}.png")
        mask = rng.integers(0, VOID + 1, (48, 64), dtype=np.uint8)
        Image.fromarray(mask).save(root / "trainannot" / f"{name}.png")


def test_sweep_trains_each_variant_on_the_cross_sequence_split(tmp_path):
    camvid = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    write_camvid_frames(camvid, ["0006R0_f1", "0016E5_f1", "0016E5_f2", "0001TP_f1"], rng)
    env = {
        **os.environ,
        "CAMVID": str(camvid),
        "SWEEP_DIR": str(tmp_path / "sweep"),
        "DEVICE": "cpu",
        "WORKERS": "0",
        "UNETSEG_CACHE": str(tmp_path / "cache"),
        "SWEEP_OVERRIDES": "model.width=4 model.pretrained=false train.freeze_encoder_steps=0 "
        "train.freeze_encoder_levels=0 "
        "data.size=[64,64] augment.crop=[]",
    }
    command = [
        "bash", str(REPO / "benchmarks" / "sweep_camvid.sh"), "2", "300",
        "a", "b=train.seed=1 train.base_lr=1e-2",
        "broken=train.no_such_knob=1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines() if ": " in line}
    for name, seed in (("a", 0), ("b", 1)):
        assert lines[name].startswith(f"{name}: step 2 mIoU "), done.stdout[-3000:]
        config = (tmp_path / "sweep" / name / "config.yaml").read_text()
        assert f"seed: {seed}" in config and "val_filter:\n  - 0001TP*" in config
    assert "base_lr: 0.01" in (tmp_path / "sweep" / "b" / "config.yaml").read_text()
    assert lines["broken"].startswith("broken: no evaluation")
    assert "no_such_knob" in done.stdout  # the end of its log says why
