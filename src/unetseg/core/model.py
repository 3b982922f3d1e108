"""The U-Net of Ronneberger et al. (2015), with batch norm and dropout, over three encoders.

Every model takes RGB images as floats in [0, 1], (N, 3, H, W), normalises them itself with the
statistics its encoder was trained with (so checkpoints and ONNX exports carry them), and returns
(N, num_classes, H, W) logits.

``UNet``: four 2x2 max-pool downsamplings, so both input sides must be multiples of 16. Each block
is (3x3 conv -> BatchNorm -> ReLU) x 2 followed by Dropout2d; padding keeps the output the size of
the input (the paper's valid convolutions would shrink it).

``ResUNet``: the same decoder over a ResNet-style encoder (He et al. 2016, basic blocks) that starts
with a stride-2 stem, so its four levels sit at 1/2 to 1/16 of the input and the logits are
upsampled x2 at the end; with ``full_resolution`` a light decoder level at the input's own
resolution, over a skip from the input, adds a correction to them for structures a pixel or two
wide (poles, signs). With its compute at low resolution it is cheap on a CPU even when deep.

``LiteUNet``: the decoder over an EfficientNet-Lite encoder (``efficientnet_lite``), which can
start from ImageNet weights; its five levels reach 1/32, so input sides must be multiples of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unetseg.core.config import (
    Config,
    InputNorm,
    Upsampling,
    check_architecture,
    check_choice,
    normalisation,
)
from unetseg.core.efficientnet_lite import LiteEncoder, load_imagenet_weights
from unetseg.core.encoders import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) x 2, then Dropout2d."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max pool, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsample x2 (halving the channels), concatenate the skip connection, then a DoubleConv."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        dropout: float,
        upsampling: Upsampling,
    ) -> None:
        super().__init__()
        check_choice(upsampling, Upsampling, "upsampling")
        half = in_channels // 2
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, kernel_size=1),
            )
        self.conv = DoubleConv(half + skip_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def check_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes: must be at least 1, got {num_classes}")


# Buffers of every model that weights saved by an older unetseg lack: loading takes them from
# the model as built (its configuration's statistics, temperature 1).
DEFAULTED_KEYS = ("input_norm.mean", "input_norm.std", "temperature")


class InputNormalisation(nn.Module):
    """[0, 1] images -> ``(x - mean) / std``; with ``per_image`` each channel of each image is
    then standardised by its own mean and std, so that a darker or flatter exposure of the same
    scene gives the same input.

    The statistics are buffers, so that saved weights carry them.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], input_norm: InputNorm = "none"
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"need one mean and one positive std per channel, got {mean}, {std}")
        check_choice(input_norm, InputNorm, "input_norm")
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean).view(shape))
        self.register_buffer("std", torch.tensor(std).view(shape))
        self.per_image = nn.InstanceNorm2d(len(mean)) if input_norm == "per_image" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.per_image(x) if self.per_image is not None else x


