"""The training loop on tiny synthetic data: files written, exact resume, DDP, faults."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unetseg.core.checkpoint import load_checkpoint, model_from_checkpoint
from unetseg.core.config import load_config
from unetseg.data.statistics import PRESENT_SHARE, stats_of_masks
from unetseg.engine.runlog import RunLog
from unetseg.engine.train import Trainer, TrainingError, TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(root: Path, cache: Path, **extra: object) -> list[str]:
    """A seconds-long run: width-4 U-Net at 64x32, batch 2."""
    values = {
        "data.root": root,
        "data.cache_dir": cache,
        "data.size": "[64,32]",
        "model.width": 4,
        "train.batch_size": 2,
        "train.accum_steps": 2,
        "train.training_iterations": 6,
        "train.eval_interval": 3,
        "train.eval_iterations": 1,
        "train.save_model_interval": 2,
        "train.snapshot_interval": 3,
        "train.snapshot_images": 2,
        "train.warmup_steps": 2,
        "train.base_lr": 0.01,
        "train.min_lr": 0.001,
        "train.decay": "cosine",
        "train.precision": "fp32",
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def interrupt_then_resume(
    config, run_dir: Path, monkeypatch: pytest.MonkeyPatch, before_resume=lambda: None
) -> None:
    """Train into ``run_dir``, stopped by SIGINT at step 3, then resumed to the end."""
    original_step = Trainer.train_step

    def interrupt_at_step_3(self, batches):
        stats = original_step(self, batches)
        if self.step == 2:  # becomes step 3 in the loop, then SIGINT is honoured
            os.kill(os.getpid(), signal.SIGINT)
        return stats

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_step_3)
    with pytest.raises(TrainingInterrupted, match="SIGINT received: saved .*step_0000003.pt"):
        train(config, run_dir, progress=False)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    before_resume()
    train(config, run_dir, resume=True, progress=False)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "final.pt")["model"]


def test_a_run_writes_every_output(synthetic_root, tmp_path):
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache"))
    result = train(config, tmp_path / "run", progress=False)
    run = result.run_dir
    for name in (
        "config.yaml",
        "schedule.png",
        "log.jsonl",
        "eval.jsonl",
        "curves_loss.png",
        "curves_miou.png",
        "curves_class_iou.png",
        "best.pt",
        "final.pt",
        "model.safetensors",
        "model.json",
        "metrics.json",
        "snapshots/step_0000003.png",
    ):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "step_0000002.pt",
        "step_0000004.pt",
        "step_0000006.pt",
    ]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "ce", "dice", "lr", "grad_norm", "images_per_s", "memory_mb"} <= set(rows[0])
    assert all(r["loss"] == pytest.approx(r["ce"] + r["dice"], rel=1e-5) for r in rows)
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals] == [3, 6]
    # Training time so far, on both logs: positive and growing.
    for logged in (rows, evals):
        elapsed = [r["elapsed_s"] for r in logged]
        assert elapsed[0] >= 0 and elapsed == sorted(elapsed) and elapsed[-1] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics["per_class"]) >= {"road", "sky"}
    state = load_checkpoint(run / "final.pt")
    assert state["step"] == 6 and state["class_set"]["name"] == "cityscapes19"
    # The final val pass leaves an evaluation the report shows: no "run unetseg evaluate" gaps.
    assert (run / "evaluation" / "confusion_matrix.png").is_file()
    # One picture per val scene, each named by its rank and its source image.
    val_stems = sorted(p.stem for p in (synthetic_root / "leftImg8bit" / "val").rglob("*.png"))
    worst = sorted((run / "evaluation").glob("worst_*_miou_*.png"))
    assert sorted(p.name.split("_", 2)[2].rsplit("_miou_", 1)[0] for p in worst) == val_stems
    assert [p.name[:9] for p in worst] == ["worst_01_", "worst_02_", "worst_03_"]
    report = (run / "report.html").read_text()
    assert "not available" not in report
    assert "<code>model.width=4</code>" in report and "training images/s" in report
    assert "cpu, fp32, 1 process(es)" in report
    facts = json.loads((run / "run.json").read_text())  # what the run resolved to, recorded
    assert facts["precision"] == "fp32" and facts["device"] == "cpu" and facts["parameters"] > 0
    assert facts["train_images"] == 6 and facts["images_per_step"] == 4


RESIDUAL = {
    "model.encoder": "residual",
    "model.blocks": "[1,2,1,1]",
    "model.input_norm": "per_image",
}


@pytest.mark.parametrize("model", [{}, RESIDUAL], ids=["plain", "residual"])
def test_resume_after_an_interrupt_is_bit_identical(synthetic_root, tmp_path, monkeypatch, model):
    # From step 2 of 6 on the average is uniform: resuming at step 3 must restore its count.
    extra = {"model.dropout": 0.2, "train.ema_decay": 0.9, "train.average_from": 0.3, **model}
    overrides = tiny_overrides(synthetic_root, tmp_path / "cache", **extra)
    config = load_config(None, overrides)
    train(config, tmp_path / "straight", progress=False)
    interrupt_then_resume(config, tmp_path / "stopped", monkeypatch)

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    averages = [load_checkpoint(tmp_path / r / "final.pt")["ema"] for r in ("straight", "stopped")]
    assert averages[0]["updates"] == averages[1]["updates"] == 6
    for key, value in averages[0]["weights"].items():
        assert torch.equal(value, averages[1]["weights"][key]), key


def test_the_weight_average_is_what_is_evaluated_and_shipped(synthetic_root, tmp_path):
    extra = {"train.ema_decay": 0.5, "train.training_iterations": 4}
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    run = train(config, tmp_path / "run", progress=False).run_dir
    state = load_checkpoint(run / "final.pt")
    average, raw = state["ema"]["weights"], state["model"]
    assert not torch.equal(average["head.weight"], raw["head.weight"])
    model, _, _ = model_from_checkpoint(run / "final.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, average[key]), key
    shipped = load_file(str(run / "model.safetensors"))
    assert torch.equal(shipped["head.weight"], average["head.weight"])
    # The run's final evaluation scored the average, not the raw weights.
    trainer = Trainer(config, run, resume=True, progress=False)  # at the last step, both loaded
    val_loss = json.loads((run / "metrics.json").read_text())["val_loss"]
    assert trainer.evaluate(max_batches=0)["loss"] == pytest.approx(val_loss, rel=1e-6)
    trainer.ema = None
    assert trainer.evaluate(max_batches=0)["loss"] != pytest.approx(val_loss, rel=1e-3)


def test_average_from_ships_the_mean_of_the_later_steps_weights(
    synthetic_root, tmp_path, monkeypatch
):
    extra = {"train.average_from": 0.5, "train.training_iterations": 4}
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    weights = []
    original_step = Trainer.train_step

    def record(self, batches):
        stats = original_step(self, batches)
        weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return stats

    monkeypatch.setattr(Trainer, "train_step", record)
    run = train(config, tmp_path / "run", progress=False).run_dir
    average = load_checkpoint(run / "final.pt")["ema"]
    assert average["uniform_updates"] == 2  # steps 2 and 3 of 4
    for key, value in average["weights"].items():
        if value.is_floating_point() and key != "temperature":  # fitted after training
            expected = (weights[2][key] + weights[3][key]) / 2
            assert torch.allclose(value, expected, atol=1e-6), key
    assert not torch.allclose(average["weights"]["head.weight"], weights[3]["head.weight"])


def test_a_time_budget_stops_the_run_and_decays_the_rate_over_it(
    synthetic_root, tmp_path, monkeypatch
):
    extra = {"train.training_iterations": 100_000, "train.time_budget_min": 0.15}
    extra |= {f"train.{k}_interval": 10_000 for k in ("eval", "save_model", "snapshot")}
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    # A clock that moves half a second per reading: the step count does not depend on the
    # machine's speed (a loaded one ran 2 steps in the 9 seconds).
    readings = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 0.5 * next(readings))
    result = train(config, tmp_path / "run", progress=False)
    state = load_checkpoint(result.final_checkpoint)
    assert 3 <= state["step"] < 100_000 and state["elapsed_s"] >= 9.0
    rates = [json.loads(line)["lr"] for line in (result.run_dir / "log.jsonl").open()]
    # Warm-up for 2 steps, then cosine over the clock: falling, ending close to min_lr (0.001).
    assert all(b <= a for a, b in zip(rates[2:], rates[3:]))
    assert rates[-1] < 0.1 * 0.01 + 0.001
    assert (result.run_dir / "curves_lr.png").is_file()
    assert not (result.run_dir / "schedule.png").exists()


def test_resume_skips_a_corrupt_latest_checkpoint(synthetic_root, tmp_path, capsys):
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache"))
    run = tmp_path / "run"
    train(config, run, progress=False)
    latest = run / "checkpoints" / "step_0000006.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # as after a power cut
    trainer = Trainer(config, run, resume=True, progress=False)
    assert trainer.step == 4
    err = capsys.readouterr().err
    assert "step_0000006.pt: checksum mismatch" in err
    assert "warning: resuming with" not in err  # the same settings

    changed = load_config(
        None, tiny_overrides(synthetic_root, tmp_path / "cache", **{"train.batch_size": 4})
    )
    Trainer(changed, run, resume=True, progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "resuming with" in line]
    assert warnings == ["warning: resuming with train.batch_size=4, not the run's value"]


def test_repeated_non_finite_loss_stops_naming_the_step(synthetic_root, tmp_path, monkeypatch):
    config = load_config(
        None, tiny_overrides(synthetic_root, tmp_path / "cache", **{"train.max_nonfinite_steps": 2})
    )
    original_forward = torch.nn.Module.__call__

    def poisoned(self, *args, **kwargs):
        out = original_forward(self, *args, **kwargs)
        if type(self).__name__ == "SegmentationLoss":
            return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", poisoned)
    with pytest.raises(TrainingError, match=r"2 steps in a row \(last at step 1\).*none"):
        train(config, tmp_path / "run", progress=False)


def test_original_recipe_runs_a_few_steps(synthetic_root, tmp_path):
    overrides = [
        "data.kind=synthetic",
        f"data.root={synthetic_root}",
        f"data.cache_dir={tmp_path / 'c'}",
        "data.size=[64,32]",
        "model.width=4",
        "train.batch_size=2",
        "train.accum_steps=2",
        "train.training_iterations=2",
        "train.eval_interval=1",
        "train.eval_iterations=1",
    ]
    config = load_config(REPO / "configs" / "original_recipe.yaml", overrides)
    assert config.data.class_set == "cityscapes24" and config.train.decay == "original"
    result = train(config, tmp_path / "run", progress=False)
    assert len(result.metrics["per_class"]) == 24


# The encoder frozen for the first step: the split batch must reduce its gradients once released.
LITE = {
    "model.encoder": "efficientnet_lite0",
    "train.encoder_lr_scale": 0.5,
    "train.freeze_encoder_steps": 1,
}


def equivalence_overrides(root: Path, cache: Path, **extra: object) -> list[str]:
    """``tiny_overrides`` for comparing a split batch with a single process: 3 steps, no
    randomness in the model or the data, synchronised batch norm."""
    return tiny_overrides(
        root,
        cache,
        **{
            "model.dropout": 0.0,
            "augment.enabled": "false",
            "train.training_iterations": 3,
            "train.sync_batchnorm": "true",
            # Adam moves every weight by about lr per step whatever the gradient's size, so float
            # noise in tiny gradients shows up in proportion to lr: keep it small.
            "train.base_lr": 1e-3,
            "train.min_lr": 1e-4,
            **extra,
        },
    )


def assert_same_weights(first: Path, second: Path, outlier_share: float = 0.0) -> None:
    """The final weights of two runs agree to float noise: atol 5% of one step at lr 1e-3,
    rtol for the batch-norm statistics, which pretrained encoders hold in the hundreds; with
    ``outlier_share``, all but that share of all the elements. The calibration temperature is
    left out: fitted after training from the final weights, and on a tiny model's near-uniform
    logits the loss is so flat in it that their float noise moved it 0.4% on one CPU."""
    one, two = final_weights(first), final_weights(second)
    floats = [key for key in one if one[key].is_floating_point() and key != "temperature"]
    far = {key: ~torch.isclose(one[key], two[key], atol=5e-5, rtol=1e-5) for key in floats}
    outliers = sum(int(f.sum()) for f in far.values())
    total = sum(f.numel() for f in far.values())
    worst = max(floats, key=lambda key: int(far[key].sum()))
    assert outliers <= outlier_share * total, f"{outliers} of {total} elements differ ({worst})"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.parametrize("model", [{}, LITE], ids=["plain", "pretrained_lite"])
def test_two_process_ddp_equals_one_process_with_the_global_batch(synthetic_root, tmp_path, model):
    common = equivalence_overrides(
        synthetic_root, tmp_path / "cache", **{**model, "train.eval_interval": 3}
    )
    single = load_config(None, [*common, "train.batch_size=4"])
    train(single, tmp_path / "single", progress=False)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "unetseg",
        "train",
        "--out",
        str(tmp_path / "ddp"),
        *common,
        "train.batch_size=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # A released encoder's first Adam step moves each weight by about lr * sign(gradient): the
    # few whose gradient is float noise may go either way (15 of 3.3 M elements). Gradients
    # left unreduced move a third of them.
    outliers = 1e-4 if "train.freeze_encoder_steps" in model else 0.0
    assert_same_weights(tmp_path / "single", tmp_path / "ddp", outliers)
    earlier = load_checkpoint(tmp_path / "single" / "checkpoints" / "step_0000002.pt")["model"]
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(final_weights(tmp_path / "single").values(), earlier.values())
    )
    assert changed  # the comparison is between trained weights, not two initialisations


def test_rare_class_sampling_favours_images_with_the_rarest_class(synthetic_root, tmp_path):
    overrides = tiny_overrides(
        synthetic_root, tmp_path / "cache", **{"data.sampling": "rare_class"}
    )
    trainer = Trainer(load_config(None, overrides), tmp_path / "run", resume=False, progress=False)
    weights = trainer.sampling_weights()
    written = json.loads((tmp_path / "run" / "sampling.json").read_text())["class_probability"]
    assert list(written) == list(trainer.class_set.names)
    masks = trainer.data["train"].masks
    pixels = stats_of_masks(masks, trainer.class_set.names).pixels
    present = np.array([np.bincount(m.ravel(), minlength=256)[: len(pixels)] for m in masks])
    present = present >= PRESENT_SHARE * masks[0].size
    rarest = min(np.flatnonzero(present.any(axis=0)), key=lambda c: pixels[c])
    assert max(written, key=written.get) == trainer.class_set.names[rarest]
    with_rarest = present[:, rarest]
    assert 0 < with_rarest.sum() < len(masks)
    # drawn more often than uniform epochs draw them
    assert weights[with_rarest].sum() > 1.5 * with_rarest.mean()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_under_a_time_budget_stop_together(synthetic_root, tmp_path):
    """Each process reads its own clock; rank 0's decides for all, or one would wait forever in
    a collective that the other, already finished, never joins."""
    extra = {"train.training_iterations": 100_000, "train.time_budget_min": 0.1}
    extra |= {f"train.{k}_interval": 10_000 for k in ("eval", "save_model", "snapshot")}
    overrides = tiny_overrides(synthetic_root, tmp_path / "cache", **extra)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "unetseg", "train", "--out", str(tmp_path / "ddp"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ddp" / "final.pt")
    assert state["step"] > 2 and state["elapsed_s"] >= 6.0
    rates = [json.loads(line)["lr"] for line in (tmp_path / "ddp" / "log.jsonl").open()]
    assert rates[-1] < 0.1 * 0.01 + 0.001  # decayed over the clock to near min_lr


@pytest.mark.parametrize("weighting", ["median_frequency", "sqrt_median_frequency"])
def test_class_weighting_uses_the_train_masks(synthetic_root, tmp_path, weighting):
    extra = {"loss.class_weighting": weighting}
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    trainer = Trainer(config, tmp_path / "run", resume=False, progress=False)
    names = trainer.class_set.names
    expected = stats_of_masks(trainer.data["train"].masks, names).median_frequency_weights()
    if weighting == "sqrt_median_frequency":
        expected = [w**0.5 for w in expected]
    written = json.loads((tmp_path / "run" / "class_weights.json").read_text())
    assert list(written) == list(names)
    assert list(written.values()) == pytest.approx(expected)
    assert max(expected) > 1.0 > min(w for w in expected if w > 0)  # rare up, common down


def test_log_rows_are_strict_json_even_with_non_finite_values(tmp_path: Path) -> None:
    log = RunLog(tmp_path, enabled=True)
    log.append("log.jsonl", {"step": 1, "loss": float("nan"), "iou": {"road": float("inf")}})
    log.close()

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    row = json.loads((tmp_path / "log.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 1, "loss": None, "iou": {"road": None}}
