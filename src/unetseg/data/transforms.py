"""Batched augmentation on the training device: uint8 batches in, [0, 1] float images out (the
model normalises them itself).

Photometric changes (colour jitter, then gamma, blur and noise) act on the image alone. Geometry (random scale + crop, horizontal flip, optionally a smaller output crop)
is one affine resampling per image, bilinear for the image and nearest for the mask, so the two
stay aligned; pixels brought in from outside the image are mid-grey and ignored in the mask. Random parameters
come from a generator the caller seeds per step, which makes resumed runs repeat their augmentation
exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unetseg.core.classes import IGNORE_INDEX
from unetseg.core.config import AugmentConfig


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], what every model takes."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def prepare_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, H, W, 3) and masks (N, H, W) -> model input and int64 targets.

    With ``augment`` (training), colour jitter and a random scale/crop/flip are applied; the output
    is ``augment.crop`` sized when that is set.
    """
    x, y = to_model_input(images), masks.long()
    if augment is not None and augment.enabled:
        x = _colour_jitter(x, augment, generator)
        x = _camera_effects(x, augment, generator)
        x, y = _scale_crop_flip(x, y, augment, generator)
    return x, y


def _uniform(n: int, spread: float, generator: torch.Generator | None) -> torch.Tensor:
    """n factors uniform in [1 - spread, 1 + spread], drawn on the CPU for reproducibility."""
    return 1.0 + (torch.rand(n, generator=generator) * 2.0 - 1.0) * spread


def _colour_jitter(
    x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Random brightness, per-channel gain (white balance), contrast and saturation per image."""
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    brightness = _uniform(n, augment.brightness, generator).view(shape).to(x.device)
    contrast = _uniform(n, augment.contrast, generator).view(shape).to(x.device)
    saturation = _uniform(n, augment.saturation, generator).view(shape).to(x.device)
    x = x * brightness
    if augment.white_balance > 0:  # drawn only when on, so other recipes keep their random stream
        gains = _uniform(n * 3, augment.white_balance, generator).view(n, 3, 1, 1)
        x = x * gains.to(x.device)
    mean_gray = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean_gray) * contrast + mean_gray
    gray = _gray(x)  # after the contrast change, so saturation does not undo it
    x = (x - gray) * saturation + gray
    return x.clamp_(0.0, 1.0)


def _camera_effects(
    x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Random gamma, Gaussian blur and Gaussian noise per image, each drawn only when on."""
    n = x.shape[0]
    if augment.gamma > 0:  # log-uniform, so darkening and brightening are equally likely
        spread = (torch.rand(n, generator=generator) * 2.0 - 1.0) * math.log1p(augment.gamma)
        x = x.clamp(min=1e-6).pow(spread.exp().view(n, 1, 1, 1).to(x.device))
    if augment.blur > 0:
        x = gaussian_blur(x, torch.rand(n, generator=generator) * augment.blur)
    if augment.noise > 0:
        std = (torch.rand(n, 1, 1, 1, generator=generator) * augment.noise).to(x.device)
        # The noise image is drawn where x lives (from the host it would cross to the GPU every
        # step), by a generator seeded from the caller's, so that runs still repeat exactly.
        seed = int(torch.randint(2**62, (1,), generator=generator))
        on_device = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.randn(x.shape, generator=on_device, device=x.device, dtype=x.dtype)
        x = (x + noise * std).clamp_(0.0, 1.0)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each of the (N, C, H, W) images with its own sigma (pixels; 0 leaves it as it is)."""
    n, channels, height, width = x.shape
    radius = max(1, int(torch.ceil(2.0 * sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets**2) / (2.0 * sigma.clamp(min=1e-3).view(n, 1) ** 2))
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    kernels = kernels.to(x.device, x.dtype)
    # Separable: one grouped convolution along each axis, one group per image channel.
    flat = F.pad(x.reshape(1, n * channels, height, width), [radius] * 4, mode="replicate")
    flat = F.conv2d(flat, kernels.view(n * channels, 1, 1, -1), groups=n * channels)
    flat = F.conv2d(flat, kernels.view(n * channels, 1, -1, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of (N, 3, H, W) images, as (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _scale_crop_flip(
    x: torch.Tensor, y: torch.Tensor, augment: AugmentConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    n, channels, height, width = x.shape
    crop_w, crop_h = augment.crop or (width, height)
    scale = augment.scale_min + torch.rand(n, generator=generator) * (
        augment.scale_max - augment.scale_min
    )
    flip = (
        (torch.rand(n, generator=generator) < 0.5) if augment.hflip else torch.zeros(n, dtype=bool)
    )
    # Output coordinates in [-1, 1] map to input coordinates: x_in = sign * x_out * extent + shift,
    # where extent is the share of the input the output covers (a crop covers less at scale 1).
    extent = torch.stack([crop_w / width / scale, crop_h / height / scale])
    shift = (torch.rand(2, n, generator=generator) * 2.0 - 1.0) * (1.0 - extent).abs()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) * extent[0]
    theta[:, 1, 1] = extent[1]
    theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
    grid = F.affine_grid(theta.to(x.device), [n, channels, crop_h, crop_w], align_corners=False)
    # Pixels from outside the image become mid-grey (ignored in the mask, but seen as context).
    x = F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x + 0.5
    # Shift the mask by one so that padding (0) is distinguishable, then mark it ignored.
    shifted = (y + 1).unsqueeze(1).float()
    y = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = y.squeeze(1).long() - 1
    y[y < 0] = IGNORE_INDEX
    return x, y