class SegmentationNet(nn.Module):
    """What every model here shares: the input's size checked, the image normalised
    (``InputNormalisation``) and the logits divided by ``temperature``, a buffer fitted on
    validation data after training (``engine/calibration.py``) so that the softmax's confidence
    matches accuracy; it is 1 until then, and never changes an arg-max. Subclasses compute the
    logits of the normalised image in ``_logits``. ``domain`` is what the training data looked
    like (``engine/domain.py``), kept beside the weights in every saved form; None until a
    training run ends."""

    size_factor: int
    domain: dict[str, Any] | None = None

    def __init__(
        self, num_classes: int, mean: Sequence[float], std: Sequence[float], input_norm: InputNorm
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        self.input_norm = InputNormalisation(mean, std, input_norm)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1], self.size_factor)
        return self._logits(self.input_norm(x)) / self.temperature

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ResidualBlock(nn.Module):
    """Basic residual block: (3x3 conv -> BN -> ReLU -> 3x3 conv -> BN) + shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # project to the new shape
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def residual_stage(
    in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    """``blocks`` residual blocks, the first one changing shape, then Dropout2d."""
    layers = [ResidualBlock(in_channels, out_channels, stride)]
    layers += [ResidualBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers, nn.Dropout2d(dropout))


class UNet(SegmentationNet):
    """U-Net mapping (N, 3, H, W) images to (N, num_classes, H, W) logits.

    ``width`` is the first level's channel count; 64 gives the original 64-128-256-512 encoder
    with a 1024-channel bottleneck.
    """

    size_factor = 16

    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        dropout: float = 0.1,
        upsampling: Upsampling = "transpose",
        input_norm: InputNorm = "none",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(num_classes, mean, std, input_norm)
        check_architecture("plain", width, dropout)
        w = [width * 2**i for i in range(5)]
        self.inc = DoubleConv(3, w[0], dropout)
        self.downs = nn.ModuleList(Down(w[i], w[i + 1], dropout) for i in range(4))
        self.ups = nn.ModuleList(
            Up(w[i + 1], w[i], w[i], dropout, upsampling) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(image)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        return self.head(decode(self.ups, skips))


def decode(ups: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
    """Climb from the deepest of ``features`` (shallow to deep) through the ``Up`` blocks."""
    x, skips = features[-1], features[:-1]
    for up in ups:
        x = up(x, skips.pop())
    return x


def upsample_to(logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of decoder logits to the image's size."""
    return nn.functional.interpolate(
        logits, size=image.shape[-2:], mode="bilinear", align_corners=False
    )


