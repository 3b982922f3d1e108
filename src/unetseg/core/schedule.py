"""Learning-rate schedules: quadratic warm-up, then the original square-root decay, poly or cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from unetseg.core.config import Decay, check_choice


@dataclass(frozen=True)
class Schedule:
    """The learning rate as a plain function of the optimizer step (0-based)."""

    base_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay: Decay = "original"
    decay_factor: float = 5e8
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        check_choice(self.decay, Decay, "decay")

    def __call__(self, step: int, progress: float | None = None) -> float:
        """The rate at ``step``. For poly and cosine, ``progress`` (0..1, e.g. the share of a time
        budget spent) advances the decay when it is ahead of the step's share of the decay phase:
        whichever of the clock and ``total_steps`` ends first, the rate is at ``min_lr`` there."""
        if step < self.warmup_steps:
            # The original recipe's quadratic warm-up, floored at min_lr.
            return max(self.base_lr * step**2 / self.warmup_steps**2, self.min_lr)
        t = step - self.warmup_steps
        if self.decay == "original":
            return max(self.base_lr - math.sqrt(t / self.decay_factor), self.min_lr)
        share = t / max(1, self.total_steps - self.warmup_steps)
        progress = share if progress is None else max(progress, share)
        progress = min(1.0, max(0.0, progress))
        if self.decay == "poly":
            shape = (1.0 - progress) ** self.poly_power
        else:  # cosine
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.base_lr - self.min_lr) * shape

    def values(self) -> list[float]:
        """The learning rate at every step of the run, for plotting."""
        return [self(step) for step in range(self.total_steps)]
