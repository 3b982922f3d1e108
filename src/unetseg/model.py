"""The U-Net of Ronneberger et al. (2015), with batch norm and dropout.

Four 2x2 max-pool downsamplings, so both input sides must be multiples of 16. Each block is
(3x3 conv -> BatchNorm -> ReLU) x 2 followed by Dropout2d; padding keeps the output the size of the
input (the paper's valid convolutions would shrink it).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Upsampling = Literal["transpose", "bilinear"]
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
    ) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError("num_classes and width must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        w = [width * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, w[0], dropout)
        self.downs = nn.ModuleList(Down(w[i], w[i + 1], dropout) for i in range(4))
        self.ups = nn.ModuleList(
            Up(w[i + 1], w[i], dropout, upsampling) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


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
