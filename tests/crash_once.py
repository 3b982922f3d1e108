"""A torchrun worker for ``tests/test_multinode.py``: the ``unetseg`` command, except that rank
``CRASH_RANK`` kills itself (kill -9) as it starts step ``CRASH_AT_STEP``, in its first life only
(not once torchrun has restarted it). Triggered by the step, so the test never races the clock."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import torch

from unetseg.commands.cli import main
from unetseg.engine.train import Trainer

CRASH_AT_STEP = int(os.environ["CRASH_AT_STEP"])
CRASH_RANK = os.environ["CRASH_RANK"]
_train_step = Trainer.train_step


def crashing_train_step(
    self: Trainer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    first_life = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_life and os.environ.get("RANK") == CRASH_RANK and self.step == CRASH_AT_STEP:
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_step(self, batches)


if __name__ == "__main__":
    Trainer.train_step = crashing_train_step
    sys.exit(main())
