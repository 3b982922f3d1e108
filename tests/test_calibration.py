"""Calibrated confidence: the temperature fit, the calibration error against torchmetrics, and
the temperature travelling with the model (training, calibrate, evaluate, predict, ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import random_image
from test_reliability import cli, error_line
from test_train import tiny_overrides
from torchmetrics.functional.classification import multiclass_calibration_error

from unetseg.core.checkpoint import load_checkpoint
from unetseg.core.config import load_config
from unetseg.engine.calibration import (
    Calibration,
    Reliability,
    fit_temperature,
    store_calibration,
)
from unetseg.engine.export import export_onnx
from unetseg.engine.inference import Predictor, predict_image, segment
from unetseg.engine.train import TrainResult, train


def drawn_labels(temperature: float, pixels: int = 20000, classes: int = 6, seed: int = 0):
    """Logits, and labels drawn from ``softmax(logits / temperature)``: the temperature that
    calibrates these logits is known."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pixels, classes, generator=generator) * 3
    probabilities = (logits / temperature).softmax(1)
    return logits, torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fit_finds_the_temperature_the_labels_were_drawn_with(temperature: float) -> None:
    logits, labels = drawn_labels(temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(temperature, rel=0.05)
    before, after = Reliability.empty(), Reliability.empty()
    before.add(logits, labels)
    after.add(logits / fitted, labels)
    assert after.ece() < 0.02
    if temperature != 1.0:
        assert before.ece() > 3 * after.ece()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_error_equals_torchmetrics(seed: int) -> None:
    logits, labels = drawn_labels(1.7, pixels=5000, classes=4, seed=seed)
    reliability = Reliability.empty()
    for part, truth in zip(logits.split(1234), labels.split(1234)):  # counted in batches
        reliability.add(part, truth)
    reference = multiclass_calibration_error(logits.softmax(1), labels, 4, n_bins=15, norm="l1")
    assert reliability.ece() == pytest.approx(float(reference), abs=1e-6)
    assert reliability.count.sum() == 5000


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("calibrated")
    overrides = tiny_overrides(synthetic_root, folder / "cache", **{"train.ema_decay": 0.9})
    return train(load_config(None, overrides), folder / "run", progress=False)


def shipped_temperature(path: Path) -> float:
    state = load_checkpoint(path)
    weights = (state.get("ema") or {}).get("weights", state["model"])
    return float(weights["temperature"])


def test_training_ends_with_a_calibrated_model(trained: TrainResult) -> None:
    run = trained.run_dir
    calibration = json.loads((run / "metrics.json").read_text())["calibration"]
    temperature = calibration["temperature"]
    assert temperature > 0 and temperature != 1.0
    assert calibration["pixels"] > 0 and 0 <= calibration["ece_after"] <= 1
    assert shipped_temperature(run / "final.pt") == pytest.approx(temperature)
    meta = json.loads((run / "model.json").read_text())
    assert meta["temperature"]["value"] == pytest.approx(temperature)
    assert (run / "evaluation" / "reliability.png").is_file()
    report = (run / "report.html").read_text()
    section = report[report.index('<section id="calibration">') :]
    assert "reliability.png" in section[: section.index("</section>")]
    assert shipped_temperature(run / "best.pt") != 1.0  # calibrated too, on its own weights


def test_calibrate_changes_confidence_not_masks_and_every_format_carries_it(
    trained: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(trained.final_checkpoint.read_bytes())
    uncalibrated = Calibration(1.0, Reliability.empty(), Reliability.empty())
    store_calibration(checkpoint, uncalibrated)
    image = random_image(48, 96)
    batch = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    before = Predictor.from_checkpoint(checkpoint, device="cpu")
    code, out, _ = cli(["calibrate", "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert code == 0 and "expected calibration error" in out
    temperature = shipped_temperature(checkpoint)
    assert temperature != 1.0
    written = json.loads((tmp_path / "calibration_val" / "calibration.json").read_text())
    assert written["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "calibration_val" / "reliability.png").is_file()

    after = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert np.array_equal(predict_image(before, image), predict_image(after, image))
    torch.testing.assert_close(after.logits(batch) * temperature, before.logits(batch))
    code, _, _ = cli(["calibrate", "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert shipped_temperature(checkpoint) == pytest.approx(temperature, rel=1e-3)  # a fixpoint

    onnx = export_onnx(checkpoint, tmp_path / "model.onnx")
    meta = json.loads(onnx.with_suffix(".json").read_text())
    assert meta["temperature"]["value"] == pytest.approx(temperature)
    exported = Predictor.from_onnx(onnx, meta)
    torch.testing.assert_close(exported.logits(batch), after.logits(batch), atol=1e-4, rtol=1e-4)

    safetensors = trained.run_dir / "model.safetensors"
    code, _, err = cli(["calibrate", "--checkpoint", safetensors], capsys)
    assert code == 1 and error_line(err) == (
        f"error: {safetensors}: calibrate stores the temperature in a .pt checkpoint "
        "(best.pt, final.pt); export again afterwards"
    )

    code, _, _ = cli(["evaluate", "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    scored = json.loads((tmp_path / "evaluation_val" / "metrics.json").read_text())
    assert scored["calibration"]["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "evaluation_val" / "reliability.png").is_file()


def test_predict_writes_the_confidence_the_api_returns(
    trained: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = random_image(40, 90, seed=4)
    Image.fromarray(image).save(tmp_path / "street.png")
    args = ["predict", "--checkpoint", trained.run_dir, "--input", tmp_path / "street.png"]
    code, _, _ = cli(
        [*args, "--output", tmp_path / "out", "--confidence", "--device", "cpu"], capsys
    )
    assert code == 0
    written = np.asarray(Image.open(tmp_path / "out" / "street_confidence.png"))
    predictor = Predictor.from_checkpoint(trained.run_dir, device="cpu")
    mask, confidence = segment(predictor, image, confidence=True)
    assert confidence is not None
    assert written.shape == mask.shape == image.shape[:2]
    assert confidence.min() >= 1 / predictor.class_set.num_classes - 1e-6
    assert confidence.max() <= 1
    assert np.abs(written.astype(int) - np.round(confidence * 255)).max() <= 1
    assert np.array_equal(mask, predict_image(predictor, image))
