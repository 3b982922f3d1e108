"""Typed configuration: dataclasses, YAML files and dotted command-line overrides.

A run is configured by one YAML file (see ``configs/``) whose sections mirror the dataclasses below,
plus overrides such as ``train.base_lr=3e-4``. Every key is checked against the dataclasses before
any heavy work: an unknown key gets a did-you-mean, a wrong type or impossible value a one-line
``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from unetseg.core.classes import load_class_set
from unetseg.core.encoders import ENCODERS, FEATURE_LEVELS


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the key or file."""


# The allowed values of each choice, written once: the dataclasses below are typed with these,
# and loading checks every value against its type.
DataKind = Literal["synthetic", "cityscapes", "folders"]
MaskType = Literal["labelIds", "color"]  # Cityscapes: *_gtFine_labelIds.png or *_color.png
Sampling = Literal["uniform", "rare_class"]
Encoder = Literal[tuple(ENCODERS)]  # type: ignore[valid-type]  # names from the registry
Upsampling = Literal["transpose", "bilinear"]
InputNorm = Literal["none", "per_image"]
ClassWeighting = Literal["none", "median_frequency", "sqrt_median_frequency"]
Decay = Literal["original", "poly", "cosine"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Switch = Literal["auto", "on", "off"]


@dataclass
class DataConfig:
    """Where the images and masks come from and how they are fed to the model."""

    kind: DataKind = "synthetic"
    root: str = "data/synthetic"
    class_set: str = "cityscapes19"  # cityscapes19 | cityscapes24 | camvid11 | path to a YAML table
    size: list[int] = field(default_factory=lambda: [512, 256])  # training width, height
    train_split: str = "train"
    val_split: str = "val"
    train_filter: list[str] = field(default_factory=list)  # file-name globs kept in train
    val_filter: list[str] = field(default_factory=list)  # file-name globs kept in val
    mask_type: MaskType = "labelIds"
    mask_dir_suffix: str = "annot"  # folders: masks of ROOT/<split> lie in ROOT/<split><suffix>
    drop_rare_classes: bool = False  # cityscapes24: drop images with rail track, tunnel, ...
    cache_dir: str = ""  # empty: ~/.cache/unetseg (or $UNETSEG_CACHE)
    num_workers: int = -1  # loader worker processes; -1: chosen for the device
    # uniform: every training image once per epoch; rare_class: images drawn so that rare classes
    # come up more often (rare-class sampling, DAFormer), sharper at lower temperature
    sampling: Sampling = "uniform"
    rare_class_temperature: float = 0.01
    # input normalisation of [0, 1] RGB, applied inside the model; empty: the statistics the
    # encoder was trained with (ImageNet's; EfficientNet-Lite's own 127/128 for those encoders)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    synthetic_train: int = 300  # scenes written when kind=synthetic and root is empty
    synthetic_val: int = 40
    synthetic_seed: int = 0


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied identically to image and mask (never to val)."""

    enabled: bool = True
    hflip: bool = True
    scale_min: float = 0.75
    scale_max: float = 1.5
    # [width, height]: train on random crops of this size out of the data.size images (which are
    # still what the model sees at evaluation and inference); empty: the whole image
    crop: list[int] = field(default_factory=list)
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    white_balance: float = 0.0  # per-channel gain spread: colour casts (dusk, tinted light)
    # Appearance of other cameras and light: gamma drawn log-uniformly in [1/(1+g), 1+g] (dark
    # scenes under a bright sky), Gaussian blur of sigma up to this many pixels (focus, motion,
    # compression), Gaussian noise of std up to this share of full scale (sensor noise in the dark).
    gamma: float = 0.0
    blur: float = 0.0
    noise: float = 0.0


@dataclass
class ModelConfig:
    """The U-Net's shape."""

    width: int = 64
    dropout: float = 0.1
    upsampling: Upsampling = "transpose"
    # plain (UNet) | residual (ResUNet: stride-2 stem, residual stages) | efficientnet_lite0,
    # efficientnet_lite1, efficientnet_lite2 (LiteUNet: inputs multiples of 32)
    encoder: Encoder = "plain"
    # EfficientNet-Lite: start the encoder from its ImageNet weights (the unetseg[pretrained] extra)
    pretrained: bool = True
    # EfficientNet-Lite: keep the encoder's batch-norm statistics fixed while training
    freeze_encoder_bn: bool = False
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # residual blocks per stage
    # residual encoder only: a decoder level at the input's resolution (width // 2 channels) adds
    # a correction to the logits upsampled x2, for structures a pixel or two wide
    full_resolution: bool = False
    input_norm: InputNorm = "none"  # per_image: standardise each image by its own mean/std


@dataclass
class LossConfig:
    """Cross-entropy + soft Dice."""

    ce_weight: float = 1.0
    dice_weight: float = 1.0
    class_weights: list[float] = field(default_factory=list)  # explicit weights, one per class
    # from the train masks; sqrt_median_frequency: the milder square root
    class_weighting: ClassWeighting = "none"
    # < 1: the cross-entropy averages over only this share of each image's pixels, the hardest
    # (highest loss) ones; the rest, mostly large easy regions, give no cross-entropy gradient
    ce_hard_fraction: float = 1.0


@dataclass
class TrainConfig:
    """The original recipe's knobs by their names, plus precision, logging and checkpoints."""

    batch_size: int = 12
    training_iterations: int = 1250  # optimizer steps
    accum_steps: int = 4  # micro-batches per optimizer step
    eval_interval: int = 10
    eval_iterations: int = 5  # val batches per periodic evaluation; 0 = the whole val split
    save_model_interval: int = 100
    base_lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_factor: float = 5e8
    decay: Decay = "original"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    channels_last: Switch = "auto"
    compile: bool = False
    sync_batchnorm: bool = False
    snapshot_interval: int = 100
    snapshot_images: int = 4
    log_interval: int = 1
    keep_checkpoints: int = 3
    max_nonfinite_steps: int = 5
    time_budget_min: float = 0.0  # > 0: stop after this many wall-clock minutes, decay over them
    ema_decay: float = 0.0  # > 0: evaluate and ship an exponential moving average of the weights
    average_from: float = 0.0  # > 0: from this share of the run on, ship the mean of the weights
    # pretrained encoders: their learning rate is base_lr times this (the schedule applies to both)
    encoder_lr_scale: float = 1.0
    # pretrained encoders: fixed (no gradient, no backward pass) in the first steps, while the
    # decoder learns to read them
    freeze_encoder_steps: int = 0
    # pretrained encoders: the first this many of the encoder's five feature levels (its stem and
    # blocks at 1/2, 1/4, ... of the input) keep their ImageNet weights for the whole run, out of
    # the backward pass; their batch-norm statistics still follow the data (unless
    # model.freeze_encoder_bn)
    freeze_encoder_levels: int = 0


@dataclass
class Config:
    """A whole run's configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the configuration (YAML/JSON-ready)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides; validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    given: dict[str, Any] = {}
    for item in overrides or []:
        _apply_override(given, item)
    from_dict(given, source="command line")  # a typo in an override is not the file's
    for item in overrides or []:
        _apply_override(raw, item)
    config = from_dict(raw, source=str(path) if path else "config")
    validate(config)
    return config


def with_overrides(config: Config, overrides: list[str]) -> Config:
    """A copy of ``config`` with ``section.key=value`` overrides applied; validated."""
    raw = config.to_dict()
    for item in overrides:
        _apply_override(raw, item)
    changed = from_dict(raw)
    validate(changed)
    return changed


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        if name not in hints:
            raise ConfigError(f"{source}: unknown section {name!r}{_did_you_mean(name, hints)}")
        sections[name] = _build_section(hints[name], value, f"{source}: {name}")
    return Config(**sections)


def _build_section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}.{key}: unknown key{_did_you_mean(key, hints)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, expected: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(expected)
    if origin is Literal:
        if isinstance(value, bool) and "on" in get_args(expected):
            value = "on" if value else "off"  # YAML 1.1 reads on/off/yes/no as booleans
        try:
            check_choice(value, expected, where)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return value
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if item_type is int and isinstance(value, str) and re.fullmatch(r"\d+x\d+", value):
            value = [int(side) for side in value.split("x")]  # sizes as the CLI writes them
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e8 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")


def check_choice(value: Any, choices: Any, name: str) -> None:
    """ValueError naming ``name`` unless ``value`` is one of the ``Literal`` type ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")


def check_scales(scales: Sequence[float], sliding_window: bool = False) -> None:
    """ConfigError unless the test-time scales lie in (0, 4], and are [1] with sliding windows
    (which tile the image at its own resolution)."""
    if not scales or any(not 0 < s <= 4 for s in scales):
        raise ConfigError(f"test-time scales must lie in (0, 4], got {list(scales)}")
    if sliding_window and list(scales) != [1.0]:
        raise ConfigError(
            "multi-scale test-time augmentation cannot be combined with sliding windows"
        )


def check_test_time_augmentation(tta: bool, scales: Sequence[float], full_res: bool) -> None:
    """ConfigError for test-time augmentation without full-resolution scoring, whose predict
    path is where it applies."""
    check_scales(scales)
    if (tta or list(scales) != [1.0]) and not full_res:
        raise ConfigError(
            "test-time augmentation (flip, scales) applies to full-resolution scoring only "
            "(evaluate --full-res)"
        )


def check_architecture(
    encoder: str,
    width: int,
    dropout: float,
    blocks: Sequence[int] = (2, 2, 2, 2),
    full_resolution: bool = False,
    prefix: str = "",
) -> None:
    """ConfigError for model arguments no U-Net can be built with (``prefix`` names the section)."""
    if width < 1:
        raise ConfigError(f"{prefix}width: must be at least 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{prefix}dropout: must be in [0, 1), got {dropout}")
    if len(blocks) != 4 or min(blocks) < 1:
        raise ConfigError(f"{prefix}blocks: need four counts of at least 1, got {list(blocks)}")
    if full_resolution and encoder != "residual":
        raise ConfigError(
            f"{prefix}full_resolution: only for the residual encoder "
            "(the plain U-Net already decodes to full resolution)"
        )
    if full_resolution and width < 2:
        raise ConfigError(
            f"{prefix}full_resolution: needs a width of at least 2 (its level has width // 2 "
            f"channels), got {width}"
        )


def check_hard_fraction(fraction: float, prefix: str = "") -> None:
    """ConfigError unless the hard-pixel share of the cross-entropy lies in (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{prefix}ce_hard_fraction: must be in (0, 1], got {fraction}")


def validate(config: Config) -> None:
    """Reject impossible values with a message naming the key."""
    for section in dataclasses.fields(config):
        for key, value in dataclasses.asdict(getattr(config, section.name)).items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{section.name}.{key}: {value} is not a finite number")
    _validate_data(config)
    _validate_augment(config)
    _validate_model(config)
    _validate_loss(config)
    _validate_train(config.train)


def _at_least(minimum: float, values: dict[str, float]) -> None:
    for key, value in values.items():
        if value < minimum:
            what = "must be at least 1" if minimum == 1 else "must not be negative"
            raise ConfigError(f"{key}: {what}, got {value}")


def _validate_data(config: Config) -> None:
    d = config.data
    factor = ENCODERS[config.model.encoder].size_factor
    if len(d.size) != 2 or any(s <= 0 or s % factor for s in d.size):
        raise ConfigError(
            f"data.size: {d.size} must be [width, height], both multiples of {factor} "
            f"(model.encoder {config.model.encoder})"
        )
    if (d.mean or d.std) and (len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0):
        raise ConfigError("data.mean/data.std: need three values each, std positive")
    _at_least(1, {"data.synthetic_train": d.synthetic_train, "data.synthetic_val": d.synthetic_val})
    if d.rare_class_temperature <= 0:
        raise ConfigError(
            f"data.rare_class_temperature: must be positive, got {d.rare_class_temperature}"
        )


def _validate_augment(config: Config) -> None:
    a, size = config.augment, config.data.size
    factor = ENCODERS[config.model.encoder].size_factor
    if not 0 < a.scale_min <= a.scale_max:
        raise ConfigError(f"augment.scale_min/scale_max: need 0 < min <= max, got {a.scale_min}")
    spreads = {
        "brightness": a.brightness,
        "contrast": a.contrast,
        "saturation": a.saturation,
        "white_balance": a.white_balance,
    }
    for key, spread in spreads.items():
        if not 0.0 <= spread <= 1.0:  # factors are drawn from [1 - spread, 1 + spread]
            raise ConfigError(f"augment.{key}: must be in [0, 1], got {spread}")
    _at_least(0, {f"augment.{k}": getattr(a, k) for k in ("gamma", "blur", "noise")})
    if a.crop and (
        len(a.crop) != 2 or any(c <= 0 or c % factor or c > s for c, s in zip(a.crop, size))
    ):
        raise ConfigError(
            f"augment.crop: {a.crop} must be [width, height], multiples of {factor} within "
            "data.size"
        )


def _validate_model(config: Config) -> None:
    """The architecture, and the fine-tuning knobs, which need a pretrained encoder."""
    m, t = config.model, config.train
    check_architecture(m.encoder, m.width, m.dropout, m.blocks, m.full_resolution, prefix="model.")
    pretrained = m.pretrained and ENCODERS[m.encoder].pretrainable
    tuned = {
        "train.encoder_lr_scale": t.encoder_lr_scale != 1.0,
        "train.freeze_encoder_steps": t.freeze_encoder_steps > 0,
        "train.freeze_encoder_levels": t.freeze_encoder_levels > 0,
        "model.freeze_encoder_bn": m.freeze_encoder_bn,  # random statistics would stay random
    }
    for key, used in tuned.items():
        if used and not pretrained:
            raise ConfigError(
                f"{key}: only for a pretrained encoder (model.encoder efficientnet_lite0/1/2 "
                f"with model.pretrained true), not {m.encoder}"
            )


def _validate_loss(config: Config) -> None:
    loss = config.loss
    _at_least(0, {"loss.ce_weight": loss.ce_weight, "loss.dice_weight": loss.dice_weight})
    if loss.ce_weight + loss.dice_weight <= 0:
        raise ConfigError("loss.ce_weight/dice_weight: at least one must be positive")
    check_hard_fraction(loss.ce_hard_fraction, prefix="loss.")
    try:
        class_set = load_class_set(config.data.class_set)
    except ValueError as error:
        raise ConfigError(f"data.class_set: {error}") from None
    weights = loss.class_weights
    if weights and (len(weights) != class_set.num_classes or min(weights) < 0 or sum(weights) == 0):
        raise ConfigError(
            f"loss.class_weights: need {class_set.num_classes} non-negative values, not all 0 "
            f"(one per class of {class_set.name}), got {len(weights)}"
        )


def _validate_train(t: TrainConfig) -> None:
    counts = (
        "batch_size",
        "training_iterations",
        "accum_steps",
        "eval_interval",
        "save_model_interval",
        "snapshot_interval",
        "log_interval",
        "keep_checkpoints",
        "max_nonfinite_steps",
    )
    _at_least(1, {f"train.{key}": getattr(t, key) for key in counts})
    amounts = (
        "eval_iterations",
        "warmup_steps",
        "weight_decay",
        "grad_clip",
        "min_lr",
        "snapshot_images",
        "time_budget_min",
        "encoder_lr_scale",
        "freeze_encoder_steps",
    )
    _at_least(0, {f"train.{key}": getattr(t, key) for key in amounts})
    if not 0 <= t.freeze_encoder_levels <= FEATURE_LEVELS:
        raise ConfigError(
            f"train.freeze_encoder_levels: must be 0 to {FEATURE_LEVELS}, got "
            f"{t.freeze_encoder_levels}"
        )
    if t.base_lr <= 0:
        raise ConfigError(f"train.base_lr: must be positive, got {t.base_lr}")
    if t.min_lr > t.base_lr:
        raise ConfigError(f"train.min_lr: {t.min_lr} is above train.base_lr {t.base_lr}")
    if t.decay_factor <= 0:
        raise ConfigError(f"train.decay_factor: must be positive, got {t.decay_factor}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {t.ema_decay}")
    if not 0.0 <= t.average_from < 1.0:
        raise ConfigError(f"train.average_from: must be in [0, 1), got {t.average_from}")


def changed_settings(given: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """``section.key=value`` for each value of ``given`` (a config as a dict) that differs from
    ``reference`` (another one, or the defaults)."""
    return [
        f"{section}.{key}={value}"
        for section, values in given.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if (reference.get(section) or {}).get(key) != value
    ]


def normalisation(config: Config) -> tuple[list[float], list[float]]:
    """The mean and std the model normalises its [0, 1] inputs with: ``data.mean``/``data.std``,
    else those the encoder was trained with."""
    spec = ENCODERS[config.model.encoder]
    return (config.data.mean or list(spec.mean), config.data.std or list(spec.std))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(error, "problem", None) or "could not parse"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data or {}


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the nested dict."""
    dotted, sep, text = item.partition("=")
    parts = dotted.strip().split(".")
    if not sep and item.endswith((".yaml", ".yml")):
        raise ConfigError(f"{item!r}: a configuration file is given as --config {item}")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.base_lr=3e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: cannot parse the value") from None
    if raw.get(parts[0]) is None:  # absent, or an empty section in the YAML
        raw[parts[0]] = {}
    section = raw[parts[0]]
    if not isinstance(section, dict):
        raise ConfigError(f"override {item!r}: section {parts[0]!r} is not a mapping")
    section[parts[1]] = value


def _did_you_mean(name: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_yaml(config: Config) -> str:
    """The resolved configuration as YAML, sections and keys in their declared order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: Path) -> None:
    """Write the resolved configuration as YAML."""
    path.write_text(config_yaml(config), encoding="utf-8")
