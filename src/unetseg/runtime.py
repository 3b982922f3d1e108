"""Where and how a job runs: device, precision, memory layout, and torchrun's process group."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from unetseg.config import ConfigError, TrainConfig


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


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def make_runtime(train: TrainConfig) -> Runtime:
    """Resolve the device and precision; join torchrun's process group when launched by it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = select_device(train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=int(os.environ.get("UNETSEG_DIST_TIMEOUT", "600"))),
        )
    amp_dtype = select_precision(train.precision, device)
    if train.channels_last == "auto":
        # channels_last pays off with oneDNN bf16 on CPU and with tensor cores on CUDA.
        channels_last = device.type == "cuda" or (device.type == "cpu" and amp_dtype is not None)
    else:
        channels_last = train.channels_last == "on"
    return Runtime(device, amp_dtype, channels_last, rank, world_size)


def barrier(runtime: Runtime) -> None:
    """Wait for every process (no-op when alone)."""
    if runtime.distributed:
        dist.barrier()


def shutdown(runtime: Runtime) -> None:
    """Leave the process group, if any."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
