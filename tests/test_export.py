"""Tests for the ONNX export: one self-contained file, dynamic shapes, parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from unetseg.commands.predict import predict_paths
from unetseg.core.checkpoint import FORMAT, CheckpointError, model_from_checkpoint, save_checkpoint
from unetseg.core.classes import cityscapes19
from unetseg.core.config import from_dict
from unetseg.core.model import build_model
from unetseg.engine.export import export_onnx
from unetseg.engine.inference import Predictor


@pytest.fixture(scope="module", params=["plain", "residual", "residual_full_resolution"])
def exported(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[Path, Path]:
    """(checkpoint, onnx) of a width-4 model of each encoder (the residual ones with per-image input
    normalisation, one of them with its full-resolution decoder level), with random weights and
    batch-norm statistics."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    encoder = "plain" if request.param == "plain" else "residual"
    model_config = {"width": 4, "encoder": encoder, "blocks": [1, 2, 1, 1]}
    if encoder == "residual":
        model_config["input_norm"] = "per_image"
        model_config["full_resolution"] = request.param == "residual_full_resolution"
    config = from_dict({"model": model_config, "data": {"size": [64, 32]}})
    model = build_model(config, cityscapes19().num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # make eval-mode BN do something
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    if getattr(model, "refine", None) is not None:  # its head starts at zero: make it add something
        torch.nn.init.normal_(model.refine.head.weight, std=0.5)
    state = {
        "format": FORMAT,
        "step": 0,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "class_set": cityscapes19().to_dict(),
    }
    checkpoint = folder / "final.pt"
    save_checkpoint(state, checkpoint)
    onnx_path = folder / "model.onnx"
    assert export_onnx(checkpoint, onnx_path) == onnx_path
    return checkpoint, onnx_path


def load_onnx_predictor(path: Path) -> Predictor:
    return Predictor.from_onnx(path, json.loads(path.with_suffix(".json").read_text()))


def test_export_is_one_file_with_metadata(exported: tuple[Path, Path]) -> None:
    _, path = exported
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("model")) == [
        "model.json",
        "model.onnx",
    ]
    model = onnx.load(str(path))  # loads without any external data file
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["input_size"] == [64, 32]
    assert meta["class_set"] == cityscapes19().to_dict()
    assert meta["model"]["width"] == 4
    assert len(meta["normalisation"]["mean"]) == len(meta["normalisation"]["std"]) == 3


@pytest.mark.parametrize("shape", [(1, 3, 32, 64), (2, 3, 48, 96), (1, 3, 80, 32)])
def test_onnx_matches_pytorch(exported: tuple[Path, Path], shape: tuple[int, ...]) -> None:
    checkpoint, path = exported
    model, _, _ = model_from_checkpoint(checkpoint)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.eval()(x)
    actual = load_onnx_predictor(path).logits(x)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.999


def test_predict_paths_with_onnx(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = exported
    rng = np.random.default_rng(0)
    for name, (height, width) in {"a.png": (40, 70), "b.jpg": (90, 50)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            tmp_path / name
        )
    report = predict_paths([tmp_path], tmp_path / "out", load_onnx_predictor(path), progress=False)
    assert not report.failed
    assert report.written == [tmp_path / "out" / "a_color.png", tmp_path / "out" / "b_color.png"]
    with Image.open(tmp_path / "out" / "b_labelIds.png") as image:
        assert image.size == (50, 90)
        assert set(np.unique(np.asarray(image)).tolist()) <= set(cityscapes19().label_ids or ())


def test_an_onnx_model_exported_for_normalised_inputs_is_refused(
    exported: tuple[Path, Path],
) -> None:
    """Exports from before models normalised their own inputs took normalised images: fed [0, 1]
    images they would be silently wrong, so their metadata (no "input") is refused."""
    _, path = exported
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["input"]
    with pytest.raises(CheckpointError, match="older unetseg .* export the checkpoint again"):
        Predictor.from_onnx(path, meta)
