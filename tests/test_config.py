from pathlib import Path

import pytest
import torch

from unetseg.core.config import ConfigError, load_config
from unetseg.core.model import build_model

SHIPPED_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 3\n  decay_factor: 5e8\nmodel:\n  width: 8\n")
    config = load_config(path, ["train.base_lr=3e-4", "data.size=[64,32]"])
    assert config.train.batch_size == 3
    assert config.train.decay_factor == 5e8
    assert config.model.width == 8
    assert config.train.base_lr == 3e-4
    assert config.data.size == [64, 32]
    assert config.train.accum_steps == 4  # default
    assert load_config(None, ["train.channels_last=off"]).train.channels_last == "off"
    assert load_config(None, ["data.size=256x128"]).data.size == [256, 128]  # as synth --size


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_sise=4"], r"train.batch_sise: unknown key \(did you mean 'batch_size'\?\)"),
        (["trian.batch_size=4"], r"unknown section 'trian' \(did you mean 'train'\?\)"),
        (["train.batch_size=four"], r"train.batch_size: expected int, got 'four'"),
        (["train.batch_size=0"], r"train.batch_size: must be at least 1"),
        (["train.accum_steps=0"], r"train.accum_steps: must be at least 1"),
        (["data.size=[100,64]"], r"data.size: .*multiples of 16"),
        (["train.min_lr=1e-2"], r"train.min_lr: 0.01 is above train.base_lr"),
        (["train.precision=fp8"], r"train.precision: 'fp8' is not one of"),
        (["model.encoder=resnet"], r"model.encoder: 'resnet' is not one of plain, residual"),
        (["model.blocks=[2,2,2]"], r"model.blocks: need four counts of at least 1"),
        (["model.full_resolution=true"], r"model.full_resolution: only for the residual encoder"),
        (
            ["model.encoder=residual", "model.full_resolution=true", "model.width=1"],
            r"model.full_resolution: needs a width of at least 2 .*got 1",
        ),
        (["model.input_norm=batch"], r"model.input_norm: 'batch' is not one of"),
        (["train.average_from=1.0"], r"train.average_from: must be in \[0, 1\), got 1.0"),
        (["augment.brightness=1.5"], r"augment.brightness: must be in \[0, 1\], got 1.5"),
        (["augment.white_balance=-0.1"], r"augment.white_balance: must be in \[0, 1\]"),
        (["augment.blur=-1"], r"augment.blur: must not be negative"),
        (["augment.crop=[64,48,1]"], r"augment.crop: .*multiples of 16 within data.size"),
        (["augment.crop=[600,48]"], r"augment.crop: .*multiples of 16 within data.size"),
        (["augment.crop=[64,40]"], r"augment.crop: .*multiples of 16 within data.size"),
        (["loss.ce_hard_fraction=0"], r"loss.ce_hard_fraction: must be in \(0, 1\], got 0.0"),
        (["data.class_set=nope"], r"data.class_set: .*'nope'"),
        (["data.sampling=balanced"], r"data.sampling: 'balanced' is not one of uniform, rare_"),
        (["data.rare_class_temperature=0"], r"data.rare_class_temperature: must be positive"),
        (["train.batch_size"], r"expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: malformed YAML \(line \d+\): expected"):
        load_config(write(tmp_path, "train:\n  batch_size: [1, 2\n"))
    with pytest.raises(ConfigError, match="nothere.yaml: config file not found"):
        load_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_build_a_model_of_their_input_size(path):
    config = load_config(path, ["model.width=4"])  # the recipe's architecture, but tiny
    model = build_model(config, 5).eval()
    width, height = config.data.size
    with torch.no_grad():
        assert model(torch.rand(1, 3, height, width)).shape == (1, 5, height, width)
