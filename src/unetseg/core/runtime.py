"""Where and how a job runs: device, precision, memory layout, and torchrun's process group."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from unetseg.core.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Runtime:
    """The resolved device, numeric precision and data-parallel position of this process."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device in the model's memory layout."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps requested but Apple MPS is not available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def select_precision(
    precision: str, device: torch.device, cpu_bf16: bool = True
) -> torch.dtype | None:
    """``auto``: bf16 where the hardware runs it natively (on a CPU only when ``cpu_bf16``: the
    model trains faster in it), fp16 on older GPUs, else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_supports_bf16():
        return torch.bfloat16
    return None


def process_rank() -> int:
    """This process's rank among torchrun's (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def elastic_restart() -> bool:
    """Whether torchrun started this process again after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def make_runtime(train: TrainConfig, cpu_bf16: bool = True) -> Runtime:
    """Resolve the device and precision; join torchrun's process group when launched by it.

    ``cpu_bf16`` False: ``precision: auto`` trains in fp32 on a CPU (a model whose training gains
    nothing from bf16 there, see ``EncoderSpec.cpu_bf16_training``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = process_rank()
    device = select_device(train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=int(os.environ.get("UNETSEG_DIST_TIMEOUT", "600"))),
        )
    amp_dtype = select_precision(train.precision, device, cpu_bf16)
    return _resolve(device, amp_dtype, train.channels_last, rank, world_size)


def resolved_again(runtime: Runtime, precision: str) -> Runtime:
    """``runtime`` with ``precision`` resolved as for a model whose training gains from bf16 on a
    CPU (``make_runtime``'s ``cpu_bf16``): EfficientNet-Lite's, while its encoder is frozen,
    trains 1.4x to 1.5x as fast in bf16 there (``benchmarks/encoders.py``)."""
    return replace(runtime, amp_dtype=select_precision(precision, runtime.device))


def local_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """A single process's runtime (evaluation, prediction), never joining a process group."""
    resolved = select_device(device)
    return _resolve(resolved, select_precision(precision, resolved), "auto")


def _resolve(
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: str,
    rank: int = 0,
    world_size: int = 1,
) -> Runtime:
    # channels_last pays off with oneDNN on CPU (in fp32 too) and with tensor cores on CUDA.
    auto = device.type in ("cpu", "cuda")
    layout = auto if channels_last == "auto" else channels_last == "on"
    return Runtime(device, amp_dtype, layout, rank, world_size)


def barrier(runtime: Runtime) -> None:
    """Wait for every process (no-op when alone)."""
    if runtime.distributed:
        dist.barrier()


def shutdown(runtime: Runtime) -> None:
    """Leave the process group, if any."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt, so cleanup runs as after Ctrl-C (no half-built
    cache, no temporary files, no orphaned worker processes) instead of the process vanishing.

    A no-op off the main thread and where SIGTERM already has a handler (training's StopSignal).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (a second one kills)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # asked twice: stop now
            signal.signal(signum, self._previous[signum])
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
