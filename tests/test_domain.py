"""The domain check: a profile of the training data kept with the model, and warnings for
inputs that lie far outside it (synthetic scenes against CamVid photographs both ways, and
CamVid's darker 0001TP street against the streets a model trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_overrides

from unetseg.commands.predict import predict_paths
from unetseg.core.checkpoint import load_checkpoint
from unetseg.core.classes import camvid11, cityscapes19
from unetseg.core.config import load_config
from unetseg.data.synthetic import synthesize
from unetseg.engine.domain import DomainProfile, build_profile, check, image_features
from unetseg.engine.inference import Predictor
from unetseg.engine.train import TrainResult, train

EVEN_SHARE = {name: 1 / 11 for name in camvid11().names}


def read(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def warned_on_appearance(profile: DomainProfile, images: list[np.ndarray]) -> float:
    """The share of ``images`` whose appearance (not their size or predicted classes) is
    warned about."""
    warned = 0
    for image in images:
        height, width = image.shape[:2]
        found = check(profile, image, np.zeros((height, width), np.uint8), None, camvid11())
        warned += any("training image" in w or "unusual mix" in w for w in found.warnings)
    return warned / len(images)


def profile_of(images: list[np.ndarray]) -> DomainProfile:
    return build_profile(images, [(i.shape[1], i.shape[0]) for i in images], EVEN_SHARE, [])


@pytest.fixture(scope="module")
def camvid(shared_data: Path) -> dict[str, list[np.ndarray]]:
    """CamVid's frames at 240x180: the streets 0006R0 + 0016E5 (train), their val frames, and
    the darker street 0001TP."""
    root = shared_data / "camvid"
    if not (root / "train").is_dir():
        pytest.skip("CamVid is not in ../shared/data")
    train = sorted(root.glob("train/*.png"))

    def small(paths: list[Path]) -> list[np.ndarray]:
        return [np.asarray(Image.fromarray(i).resize((240, 180))) for i in read(paths)]

    return {
        "train": small([p for p in train if not p.name.startswith("0001TP")]),
        "val": small(sorted(root.glob("val/*.png"))),
        "0001TP": small([p for p in train if p.name.startswith("0001TP")]),
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    """80 training and 20 val synthetic scenes."""
    root = tmp_path_factory.mktemp("scenes")
    synthesize(root, n_train=80, n_val=20, size=(256, 128), seed=1, progress=False)
    return {
        split: read(sorted((root / "leftImg8bit" / split).rglob("*.png")))
        for split in ("train", "val")
    }


def test_synthetic_scenes_and_camvid_photographs_are_told_apart_both_ways(
    camvid: dict[str, list[np.ndarray]], synthetic: dict[str, list[np.ndarray]]
) -> None:
    from_photos, from_scenes = profile_of(camvid["train"]), profile_of(synthetic["train"])
    assert warned_on_appearance(from_photos, synthetic["val"]) >= 0.9
    assert warned_on_appearance(from_scenes, camvid["val"]) >= 0.9
    assert warned_on_appearance(from_photos, camvid["val"]) <= 0.05
    assert warned_on_appearance(from_scenes, synthetic["val"]) <= 0.1


def test_the_darker_street_is_warned_about_and_the_trained_streets_are_not(
    camvid: dict[str, list[np.ndarray]],
) -> None:
    profile = profile_of(camvid["train"])
    assert warned_on_appearance(profile, camvid["0001TP"]) >= 0.9
    assert warned_on_appearance(profile, camvid["val"]) <= 0.05
    image = camvid["0001TP"][0]
    found = check(profile, image, np.zeros(image.shape[:2], np.uint8), None, camvid11())
    assert found.warnings[0].startswith("darker than any training image (brightness 0.1")


def test_the_features_measure_what_they_are_named_after() -> None:
    rng = np.random.default_rng(0)
    grey = np.full((60, 80, 3), 128, np.uint8)
    np.testing.assert_allclose(image_features(grey), [128 / 255, 0, 0, 0], atol=1e-12)
    noisy = np.clip(grey + rng.normal(0, 30, grey.shape), 0, 255).astype(np.uint8)
    assert image_features(noisy)[3] > 0.02 and image_features(noisy)[1] > 0.02
    red = np.zeros_like(grey)
    red[..., 0] = 200
    assert image_features(red)[2] == pytest.approx(1.0)
    # Read at a fixed area: a photo and its copy at another resolution have the same features.
    blocks = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    small, large = (
        np.asarray(blocks.resize(s, Image.Resampling.NEAREST)) for s in [(192, 144), (768, 576)]
    )
    np.testing.assert_allclose(image_features(large), image_features(small), atol=0.005)


def test_each_rule_names_what_differs() -> None:
    rng = np.random.default_rng(1)
    # Cached at 64x48, from 2048x1024 sources.
    images = [
        np.clip(rng.normal(120 + 2 * i, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
        for i in range(20)
    ]
    share = {name: 0.01 for name in cityscapes19().names}
    profile = build_profile(images, [(2048, 1024)] * 20, share, [0.8, 0.85, 0.9])
    assert profile.distance_limit > 0
    again = DomainProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert np.allclose(again.features, profile.features, atol=1e-5) and again.sizes == {
        "2048x1024": 20
    }
    inside = images[3]  # looks like a training image, but 4:3 and small
    mask = np.arange(48 * 64).reshape(48, 64) % 19
    found = check(profile, inside, mask.astype(np.uint8), np.full((48, 64), 0.6), cityscapes19())
    assert found.warnings == [
        "aspect 4:3 against 2:1",
        "smaller than any training image (64x48 against 2048x1024)",
        "mean confidence 0.60 against 0.85 on val (lower than every val image)",
    ]
    assert found.scores["mean_confidence"] == pytest.approx(0.6)
    barely_below = check(profile, inside, mask, np.full((48, 64), 0.795), cityscapes19())
    assert not any("confidence" in w for w in barely_below.warnings)  # within the margin
    dark = (images[0] // 4)[:, :, :]
    road = np.zeros(dark.shape[:2], np.uint8)  # all road: 100% against 1%
    found = check(profile, dark, road, None, cityscapes19())
    assert found.warnings[0].startswith("darker than any training image")
    assert found.warnings[-1] == "road covers 100% of it against 1.0% of training pixels"
    assert found.outside and found.scores["appearance_distance"] > 1


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("profiled")
    overrides = tiny_overrides(synthetic_root, folder / "cache")
    return train(load_config(None, overrides), folder / "run", progress=False)


def test_training_ends_with_a_profile_in_every_form_of_the_model(trained: TrainResult) -> None:
    for name in ("final.pt", "best.pt"):
        domain = load_checkpoint(trained.run_dir / name)["domain"]
        assert len(domain["train_features"]) == 6 and domain["sizes"] == {"128x64": 6}
        assert len(domain["val_confidence"]) == 3  # one per val scene
        assert all(0 < c <= 1 for c in domain["val_confidence"])
        assert sum(domain["class_share"].values()) == pytest.approx(1.0)
    exported = json.loads((trained.run_dir / "model.json").read_text())["domain"]
    assert exported == load_checkpoint(trained.run_dir / "final.pt")["domain"]


def test_predict_warns_about_an_input_unlike_the_training_data(
    trained: TrainResult, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scene = sorted((synthetic_root / "leftImg8bit" / "train").rglob("*.png"))[0]
    image = np.asarray(Image.open(scene).convert("RGB"))
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "scene.png")
    Image.fromarray(image // 5).save(tmp_path / "in" / "night.png")
    predictor = Predictor.from_checkpoint(trained.run_dir, "cpu")
    report = predict_paths([tmp_path / "in"], tmp_path / "out", predictor, progress=False)
    assert report.checked and tmp_path / "in" / "night.png" in report.warned
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert any("night.png: darker than any training image" in line for line in lines)
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())["inputs"]
    by_name = {Path(e["source"]).name: e for e in entries}
    assert by_name["night.png"]["domain"]["outside"]
    # A training scene looks like the training data (a 6-step model's confidence and classes
    # are noise, so only its appearance is asserted).
    assert by_name["scene.png"]["domain"]["appearance_distance"] < 1
    assert not any("training image" in w for w in by_name["scene.png"]["domain"]["warnings"])
    assert 0 < by_name["scene.png"]["domain"]["mean_confidence"] <= 1
    quiet = predict_paths(
        [tmp_path / "in"], tmp_path / "off", predictor, progress=False, domain_check=False
    )
    assert not quiet.checked and not quiet.warned
