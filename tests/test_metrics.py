"""Tests for the confusion matrix and the scores derived from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from unetseg.core.metrics import ConfusionMatrix, SegmentationScores, grouped_matrix

IGNORE = 255
NUM_CITYSCAPES_CLASSES = 19


def _scores(prediction: list, target: list, num_classes: int):
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.tensor(prediction), torch.tensor(target))
    return cm, cm.compute()


def _random_masks(
    num_classes: int, shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random prediction and target, about 10% of target pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    prediction = torch.randint(0, num_classes, shape, generator=g)
    target = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.1] = IGNORE
    return prediction, target


def _structured_masks(
    num_classes: int, shape: tuple[int, int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block/stripe target over even classes, prediction = target + 15% noise.

    Odd classes occur only as prediction noise; the last class occurs nowhere.
    """
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    images = torch.arange(n).view(n, 1, 1)
    blocks = (rows // 8 + cols // 16 + images) % (num_classes // 2) * 2
    stripes = (cols // 4 % 3) * 2
    target = torch.where(rows < h // 2, blocks, stripes).expand(n, h, w).clone()
    target[:, : h // 8, : w // 8] = IGNORE
    prediction = torch.where(target == IGNORE, 0, target)
    noisy = torch.rand(shape, generator=g) < 0.15
    prediction[noisy] = torch.randint(0, num_classes - 1, shape, generator=g)[noisy]
    return prediction, target


def test_hand_computed_example() -> None:
    target = [[0, 0, 1], [1, 2, IGNORE]]
    prediction = [[0, 1, 1], [2, 2, 0]]
    cm, s = _scores(prediction, target, 3)
    expected = [
        [1, 1, 0],  # gt 0: one right, one predicted as 1
        [0, 1, 1],  # gt 1: one right, one predicted as 2
        [0, 0, 1],  # gt 2: right; the ignored pixel (predicted 0) is not counted
    ]
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == expected
    # IoU = TP / (gt + pred - TP): 1/(2+1-1), 1/(2+2-1), 1/(1+2-1)
    np.testing.assert_allclose(s.iou, [1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(s.dice, [2 / 3, 2 / 4, 2 / 3])
    np.testing.assert_allclose(s.accuracy, [1 / 2, 1 / 2, 1 / 1])
    assert s.gt_pixels.tolist() == [2, 2, 1]
    assert s.miou == pytest.approx(4 / 9)
    assert s.mean_dice == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)
    assert s.fwiou == pytest.approx(2 / 5 * 1 / 2 + 2 / 5 * 1 / 3 + 1 / 5 * 1 / 2)
    assert s.absent == []


def test_ignored_pixels_are_excluded_whatever_the_prediction() -> None:
    target = torch.tensor([0, 1, IGNORE, IGNORE])
    cm_a = ConfusionMatrix(2)
    cm_a.update(torch.tensor([0, 1, 0, 0]), target)
    cm_b = ConfusionMatrix(2)
    cm_b.update(torch.tensor([0, 1, 1, 0]), target)
    assert cm_a.matrix.tolist() == cm_b.matrix.tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("bad", [3, 7, -1, 254])
def test_out_of_range_target_raises(bad: int) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=str(bad)):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, bad, IGNORE]))
    assert cm.matrix.sum() == 0  # nothing half-accumulated


def test_out_of_range_prediction_raises() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction.*3"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_mismatched_shapes_and_float_inputs_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_absent_class_is_nan_and_skipped_predicted_only_class_counts_as_zero() -> None:
    # 4 classes: class 2 only predicted (a false positive), class 3 nowhere.
    cm, s = _scores([0, 2, 1, 1], [0, 0, 1, 1], 4)
    assert s.iou[:3].tolist() == [0.5, 1.0, 0.0]
    assert math.isnan(s.iou[3]) and math.isnan(s.dice[3])
    assert math.isnan(s.accuracy[2])  # no ground truth for class 2
    assert s.absent == [3]
    assert s.miou == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert s.mean_dice == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_empty_matrix_gives_nan_without_warnings() -> None:
    with np.errstate(all="raise"):
        s = ConfusionMatrix(3).compute()
    assert math.isnan(s.miou) and math.isnan(s.pixel_accuracy) and math.isnan(s.fwiou)
    assert s.absent == [0, 1, 2]


def test_to_dict_is_strict_json_and_table_lists_absent_classes() -> None:
    _, s = _scores([0, 2, 1, 1], [0, 0, 1, 1], 4)
    names = ["road", "car", "sky", "void-ish"]
    d = json.loads(json.dumps(s.to_dict(names), allow_nan=False))
    assert d["absent_classes"] == ["void-ish"]
    assert d["per_class"]["void-ish"]["iou"] is None
    assert d["per_class"]["sky"] == {"iou": 0.0, "dice": 0.0, "accuracy": None, "gt_pixels": 0}
    assert d["miou"] == pytest.approx(0.5)
    table = s.table(names)
    assert "void-ish" in table.splitlines()[-1]
    assert any(line.startswith("mean") and "0.5000" in line for line in table.splitlines())
    with pytest.raises(ValueError):
        s.to_dict(names[:3])


def test_merge_of_halves_equals_whole_and_reset() -> None:
    prediction, target = _random_masks(6, (4, 16, 16), seed=0)
    whole = ConfusionMatrix(6)
    whole.update(prediction, target)
    first, second = ConfusionMatrix(6), ConfusionMatrix(6)
    first.update(prediction[:2], target[:2])
    second.update(prediction[2:], target[2:])
    first.merge(second)
    assert torch.equal(first.matrix, whole.matrix)
    first.all_reduce()  # no process group: must leave the counts alone
    assert torch.equal(first.matrix, whole.matrix)
    first.reset()
    assert first.matrix.sum() == 0
    with pytest.raises(ValueError):
        first.merge(ConfusionMatrix(5))


def _assert_matches_torchmetrics(
    prediction: torch.Tensor, target: torch.Tensor, c: int
) -> SegmentationScores:
    cm = ConfusionMatrix(c)
    cm.update(prediction, target)
    scores = cm.compute()
    ours = scores.iou
    reference = MulticlassJaccardIndex(num_classes=c, ignore_index=IGNORE, average="none")
    theirs = reference(prediction, target).double().numpy()
    present = ~np.isnan(ours)  # torchmetrics reports 0 for absent classes
    assert present.sum() >= 2
    np.testing.assert_allclose(ours[present], theirs[present], rtol=0, atol=1e-6)
    return scores


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_on_random_masks(seed: int) -> None:
    _assert_matches_torchmetrics(*_random_masks(7, (2, 24, 40), seed), 7)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_on_structured_masks(seed: int) -> None:
    prediction, target = _structured_masks(8, (2, 32, 64), seed)
    scores = _assert_matches_torchmetrics(prediction, target, 8)
    assert scores.absent == [7]
    assert scores.iou[1] == 0.0  # only ever predicted


def _train_to_label_ids() -> np.ndarray:
    """Lookup table train id -> official label id; ignore (255) -> 0 ('unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id in range(NUM_CITYSCAPES_CLASSES):
        lut[train_id] = trainId2label[train_id].id
    return lut


def _official_class_iou(
    prediction: torch.Tensor, target: torch.Tensor, tmp_path: Path, monkeypatch
) -> dict:
    """Run the official Cityscapes pixel-level evaluation on label-id PNGs of the masks."""
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # removed in numpy 2.4
    for field, value in {
        "evalInstLevelScore": False,
        "evalPixelAccuracy": False,
        "JSONOutput": False,
        "quiet": True,
        "exportFile": str(tmp_path / "result.json"),
    }.items():
        monkeypatch.setattr(cs_eval.args, field, value)
    lut = _train_to_label_ids()
    predictions, ground_truths = [], []
    for i in range(prediction.shape[0]):
        stem = tmp_path / f"testcity_{i:06d}_000019"
        gt_file, pred_file = f"{stem}_gtFine_labelIds.png", f"{stem}_pred_labelIds.png"
        Image.fromarray(lut[target[i].numpy()]).save(gt_file)
        Image.fromarray(lut[prediction[i].numpy()]).save(pred_file)
        ground_truths.append(gt_file)
        predictions.append(pred_file)
    return cs_eval.evaluateImgLists(predictions, ground_truths, cs_eval.args)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_agrees_with_official_cityscapes_evaluation(kind: str, tmp_path: Path, monkeypatch) -> None:
    shape = (2, 48, 96)
    make_masks = _random_masks if kind == "random" else _structured_masks
    prediction, target = make_masks(NUM_CITYSCAPES_CLASSES, shape, seed=3)
    result = _official_class_iou(prediction, target, tmp_path, monkeypatch)
    cm = ConfusionMatrix(NUM_CITYSCAPES_CLASSES)
    cm.update(prediction, target)
    scores = cm.compute()
    names = [trainId2label[t].name for t in range(NUM_CITYSCAPES_CLASSES)]
    official = np.array([result["classScores"][name] for name in names])
    reported = ~np.isnan(official)
    assert reported.sum() >= 5
    np.testing.assert_allclose(scores.iou[reported], official[reported], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(scores.iou), ~reported)
    assert scores.miou == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    assert not (tmp_path / "result.json").exists()


def test_grouped_matrix_sums_the_blocks_of_each_group() -> None:
    matrix = np.array([[5, 1, 0], [2, 7, 3], [0, 4, 9]])  # classes a, b, c; groups x = {a, c}
    grouped, names = grouped_matrix(matrix, ["x", "y", "x"])
    assert names == ["x", "y"]
    # x -> x: a->a 5, a->c 0, c->a 0, c->c 9; x -> y: a->b 1, c->b 4; y -> x: 2 + 3; y -> y: 7
    assert grouped.tolist() == [[14, 5], [5, 7]]
