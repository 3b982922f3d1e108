"""The U-Net of Ronneberger et al. (2015), with batch norm and dropout, and a residual variant.

``UNet``: four 2x2 max-pool downsamplings, so both input sides must be multiples of 16. Each block
is (3x3 conv -> BatchNorm -> ReLU) x 2 followed by Dropout2d; padding keeps the output the size of
the input (the paper's valid convolutions would shrink it).

``ResUNet``: the same decoder over a ResNet-style encoder (He et al. 2016, basic blocks) that starts
with a stride-2 stem, so its four levels sit at 1/2 to 1/16 of the input and the logits are
upsampled x2 at the end; with ``full_resolution`` a light decoder level at the input's own
resolution, over a skip from the input, adds a correction to them for structures a pixel or two
wide (poles, signs). With its compute at low resolution it is cheap on a CPU even when deep: at
width 32 with ResNet-34's depths (3, 4, 6, 3) it trained 1.8x the images per second of the
width-32 ``UNet`` at 320x240 (benchmarks/RESULTS.md, CamVid variants D and E).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Upsampling = Literal["transpose", "bilinear"]
InputNorm = Literal["none", "per_image"]
DOWNSAMPLING_FACTOR = 16


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
    """Upsample x2, concatenate the skip connection, then a DoubleConv."""

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float, upsampling: Upsampling
    ) -> None:
        super().__init__()
        half = in_channels // 2
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        elif upsampling == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, kernel_size=1),
            )
        else:
            raise ValueError(f"upsampling must be 'transpose' or 'bilinear', not {upsampling!r}")
        self.conv = DoubleConv(half + out_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def check_arguments(num_classes: int, width: int, dropout: float) -> None:
    """Raise ValueError for a model that cannot be built."""
    if num_classes < 1 or width < 1:
        raise ValueError("num_classes and width must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")


def input_normalisation(input_norm: InputNorm, channels: int) -> nn.Module:
    """``per_image``: standardise each channel of each image by its own mean and std, so a
    darker or flatter exposure of the same scene gives the same input; ``none``: identity."""
    if input_norm == "per_image":
        return nn.InstanceNorm2d(channels)
    if input_norm == "none":
        return nn.Identity()
    raise ValueError(f"input_norm must be 'none' or 'per_image', not {input_norm!r}")


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


class UNet(nn.Module):
    """U-Net mapping (N, 3, H, W) images to (N, num_classes, H, W) logits.

    ``width`` is the first level's channel count; 64 gives the original 64-128-256-512 encoder
    with a 1024-channel bottleneck.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        dropout: float = 0.1,
        upsampling: Upsampling = "transpose",
        in_channels: int = 3,
        input_norm: InputNorm = "none",
    ) -> None:
        super().__init__()
        check_arguments(num_classes, width, dropout)
        self.input_norm = input_normalisation(input_norm, in_channels)
        w = [width * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, w[0], dropout)
        self.downs = nn.ModuleList(Down(w[i], w[i + 1], dropout) for i in range(4))
        self.ups = nn.ModuleList(
            Up(w[i + 1], w[i], dropout, upsampling) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        skips = [self.inc(self.input_norm(x))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


class ResUNet(nn.Module):
    """U-Net with a residual encoder, mapping (N, 3, H, W) images to (N, num_classes, H, W) logits.

    A 3x3 stride-2 stem with ``width`` channels, then four residual stages of ``blocks[i]`` blocks
    with ``width * 2**i`` channels at 1/2, 1/4, 1/8 and 1/16 of the input; the ``UNet`` decoder
    climbs back to 1/2 and the logits are bilinearly upsampled to the input size. With
    ``full_resolution`` a ``FullResolutionRefinement`` adds a correction to them, for thin
    structures.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.1,
        upsampling: Upsampling = "transpose",
        in_channels: int = 3,
        input_norm: InputNorm = "none",
        full_resolution: bool = False,
    ) -> None:
        super().__init__()
        check_arguments(num_classes, width, dropout)
        if full_resolution and width < 2:
            raise ValueError("full_resolution needs a width of at least 2")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts of at least 1, not {list(blocks)}")
        self.input_norm = input_normalisation(input_norm, in_channels)
        w = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList(
            residual_stage(w[max(i - 1, 0)], w[i], blocks[i], 1 if i == 0 else 2, dropout)
            for i in range(4)
        )
        self.ups = nn.ModuleList(
            Up(w[i + 1], w[i], dropout, upsampling) for i in reversed(range(3))
        )
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)
        self.refine: FullResolutionRefinement | None = None
        if full_resolution:
            self.refine = FullResolutionRefinement(
                in_channels, w[0], num_classes, dropout, upsampling
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        image = self.input_norm(x)
        x = self.stem(image)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest stage output is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        logits = nn.functional.interpolate(
            self.head(x), size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        if self.refine is not None:
            logits = logits + self.refine(x, image)
        return logits


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
        self.up = Up(decoder_channels, channels, dropout, upsampling)
        self.head = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, decoded: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Logit corrections at the image's size from half-resolution features and the image."""
        return self.head(self.up(decoded, self.skip(image)))


SegmentationNet = UNet | ResUNet


def nearest_valid_sizes(side: int) -> tuple[int, int]:
    """The multiples of 16 just below and above ``side`` (the lower one at least 16)."""
    lower = max(DOWNSAMPLING_FACTOR, side // DOWNSAMPLING_FACTOR * DOWNSAMPLING_FACTOR)
    upper = -(-side // DOWNSAMPLING_FACTOR) * DOWNSAMPLING_FACTOR
    return lower, max(upper, DOWNSAMPLING_FACTOR)


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError, naming valid alternatives, unless both sides are multiples of 16."""
    bad = [
        (name, side)
        for name, side in (("height", height), ("width", width))
        if side % DOWNSAMPLING_FACTOR or side == 0
    ]
    if bad:
        hints = ", ".join(
            f"{name} {side} -> {' or '.join(map(str, sorted(set(nearest_valid_sizes(side)))))}"
            for name, side in bad
        )
        raise ValueError(
            f"U-Net input size {width}x{height} (WxH) is not a multiple of "
            f"{DOWNSAMPLING_FACTOR} on each side; nearest valid: {hints}"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
