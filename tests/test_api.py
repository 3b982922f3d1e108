"""The Python API: ``unetseg.load`` from every form a model takes, ``Model.predict`` and its
``Segmentation`` objects, and ``unetseg.train`` / ``unetseg.evaluate`` as the CLI runs them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_predict import make_checkpoint, random_image
from test_train import tiny_overrides

import unetseg
from unetseg.core.checkpoint import CheckpointError, export_safetensors, model_from_checkpoint
from unetseg.core.classes import camvid11
from unetseg.engine.inference import Predictor, segment

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a final.pt (CamVid's 11 classes) and its model.safetensors."""
    run = tmp_path_factory.mktemp("api") / "run"
    checkpoint = make_checkpoint(run / "final.pt", camvid11())
    export_safetensors(*model_from_checkpoint(checkpoint), run / "model.safetensors")
    return run


def test_load_takes_every_form_of_a_model_and_they_predict_alike(
    run_folder: Path, tmp_path: Path
) -> None:
    image = random_image(45, 70)
    expected = unetseg.load(run_folder / "final.pt", device="cpu").predict(image).mask
    for source in (str(run_folder), run_folder / "model.safetensors"):
        assert np.array_equal(unetseg.load(source, "cpu").predict(image).mask, expected)
    onnx = unetseg.export_onnx(run_folder / "final.pt", tmp_path / "model.onnx")
    exported = unetseg.load(onnx).predict(image).mask
    assert (exported == expected).mean() > 0.99  # float32 arithmetic in another order
    onnx.with_suffix(".json").unlink()
    with pytest.raises(
        CheckpointError, match=r"model\.json: missing \(written by `unetseg export`"
    ):
        unetseg.load(onnx)


def test_a_segmentation_is_at_the_image_size_with_its_classes_colours_and_files(
    run_folder: Path, tmp_path: Path
) -> None:
    model = unetseg.load(run_folder, "cpu")
    image = random_image(50, 83, seed=3)
    result = model.predict(image)
    assert result.mask.shape == (50, 83) and result.mask.dtype == np.uint8
    assert result.classes == model.classes == camvid11().names
    reference = segment(Predictor.from_checkpoint(run_folder, "cpu"), image, confidence=True)
    assert np.array_equal(result.mask, reference.mask)
    np.testing.assert_allclose(result.confidence, reference.confidence, atol=1e-6)
    palette = np.array(camvid11().colors, dtype=np.uint8)
    assert np.array_equal(result.color(), palette[result.mask])
    blended = result.overlay(alpha=1.0)  # all mask: the colours themselves
    assert np.array_equal(blended, palette[result.mask])
    written = result.save(tmp_path / "out", name="frame")
    assert [p.name for p in written] == [
        "frame_color.png",
        "frame_overlay.jpg",
        "frame_classIds.png",
        "frame_confidence.png",
    ]
    assert np.array_equal(np.asarray(Image.open(written[2])), result.mask)
    legend = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [c["name"] for c in legend["classes"]] == list(result.classes)


def test_a_list_is_predicted_in_order_whatever_each_image_is(
    run_folder: Path, tmp_path: Path
) -> None:
    model = unetseg.load(run_folder, "cpu")
    small, large = random_image(40, 60, seed=1), random_image(64, 96, seed=2)
    Image.fromarray(small).save(tmp_path / "street.png")
    images = [str(tmp_path / "street.png"), Image.fromarray(large), small, large]
    results = model.predict(images, batch_size=2)
    assert [r.name for r in results] == ["street", "image_1", "image_2", "image_3"]
    for result, image in zip(results, [small, large, small, large]):
        alone = model.predict(image, confidence=False)
        assert alone.confidence is None
        assert np.array_equal(result.mask, alone.mask)
    windows = model.predict([large], sliding_window=True)[0]
    assert windows.mask.shape == (64, 96)


def test_what_is_not_an_image_is_one_value_error_naming_what_was_expected(
    run_folder: Path,
) -> None:
    model = unetseg.load(run_folder, "cpu")
    with pytest.raises(ValueError, match=r"image 0: expected an image path \(str or Path\)"):
        model.predict(7)
    with pytest.raises(ValueError, match="image 1: expected .* got NoneType"):
        model.predict([random_image(32, 32), None])
    with pytest.raises(ValueError, match="no-such.png"):
        model.predict("no-such.png")


def test_train_and_evaluate_take_a_yaml_file_and_overrides(
    synthetic_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"width": 8}, "train": {"seed": 3}}))
    overrides = tiny_overrides(synthetic_root, tmp_path / "cache", **{"model.width": 4})
    run = unetseg.train(config, out=tmp_path / "run", overrides=overrides, progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["width"] == 4 and saved["train"]["seed"] == 3  # the override wins
    scores = unetseg.evaluate(run.final_checkpoint, out=tmp_path / "evaluation", progress=False)
    assert scores["metrics"]["miou"] == pytest.approx(run.metrics["miou"], abs=1e-6)


def test_the_readme_confidence_picture_has_a_row_per_input(
    run_folder: Path, tmp_path: Path
) -> None:
    """``scripts/confidence_picture.py``: image | overlay | confidence, captioned, per input."""
    spec = importlib.util.spec_from_file_location(
        "confidence_picture", SCRIPTS / "confidence_picture.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, path in enumerate(inputs):
        Image.fromarray(random_image(64, 96, seed)).save(path)
    out = script.main(
        [
            "--checkpoint",
            str(run_folder / "final.pt"),
            "--input",
            *map(str, inputs),
            "--out",
            str(tmp_path / "p.png"),
        ]
    )
    picture = np.asarray(Image.open(out).convert("RGB"))
    tile = round(script.TILE_WIDTH * 64 / 96)
    caption = 4 + 12  # one line: "a: no warning: like the training data"
    assert picture.shape == (2 * (tile + caption), 3 * script.TILE_WIDTH, 3)
    first = np.asarray(Image.open(inputs[0]).resize((script.TILE_WIDTH, tile)))
    assert np.abs(picture[:tile, : script.TILE_WIDTH].astype(int) - first).max() <= 1
    model = unetseg.load(run_folder / "final.pt", device="cpu")
    confidence = model.predict(str(inputs[1])).confidence
    grey = np.asarray(
        Image.fromarray((confidence * 255).round().astype(np.uint8)).resize(
            (script.TILE_WIDTH, tile)
        )
    )
    second = picture[tile + caption : 2 * tile + caption, 2 * script.TILE_WIDTH :, 0]
    assert np.abs(second.astype(int) - grey).max() <= 1
