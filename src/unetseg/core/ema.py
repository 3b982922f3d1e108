"""A moving average of a model's weights, the copy that is evaluated and shipped.

An exponential moving average (EMA) of the last few hundred steps smooths out the noise of small
batches and a still-high learning rate, which matters most for short training budgets. A uniform
average of every step from some point on is stochastic weight averaging (Izmailov et al. 2018),
reported to find flatter minima that generalise better.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """A frozen copy of ``model`` whose floating-point state follows ``model``'s after each step.

    The decay is ramped up as ``(1 + n) / (10 + n)`` over the first updates, so that the average
    is not dominated by the random initial weights in a short run. Updates marked ``uniform``
    restart the average at the first of them and then weigh each of them equally.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self.uniform_updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, uniform: bool = False) -> None:
        """Move the average towards ``model``'s weights (batch-norm statistics included).

        With ``uniform`` the average becomes the plain mean of the weights of every uniform update
        so far; batch-norm statistics are averaged the same way rather than recomputed.
        """
        self.updates += 1
        if uniform:
            self.uniform_updates += 1
            weight = 1.0 / self.uniform_updates
        else:
            weight = 1.0 - self.current_decay()
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        floats = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        if floats:  # one fused call rather than a kernel per tensor
            mine, theirs = map(list, zip(*floats, strict=True))
            torch._foreach_lerp_(mine, theirs, weight)
        for mine, theirs in pairs:
            if not mine.is_floating_point():  # counters such as batch norm's num_batches_tracked
                mine.copy_(theirs)

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        """Parameters, then buffers, in registration order: the same order in a deep copy."""
        return [*model.parameters(), *model.buffers()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.module.state_dict(),
            "updates": self.updates,
            "uniform_updates": self.uniform_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
        self.uniform_updates = int(state.get("uniform_updates", 0))  # older checkpoints lack it
