"""Batches from a cached split: an endless, seeded, resumable training stream and a val pass."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StreamBatchSampler(Sampler[list[int]]):
    """Micro-batch ``k`` of rank ``r``: positions ``[k*G + r*B, k*G + (r+1)*B)`` of an endless stream.

    The stream concatenates one epoch after another, each drawn from ``seed + epoch``: a fresh
    permutation of the data set, or with ``weights`` (one per sample) as many draws with replacement
    in proportion to them; ``G = B * world_size``. Any micro-batch is a pure function of its number,
    so a run resumed at micro-batch ``start`` sees exactly what an uninterrupted run saw, and
    ``world_size`` processes together see what one process with batch ``G`` sees.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        if weights is not None and (
            weights.shape != (size,) or (weights < 0).any() or not weights.sum() > 0
        ):
            raise ValueError(f"need {size} non-negative sampling weights, not all zero")
        self.size, self.batch_size, self.seed, self.weights = size, batch_size, seed, weights
        self.rank, self.world_size, self.start = rank, world_size, start
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            if self.weights is None:
                order = torch.randperm(self.size, generator=generator)
            else:
                order = torch.multinomial(self.weights, self.size, True, generator=generator)
            self._epoch, self._perm = epoch, order
        return self._perm

    def batch(self, k: int) -> list[int]:
        """The sample indices of micro-batch ``k`` for this rank."""
        first = (k * self.world_size + self.rank) * self.batch_size
        return [
            int(self._permutation(p // self.size)[p % self.size])
            for p in range(first, first + self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


def default_workers(num_workers: int, device: torch.device, world_size: int = 1) -> int:
    """Loader processes: on CPU the main process (workers would steal the cores that train)."""
    if num_workers >= 0:
        return num_workers
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // world_size - 1))


def train_loader(
    dataset: Dataset, sampler: StreamBatchSampler, workers: int, device: torch.device
) -> DataLoader:
    """The endless training loader over uint8 batches (augmentation happens on the device)."""
    return StopSafeLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=leave_stops_to_the_parent,
        generator=_private_generator(),
    )


def val_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """One ordered pass over this rank's share (every ``world_size``-th sample) of a split."""
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    return StopSafeLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=leave_stops_to_the_parent,
        generator=_private_generator(),
    )


STOPS = {signal.SIGINT, signal.SIGTERM}


class StopSafeLoader(DataLoader):
    """A DataLoader whose workers ignore SIGINT and SIGTERM.

    A terminal's Ctrl-C (or a SIGTERM to the process group) reaches the workers too; dying first,
    they made the loop fail before it could save its interrupt checkpoint. The workers are started
    with both signals blocked (so that none can land before they ignore them) and ignore them from
    their first instruction on; the training process stops at its next step and shuts them down,
    and should it die instead, DataLoader's workers end with it.
    """

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            return super().__iter__()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            return super().__iter__()  # starts the workers, which inherit the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def leave_stops_to_the_parent(worker_id: int) -> None:
    """A loader worker's start: ignore SIGINT and SIGTERM, then take them off the blocked mask
    (discarding any that arrived in between)."""
    for signum in STOPS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def _private_generator() -> torch.Generator:
    """A loader draws worker seeds from its generator; a private one keeps the global RNG
    (which drives dropout) untouched, so creating a loader never changes a resumed run."""
    return torch.Generator().manual_seed(0)
