"""``evaluate_checkpoint`` at full resolution, with and without test-time augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.commands.cli import main
from unetseg.commands.evaluate import evaluate_checkpoint
from unetseg.core import checkpoint as ckpt
from unetseg.core.classes import camvid11
from unetseg.core.config import from_dict
from unetseg.core.model import build_model

CONSTANT = 3  # the class the test model always predicts


def folders_data(root: Path, count: int = 3) -> Path:
    """CamVid-layout val images (96x48, not the training size) with random masks, void included."""
    rng = np.random.default_rng(0)
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    for i in range(count):
        image = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "val" / f"f{i}.png")
        mask = rng.integers(0, 12, (48, 96), dtype=np.uint8)  # 11 = void
        Image.fromarray(mask).save(root / "valannot" / f"f{i}.png")
    return root


def constant_checkpoint(path: Path, root: Path) -> Path:
    """A width-4 model trained at 64x32 whose head always answers CONSTANT."""
    raw = {"model": {"width": 4}, "data": {"kind": "folders", "root": str(root)}}
    raw["data"].update(class_set="camvid11", size=[64, 32], cache_dir=str(root / "cache"))
    config = from_dict(raw)
    torch.manual_seed(0)
    model = build_model(config, camvid11().num_classes)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[CONSTANT] = 5.0
    state = {"format": ckpt.FORMAT, "step": 1, "model": model.state_dict()}
    state.update(config=config.to_dict(), class_set=camvid11().to_dict())
    ckpt.save_checkpoint(state, path)
    return path


@pytest.fixture
def constant_setup(tmp_path: Path) -> tuple[Path, Path]:
    root = folders_data(tmp_path / "camvid")
    return constant_checkpoint(tmp_path / "model.pt", root), root


def expected_scores(root: Path) -> tuple[float, float]:
    """IoU of CONSTANT and mIoU by hand: every valid pixel is predicted CONSTANT."""
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "valannot").glob("*"))])
    valid = masks[masks != 11]
    iou = float((valid == CONSTANT).sum() / valid.size)
    present = len(np.unique(valid))
    return iou, iou / present  # every other present class has IoU 0


def full_res_metrics(checkpoint: Path, out: Path, **options: object) -> dict:
    """metrics.json of a CPU full-resolution evaluation."""
    result = evaluate_checkpoint(
        checkpoint, full_res=True, out=out, device="cpu", progress=False, **options
    )
    return result["metrics"]


@pytest.mark.parametrize(("tta", "scales"), [(False, (1.0,)), (True, (0.5, 1.0, 1.5))])
def test_full_resolution_scores_match_a_hand_count(constant_setup, tmp_path, tta, scales):
    checkpoint, root = constant_setup
    metrics = full_res_metrics(checkpoint, tmp_path / "out", tta=tta, scales=scales)
    iou, miou = expected_scores(root)
    assert metrics["per_class"]["Road"]["iou"] == pytest.approx(iou)
    assert metrics["miou"] == pytest.approx(miou)
    assert (metrics["tta"], metrics["scales"]) == (tta, list(scales))
    assert (tmp_path / "out" / "metrics.json").is_file()
    # Every pixel gets softmax(5, 0, ..., 0)'s top probability: one bin, whose accuracy is
    # CONSTANT's share of the labelled pixels (its IoU, as nothing else is predicted).
    confidence = math.exp(5) / (math.exp(5) + 10)
    calibration = metrics["calibration"]
    assert calibration["ece_after"] == pytest.approx(abs(iou - confidence), abs=1e-5)
    assert calibration["ece_before"] is None and calibration["temperature"] == 1.0
    assert calibration["pixels"] == labelled_pixels(root)
    assert (tmp_path / "out" / "reliability.png").is_file()


def labelled_pixels(root: Path) -> int:
    return sum(int((np.asarray(Image.open(p)) != 11).sum()) for p in (root / "valannot").glob("*"))


def test_overrides_choose_the_scored_split(constant_setup, tmp_path):
    checkpoint, root = constant_setup
    (root / "val" / "f0.png").rename(root / "val" / "other.png")
    (root / "valannot" / "f0.png").rename(root / "valannot" / "other.png")
    metrics = full_res_metrics(
        checkpoint, tmp_path / "out", overrides=["data.val_filter=['other*']"]
    )
    mask = np.asarray(Image.open(root / "valannot" / "other.png"))
    assert metrics["per_class"]["Road"]["gt_pixels"] == int((mask == CONSTANT).sum())
    assert metrics["overrides"] == ["data.val_filter=['other*']"]


def test_test_time_augmentation_needs_full_resolution(constant_setup, tmp_path, capsys):
    checkpoint, _ = constant_setup
    with pytest.raises(ValueError, match="full-resolution"):
        evaluate_checkpoint(checkpoint, out=tmp_path / "out", device="cpu", tta=True)
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--tta", "flip"])
    assert code == 2
    assert "full-resolution scoring only (evaluate --full-res)" in capsys.readouterr().err


def test_ids_only_predictions_are_what_the_official_evaluation_reads(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict --ids-only`` leaves one label-id PNG per frame (with colour masks beside them
    the official script stops at "Found multiple predictions"), and the official evaluation of
    that folder gives our full-resolution mIoU."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from test_predict import make_checkpoint

    from unetseg.core.classes import cityscapes19

    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    frames = synthetic_root / "leftImg8bit" / "val"
    output = tmp_path / "official"
    args = ["predict", "--checkpoint", checkpoint, "--input", frames, "--output", output]
    assert main([*map(str, args), "--ids-only", "--device", "cpu"]) == 0
    written = sorted(output.rglob("*.png"))
    assert {p.name.rsplit("_", 1)[1] for p in written if p.name != "legend.png"} == {"labelIds.png"}
    ours = evaluate_checkpoint(checkpoint, data_root=synthetic_root, full_res=True, device="cpu")
    for field, value in {
        "predictionPath": str(output),
        "predictionWalk": None,
        "evalInstLevelScore": False,
        "evalPixelAccuracy": False,
        "JSONOutput": False,
        "quiet": True,
    }.items():
        monkeypatch.setattr(cs_eval.args, field, value)
    truths = sorted(str(p) for p in (synthetic_root / "gtFine" / "val").rglob("*_labelIds.png"))
    predictions = [cs_eval.getPrediction(cs_eval.args, truth) for truth in truths]
    result = cs_eval.evaluateImgLists(predictions, truths, cs_eval.args)
    assert result["averageScoreClasses"] == pytest.approx(ours["metrics"]["miou"], abs=1e-6)
    categories = ours["metrics"]["categories"]
    assert result["averageScoreCategories"] == pytest.approx(categories["miou"], abs=1e-6)
    for name, official in result["categoryScores"].items():
        ours_iou = categories["per_class"].get(name, {}).get("iou")
        assert (ours_iou is None) == math.isnan(official), name
        if ours_iou is not None:
            assert ours_iou == pytest.approx(official, abs=1e-6), name


def test_an_exported_onnx_model_is_scored_as_its_checkpoint(constant_setup, tmp_path, capsys):
    """The .onnx finds the run's data through the JSON beside it and scores as the checkpoint
    does, at full resolution; without --full-res it is one error line saying to add it."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from unetseg.engine.export import export_onnx

    checkpoint, root = constant_setup
    state = ckpt.load_checkpoint(checkpoint)
    state["model"]["temperature"] = torch.tensor(2.0)  # the ONNX logits come divided by it
    ckpt.save_checkpoint(state, checkpoint)
    onnx_path = export_onnx(checkpoint, tmp_path / "model.onnx")
    ours = full_res_metrics(onnx_path, tmp_path / "onnx", tta=True, scales=(0.5, 1.0))
    reference = full_res_metrics(checkpoint, tmp_path / "pt", tta=True, scales=(0.5, 1.0))
    iou, miou = expected_scores(root)
    assert ours["per_class"]["Road"]["iou"] == pytest.approx(iou)
    assert ours["miou"] == pytest.approx(miou) == pytest.approx(reference["miou"])
    confidence = math.exp(2.5) / (math.exp(2.5) + 10)  # softmax(5 / T, 0, ..., 0)'s top
    assert ours["calibration"]["temperature"] == reference["calibration"]["temperature"] == 2.0
    assert ours["calibration"]["ece_after"] == pytest.approx(abs(iou - confidence), abs=1e-5)
    assert ours["calibration"]["after"]["count"] == reference["calibration"]["after"]["count"]
    assert ours["checkpoint"] == str(onnx_path) and (tmp_path / "onnx" / "metrics.json").is_file()
    assert main(["evaluate", "--checkpoint", str(onnx_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(
        "model.onnx: an ONNX model is scored through the predict path: add --full-res"
    )
