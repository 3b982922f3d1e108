"""An exponential moving average (EMA) of a model's weights, the copy that is evaluated and shipped.

Averaging the weights of the last few hundred steps smooths out the noise of small batches and a
still-high learning rate, which matters most for short training budgets.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """A frozen copy of ``model`` whose floating-point state follows ``model``'s after each step.

    The decay is ramped up as ``(1 + n) / (10 + n)`` over the first updates, so that the average
    is not dominated by the random initial weights in a short run.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s weights (batch-norm statistics included)."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        mine, theirs = self.module.state_dict(), model.state_dict()
        for key, value in mine.items():
            if value.is_floating_point():
                value.lerp_(theirs[key].detach(), weight)
            else:
                value.copy_(theirs[key])

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
