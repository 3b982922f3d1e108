"""Tests for inference on image files: sizes, formats, outputs, TTA and sliding windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unetseg.commands.predict import predict_paths
from unetseg.core.checkpoint import FORMAT, CheckpointError, save_checkpoint
from unetseg.core.classes import ClassSet, camvid11, cityscapes19
from unetseg.core.config import from_dict
from unetseg.core.model import build_model
from unetseg.data.transforms import to_model_input
from unetseg.engine.inference import (
    Predictor,
    _upsample,
    inference_size,
    predict_image,
)

TRAIN_SIZE = (64, 32)  # (W, H)
CITYSCAPES_LABEL_IDS = set(cityscapes19().label_ids or ())


def make_checkpoint(path: Path, class_set: ClassSet, constant_class: int | None = None) -> Path:
    """A width-4 checkpoint with random weights (or a head that always predicts one class)."""
    torch.manual_seed(0)
    config = from_dict({"model": {"width": 4}, "data": {"size": list(TRAIN_SIZE)}})
    model = build_model(config, class_set.num_classes)
    if constant_class is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
            model.head.bias[constant_class] = 5.0
    state = {
        "format": FORMAT,
        "step": 0,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "class_set": class_set.to_dict(),
    }
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "final.pt", cityscapes19())
    return Predictor.from_checkpoint(path, device="cpu")


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours (blocks), so that predictions are not pure noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def outputs_of(folder: Path, stem: str, ids: str = "labelIds") -> tuple[Path, Path, Path]:
    return (
        folder / f"{stem}_color.png",
        folder / f"{stem}_overlay.jpg",
        folder / f"{stem}_{ids}.png",
    )


def check_outputs(folder: Path, stem: str, size: tuple[int, int]) -> None:
    """Colour, overlay (JPEG) and label-id masks exist at ``size`` (W, H) with valid ids."""
    color, blend, ids = outputs_of(folder, stem)
    with Image.open(color) as image:
        assert (image.format, image.size) == ("PNG", size)
    with Image.open(blend) as image:
        assert (image.format, image.size) == ("JPEG", size)
    with Image.open(ids) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", size)
        assert set(np.unique(np.asarray(image)).tolist()) <= CITYSCAPES_LABEL_IDS


@pytest.mark.parametrize(
    ("image_size", "train_size", "expected"),
    [
        ((2048, 1024), (512, 256), (512, 256)),  # same aspect: exactly the training size
        ((512, 256), (512, 256), (512, 256)),
        ((1920, 1080), (512, 256), (480, 272)),  # 482.7 x 271.5 rounded
        ((1080, 1920), (512, 256), (272, 480)),  # portrait
        ((100, 100), (512, 256), (368, 368)),  # upscaled: side sqrt(131072) = 362.0
        ((4000, 10), (64, 32), (912, 16)),  # 905.1 x 2.3: the short side at least 16
    ],
)
def test_inference_size(
    image_size: tuple[int, int], train_size: tuple[int, int], expected: tuple[int, int]
) -> None:
    width, height = inference_size(*image_size, train_size, 16)
    assert (width, height) == expected
    assert width % 16 == 0 and height % 16 == 0
    if min(expected) > 16:
        assert abs(width * height / (train_size[0] * train_size[1]) - 1) < 0.1


def test_predicts_mixed_folder_at_original_sizes(predictor: Predictor, tmp_path: Path) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    Image.fromarray(random_image(1080, 1920)).save(inputs / "big.jpg", quality=85)
    rgba = np.dstack([random_image(177, 300), np.full((177, 300), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(inputs / "sub" / "rgba.png")
    Image.fromarray(random_image(40, 50)[..., 0], "L").save(inputs / "sub" / "gray.png")
    corrupt = inputs / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))

    report = predict_paths([inputs], output, predictor, batch_size=2, progress=False)

    check_outputs(output, "big", (1920, 1080))
    check_outputs(output / "sub", "rgba", (300, 177))
    check_outputs(output / "sub", "gray", (50, 40))
    assert report.written == [
        output / "big_color.png",
        output / "sub" / "gray_color.png",
        output / "sub" / "rgba_color.png",
    ]
    assert len(report.failed) == 1
    assert report.failed[0][0] == corrupt and "corrupt.png" in report.failed[0][1]
    assert not list(output.rglob(".*"))  # no temporary files left


def test_same_names_in_subfolders_do_not_collide(predictor: Predictor, tmp_path: Path) -> None:
    for sub, seed in (("a", 1), ("b", 2)):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(random_image(32, 48, seed)).save(tmp_path / "in" / sub / "x.png")
    report = predict_paths([tmp_path / "in"], tmp_path / "out", predictor, progress=False)
    assert not report.failed
    for sub in ("a", "b"):
        check_outputs(tmp_path / "out" / sub, "x", (48, 32))


def test_same_stem_with_two_extensions_fails_the_second(
    predictor: Predictor, tmp_path: Path
) -> None:
    Image.fromarray(random_image(32, 48)).save(tmp_path / "x.png")
    Image.fromarray(random_image(32, 48)).save(tmp_path / "x.jpg")
    report = predict_paths([tmp_path], tmp_path / "out", predictor, progress=False)
    assert len(report.written) == 1
    assert [source.name for source, _ in report.failed] == ["x.png"]
    assert "already claimed by" in report.failed[0][1]


def test_exif_orientation_gives_the_rotated_size(predictor: Predictor, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    Image.fromarray(random_image(30, 70)).save(tmp_path / "photo.jpg", exif=exif)
    report = predict_paths([tmp_path / "photo.jpg"], tmp_path / "out", predictor, progress=False)
    assert not report.failed
    check_outputs(tmp_path / "out", "photo", (30, 70))


def test_16_bit_grayscale(predictor: Predictor, tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")
    with Image.open(tmp_path / "depth.png") as image:
        assert image.mode == "I;16"
    report = predict_paths([tmp_path / "depth.png"], tmp_path / "out", predictor, progress=False)
    assert not report.failed
    check_outputs(tmp_path / "out", "depth", (60, 40))


def test_never_overwrites_an_input(predictor: Predictor, tmp_path: Path) -> None:
    Image.fromarray(random_image(32, 48, 1)).save(tmp_path / "a.png")
    Image.fromarray(random_image(32, 48, 2)).save(tmp_path / "a_color.png")
    before = (tmp_path / "a_color.png").read_bytes()

    report = predict_paths([tmp_path], tmp_path, predictor, progress=False)

    assert (tmp_path / "a_color.png").read_bytes() == before
    assert [source.name for source, _ in report.failed] == ["a.png"]
    assert "would overwrite input" in report.failed[0][1]
    assert not (tmp_path / "a_overlay.jpg").exists()
    assert report.written == [tmp_path / "a_color_color.png"]


def test_non_cityscapes_class_set_writes_train_ids(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "camvid.pt", camvid11())
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    Image.fromarray(random_image(32, 48)).save(tmp_path / "road.png")
    report = predict_paths([tmp_path / "road.png"], tmp_path / "out", predictor, progress=False)
    assert not report.failed
    assert not (tmp_path / "out" / "road_labelIds.png").exists()
    with Image.open(tmp_path / "out" / "road_classIds.png") as image:
        assert (image.mode, image.size) == ("L", (48, 32))
        assert np.asarray(image).max() < camvid11().num_classes


@pytest.mark.parametrize("size", [(70, 100), (40, 200), (10, 20), (5, 5)])
@pytest.mark.parametrize(("tta", "sliding"), [(True, False), (False, True), (True, True)])
def test_tta_and_sliding_window_sizes_and_values(
    predictor: Predictor, size: tuple[int, int], tta: bool, sliding: bool
) -> None:
    mask = predict_image(predictor, random_image(*size), tta=tta, sliding_window=sliding)
    assert mask.shape == size and mask.dtype == np.uint8
    assert mask.max() < predictor.class_set.num_classes


def test_sliding_window_on_one_window_equals_the_plain_prediction(predictor: Predictor) -> None:
    image = random_image(TRAIN_SIZE[1], TRAIN_SIZE[0])
    plain = predict_image(predictor, image)
    assert np.array_equal(predict_image(predictor, image, sliding_window=True), plain)


def test_tta_of_a_constant_model_is_that_constant(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", cityscapes19(), constant_class=7)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    image = random_image(50, 90)
    plain = predict_image(predictor, image)
    assert (plain == 7).all()
    assert np.array_equal(predict_image(predictor, image, tta=True), plain)
    assert np.array_equal(predict_image(predictor, image, tta=True, sliding_window=True), plain)


def test_tta_prediction_is_mirror_symmetric(predictor: Predictor) -> None:
    image = random_image(64, 128, seed=3)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    with_tta = predict_image(predictor, image, tta=True)
    assert (predict_image(predictor, mirrored, tta=True)[:, ::-1] == with_tta).mean() > 0.995


def test_upsampling_matches_bilinear_interpolation() -> None:
    scores = torch.randn(5, 17, 23, generator=torch.Generator().manual_seed(0)).softmax(0)
    reference = F.interpolate(scores[None], size=(300, 410), mode="bilinear", align_corners=False)
    mask, confidence = _upsample(scores, 300, 410, confidence=True)
    assert mask.shape == (300, 410)
    assert (mask == reference[0].argmax(0).numpy()).mean() > 0.999
    assert np.allclose(confidence, reference[0].max(0).values.numpy(), atol=1e-5)


def test_results_inside_the_input_folder_are_not_inputs(
    predictor: Predictor, tmp_path: Path
) -> None:
    Image.fromarray(random_image(32, 48)).save(tmp_path / "a.png")
    for _ in range(2):  # the second run must not segment the first run's results
        report = predict_paths([tmp_path], tmp_path / "pred", predictor, progress=False)
        assert report.written == [tmp_path / "pred" / "a_color.png"] and not report.failed
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "a_color.png",
        "a_labelIds.png",
        "a_overlay.jpg",
        "classes.json",  # what the ids and colours mean
        "legend.png",
        "predictions.json",  # each input's outputs (no domain check: the model has no profile)
    ]
    legend = json.loads((tmp_path / "pred" / "classes.json").read_text())
    assert legend["classes"][0] == {"id": 7, "name": "road", "color": [128, 64, 128]}


def scale_dependent_predictor() -> Predictor:
    """A 1x1 "model" over 3 classes whose logits also depend on the input height, so that each
    scale votes differently."""
    mix = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    by_height = torch.tensor([1.5, 0.0, -1.5]).view(1, 3, 1, 1)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25
        return torch.einsum("nchw,kc->nkhw", x, mix) + (x.shape[-2] / 32 - 1) * by_height

    return Predictor(run, camvid11(), TRAIN_SIZE, 16, torch.device("cpu"))


def test_multi_scale_averages_the_softmax_of_each_scale() -> None:
    predictor = scale_dependent_predictor()
    image = random_image(64, 128, seed=5)  # inference size 64x32 (the training area)
    x = to_model_input(torch.tensor(image)[None])
    probabilities = torch.zeros(1, 3, 32, 64)
    for side in ((16, 32), (32, 64), (64, 128)):  # scales 0.5, 1 and 2, back to 32x64
        resized = F.interpolate(x, size=side, mode="bilinear", antialias=True)
        scaled = predictor.logits(resized).softmax(1)
        probabilities += F.interpolate(scaled, size=(32, 64), mode="bilinear")
    reference = F.interpolate(probabilities, size=(64, 128), mode="bilinear").argmax(1)[0]
    mask = torch.from_numpy(predict_image(predictor, image, scales=(0.5, 1.0, 2.0))).long()
    # PIL's resize of the uint8 image differs slightly from resizing the float tensor.
    assert (mask == reference).float().mean() > 0.97
    single = torch.from_numpy(predict_image(predictor, image)).long()
    assert (single != reference).float().mean() > 0.05  # the scales did change the answer


def test_multi_scale_of_a_constant_model_is_that_constant(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", cityscapes19(), constant_class=3)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    mask = predict_image(predictor, random_image(50, 90), tta=True, scales=(0.75, 1.0, 1.25))
    assert (mask == 3).all()


@pytest.mark.parametrize(
    ("scales", "sliding", "message"),
    [((), False, "must lie in"), ((0.0,), False, "must lie in"), ((0.5, 1.0), True, "sliding")],
)
def test_bad_test_time_scales_are_refused(
    predictor: Predictor, scales: tuple[float, ...], sliding: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        predict_image(predictor, random_image(32, 64), sliding_window=sliding, scales=scales)


def test_checkpoints_from_before_models_normalised_their_inputs_still_load(tmp_path: Path) -> None:
    """Such weights lack the input statistics, which then come from the run's configuration (its
    explicit data.mean/data.std, here not the defaults): the same predictions as with them."""
    statistics = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}
    config = from_dict({"model": {"width": 4}, "data": {"size": list(TRAIN_SIZE), **statistics}})
    torch.manual_seed(0)
    model = build_model(config, camvid11().num_classes)
    state = {"format": FORMAT, "step": 0, "model": model.state_dict(), "config": config.to_dict()}
    state["class_set"] = camvid11().to_dict()
    save_checkpoint(state, tmp_path / "current.pt")
    for key in ("input_norm.mean", "input_norm.std", "temperature"):
        del state["model"][key]
    save_checkpoint(state, tmp_path / "old.pt")
    state["config"] = from_dict(
        {"model": {"width": 4}, "data": {"size": list(TRAIN_SIZE)}}
    ).to_dict()
    save_checkpoint(state, tmp_path / "old_defaults.pt")
    batch = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    logits = [
        Predictor.from_checkpoint(tmp_path / name, device="cpu").logits(batch)
        for name in ("current.pt", "old.pt", "old_defaults.pt")
    ]
    assert torch.equal(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])  # so the statistics did come from the config


def test_predict_image_takes_paths_pil_images_and_float_or_grey_arrays(
    predictor: Predictor, tmp_path: Path
) -> None:
    rgb = random_image(40, 72)
    expected = predict_image(predictor, rgb)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for image in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(rgb), rgb / 255.0):
        assert np.array_equal(predict_image(predictor, image), expected), type(image)
    grey = rgb[..., 0]
    assert np.array_equal(
        predict_image(predictor, grey), predict_image(predictor, np.stack([grey] * 3, -1))
    )
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\]"):
        predict_image(predictor, rgb.astype(np.float32))  # 0..255 floats
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) RGB or \(H, W\) grey"):
        predict_image(predictor, np.zeros((2, 8, 8, 3), np.uint8))


def test_a_run_folder_and_its_safetensors_load_as_the_checkpoint(tmp_path: Path) -> None:
    from unetseg.core.checkpoint import export_safetensors, model_from_checkpoint

    run = tmp_path / "run"
    checkpoint = make_checkpoint(run / "final.pt", camvid11())
    model, config, class_set = model_from_checkpoint(checkpoint)
    export_safetensors(model, config, class_set, tmp_path / "shared" / "model.safetensors")
    image = random_image(48, 80)
    expected = predict_image(Predictor.from_checkpoint(checkpoint, device="cpu"), image)
    for source in (str(run), tmp_path / "shared", tmp_path / "shared" / "model.safetensors"):
        assert np.array_equal(
            predict_image(Predictor.from_checkpoint(source, "cpu"), image), expected
        )
    with pytest.raises(
        CheckpointError, match="a folder without best.pt, final.pt or model.safetensors"
    ):
        Predictor.from_checkpoint(tmp_path, "cpu")