class ResUNet(SegmentationNet):
    """U-Net with a residual encoder, mapping (N, 3, H, W) images to (N, num_classes, H, W) logits.

    A 3x3 stride-2 stem with ``width`` channels, then four residual stages of ``blocks[i]`` blocks
    with ``width * 2**i`` channels at 1/2, 1/4, 1/8 and 1/16 of the input; the ``UNet`` decoder
    climbs back to 1/2 and the logits are bilinearly upsampled to the input size. With
    ``full_resolution`` a ``FullResolutionRefinement`` adds a correction to them, for thin
    structures.
    """

    size_factor = 16

    def __init__(
        self,
        num_classes: int,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.1,
        upsampling: Upsampling = "transpose",
        input_norm: InputNorm = "none",
        full_resolution: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(num_classes, mean, std, input_norm)
        check_architecture("residual", width, dropout, blocks, full_resolution)
        w = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList(
            residual_stage(w[max(i - 1, 0)], w[i], blocks[i], 1 if i == 0 else 2, dropout)
            for i in range(4)
        )
        self.ups = nn.ModuleList(
            Up(w[i + 1], w[i], w[i], dropout, upsampling) for i in reversed(range(3))
        )
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)
        self.refine: FullResolutionRefinement | None = None
        if full_resolution:
            self.refine = FullResolutionRefinement(3, w[0], num_classes, dropout, upsampling)

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        features = [self.stem(image)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        decoded = decode(self.ups, features[1:])
        logits = upsample_to(self.head(decoded), image)
        if self.refine is not None:
            logits = logits + self.refine(decoded, image)
        return logits


class LiteUNet(SegmentationNet):
    """U-Net decoder over an EfficientNet-Lite encoder, mapping (N, 3, H, W) images to
    (N, num_classes, H, W) logits.

    The encoder's features at 1/2, 1/4, 1/8 and 1/16 are the skips and its 1/32 features the
    bottleneck; decoder levels of ``width * 8``, ``* 4``, ``* 2`` and ``* 1`` channels climb back
    to 1/2, where the logits are bilinearly upsampled to the input size. ``freeze_encoder_bn``
    keeps the encoder's batch-norm statistics (ImageNet's, when pretrained) fixed in training:
    small batches then do not replace them with noisier ones.
    """

    size_factor = 32

    def __init__(
        self,
        num_classes: int,
        encoder: str = "efficientnet_lite0",
        width: int = 16,
        dropout: float = 0.1,
        upsampling: Upsampling = "transpose",
        input_norm: InputNorm = "none",
        freeze_encoder_bn: bool = False,
        mean: Sequence[float] = LITE_MEAN,
        std: Sequence[float] = LITE_STD,
    ) -> None:
        super().__init__(num_classes, mean, std, input_norm)
        check_architecture(encoder, width, dropout)
        self.encoder = LiteEncoder(encoder)
        self.freeze_encoder_bn = freeze_encoder_bn
        skips = self.encoder.channels[:-1]
        widths = [width * 2**i for i in range(len(skips))]
        inputs = [self.encoder.channels[-1], *widths[:0:-1]]  # what each level climbs from
        self.ups = nn.ModuleList(
            Up(inputs[j], skips[-1 - j], widths[-1 - j], dropout, upsampling)
            for j in range(len(skips))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.head(decode(self.ups, self.encoder(image))), image)

    def train(self, mode: bool = True) -> LiteUNet:
        """As ``nn.Module.train``, but with ``freeze_encoder_bn`` the encoder's batch norms stay
        in eval mode (their statistics fixed; their scale and shift still learn)."""
        super().train(mode)
        if mode and self.freeze_encoder_bn:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm too
                    module.eval()
        return self


class FullResolutionRefinement(nn.Module):
    """A light decoder level at the input's resolution that corrects the upsampled logits.

    Its skip is a 3x3 conv of the image itself, so it sees structures a pixel or two wide that
    the half-resolution decoder blurs. Its 1x1 head starts at zero: training starts from the
    half-resolution model and the level only learns a correction. (Variant M, whose logits came
    from this level alone, never learnt Pole on CamVid's full train split.)
    """

    def __init__(
        self,
        in_channels: int,
        decoder_channels: int,
        num_classes: int,
        dropout: float,
        upsampling: Upsampling,
    ) -> None:
        super().__init__()
        channels = decoder_channels // 2
        self.skip = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.up = Up(decoder_channels, channels, channels, dropout, upsampling)
        self.head = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, decoded: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Logit corrections at the image's size from half-resolution features and the image."""
        return self.head(self.up(decoded, self.skip(image)))


def build_model(config: Config, num_classes: int, pretrained: bool = False) -> SegmentationNet:
    """A U-Net as the configuration describes it. With ``pretrained`` (a new training run, not a
    model about to receive a checkpoint's weights) an EfficientNet-Lite encoder starts from its
    ImageNet weights when ``model.pretrained`` asks for them."""
    m = config.model
    mean, std = normalisation(config)
    common = {"dropout": m.dropout, "upsampling": m.upsampling, "input_norm": m.input_norm}
    common |= {"mean": mean, "std": std}
    if m.encoder == "plain":
        return UNet(num_classes, m.width, **common)
    if m.encoder == "residual":
        return ResUNet(num_classes, m.width, m.blocks, full_resolution=m.full_resolution, **common)
    model = LiteUNet(
        num_classes, m.encoder, m.width, freeze_encoder_bn=m.freeze_encoder_bn, **common
    )
    if pretrained and m.pretrained:
        load_imagenet_weights(model.encoder, m.encoder)
    return model


def nearest_valid_sizes(side: int, factor: int) -> tuple[int, int]:
    """The multiples of ``factor`` just below and above ``side`` (the lower one at least
    ``factor``)."""
    lower = max(factor, side // factor * factor)
    upper = -(-side // factor) * factor
    return lower, max(upper, factor)


def size_problem(width: int, height: int, factor: int) -> str | None:
    """Why a ``width`` x ``height`` input does not fit a model whose sides must be multiples of
    ``factor``, naming the nearest valid sides; None when it fits."""
    bad = [
        (name, side)
        for name, side in (("height", height), ("width", width))
        if side % factor or side <= 0
    ]
    if not bad:
        return None
    hints = ", ".join(
        f"{name} {side} -> {' or '.join(map(str, sorted(set(nearest_valid_sizes(side, factor)))))}"
        for name, side in bad
    )
    return f"size {width}x{height} (WxH) is not a multiple of {factor} on each side; nearest valid: {hints}"


def check_input_size(height: int, width: int, factor: int) -> None:
    """Raise ValueError, naming valid alternatives, unless both sides are multiples of ``factor``."""
    problem = size_problem(width, height, factor)
    if problem:
        raise ValueError(f"U-Net input {problem}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, a frozen encoder's included: the model's size, not this step's."""
    return sum(p.numel() for p in model.parameters())
