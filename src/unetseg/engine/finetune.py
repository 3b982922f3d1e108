"""Fine-tuning a pretrained encoder: which part of a model starts from ImageNet, optimizer
groups of its own (``train.encoder_lr_scale``), and which of its levels are held fixed at each
step (the warm start, ``train.freeze_encoder_steps``, then ``train.freeze_encoder_levels``)."""

from __future__ import annotations

import torch
from torch import nn

from unetseg.core.config import Config, TrainConfig
from unetseg.core.efficientnet_lite import LiteEncoder
from unetseg.core.encoders import FEATURE_LEVELS
from unetseg.core.model import LiteUNet


def pretrained_encoder(model: nn.Module, config: Config) -> LiteEncoder | None:
    """The part of ``model`` that starts from pretrained weights, if any."""
    return model.encoder if isinstance(model, LiteUNet) and config.model.pretrained else None


def build_optimizer(model: nn.Module, config: Config) -> tuple[torch.optim.Optimizer, list[bool]]:
    """AdamW; no weight decay on biases and norm parameters (decaying them only hurts).

    A pretrained encoder's parameters get groups of their own, so that their learning rate can
    be scaled; the second value says which groups those are.
    """
    encoder = pretrained_encoder(model, config)
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups, is_encoder = [], []
    for part in (True, False) if in_encoder else (False,):
        params = [p for p in model.parameters() if (id(p) in in_encoder) == part]
        for decayed in (True, False):
            groups.append(
                {
                    "params": [p for p in params if (p.ndim > 1) == decayed],
                    "weight_decay": config.train.weight_decay if decayed else 0.0,
                }
            )
            is_encoder.append(part)
    return torch.optim.AdamW(groups, lr=config.train.base_lr), is_encoder


def frozen_encoder_levels(train: TrainConfig, step: int) -> int:
    """How many of the pretrained encoder's feature levels are held fixed at ``step``: all of
    them in the warm start, then ``freeze_encoder_levels``."""
    return FEATURE_LEVELS if step < train.freeze_encoder_steps else train.freeze_encoder_levels


def hold_fixed(encoder: LiteEncoder, levels: int) -> None:
    """Hold the first ``levels`` feature levels of ``encoder`` fixed and release the others.

    Fixed parameters need no gradient, so the backward pass stops above them; their batch-norm
    statistics still follow the data (unless ``model.freeze_encoder_bn``)."""
    encoder.requires_grad_(True)
    for module in encoder.level_modules(levels):
        module.requires_grad_(False)
