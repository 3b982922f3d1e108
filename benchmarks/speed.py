"""Issue 6: the original pipeline, unetseg (eager and compiled) and smp, side by side in one run.

    python benchmarks/speed.py [--size 512x256] [--width 64] [--batch 4] [--repeats 5]
                               [--skip-compile] [--device auto|cpu|cuda]

Variants:
  original  the original project's hot path re-created: per image a PIL decode of the PNG from
            disk, ``torch.tensor(image.getdata())`` reshaped to (H, W, 3), float 0..255 (it did
            not normalise), the mask decoded the same way; no loader workers; fp32 NCHW; its own
            batch (``--original-batch``, 12); forward, cross-entropy, backward, AdamW. The network
            is unetseg's UNet, so only the pipeline differs.
  unetseg   the real ``Trainer`` with its defaults: uint8 cache, loader, augmentation on the
            device, ``precision: auto``, ``channels_last: auto``.
  compiled  the same with ``train.compile=true`` (cold compile: 40+ s on a small CPU).
  smp       segmentation_models_pytorch Unet(resnet34) in the same Trainer (when installed).

Per variant: training images/s end to end (data included: the loader stream, or the disk decode
of ``original``) and model-only (one fixed batch repeated); inference images/s (eval mode,
inference_mode, batch 1 and ``--batch``; the original predicted one image at a time, so batch 1
only); achieved GFLOP/s (FLOPs of one forward pass counted with FlopCounterMode; training = 3 x
forward, at the model-only rate; inference at batch ``--batch``) and its fraction of the 4096^2
matmul rate of the variant's dtype measured in this run; peak memory (CUDA: max_memory_allocated;
CPU: the process's peak RSS, reset per variant where Linux allows it, else ru_maxrss); and
end-to-end training speed over ``original``. Then: throughput of the ``predict`` path
(``predict_paths`` on a folder of 1024x512 PNGs: decode, resize, model, upsample, write) and ONNX
Runtime vs torch eager at batch 1 (both on the CPU, same input).

Every rate is the median of ``--repeats`` after ``--warmup`` calls, except the original's
training: a step of 12 fp32 images takes about a minute on a 2-core CPU, so its ``--repeats``
steps run without a warm-up step (the median drops the slow first one), and each step's decode and
model parts are timed separately, as the pipeline runs them one after the other. Its model part
(fp32 NCHW, the same U-Net) is the fp32 reference of ``train_speedup_vs_fp32``. The table comes
first; the last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import Output, alternating_rates, machine, median_rate
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unetseg.commands.cli import parse_size
from unetseg.core.classes import IGNORE_INDEX, ClassSet, load_class_set
from unetseg.core.config import Config, load_config
from unetseg.core.model import UNet
from unetseg.core.runtime import select_device, select_precision
from unetseg.data.io import Sample
from unetseg.data.loader import StreamBatchSampler, train_loader
from unetseg.data.sources import ensure_synthetic, find_samples
from unetseg.data.transforms import to_model_input
from unetseg.engine.finetune import build_optimizer
from unetseg.engine.train import Trainer

PREDICT_SIZE = (1024, 512)  # (width, height) of the images given to the predict path
PREDICT_BATCH = 4  # the CLI's default --batch-size

Run = Callable[[], int]  # does some work, returns how many images it processed
Rate = Callable[[int, int], float]  # (repeats, warmup) -> images/s


@dataclass
class Variant:
    """What ``measure`` times for one pipeline; every callable synchronises before returning."""

    name: str
    batch: int
    dtype: torch.dtype  # what the convolutions compute in: picks the matmul ceiling
    label: str  # precision and layout, for the table
    forward_flops: float  # per image
    train_end_to_end: Rate
    train_model_only: Rate  # measured after train_end_to_end
    infer: Callable[[int], Run]  # batch size -> inference run
    infer_batches: tuple[int, ...]  # the batch sizes it predicts at


def timed(run: Run) -> Rate:
    """A run's median rate."""
    return lambda repeats, warmup: median_rate(run, repeats, warmup)


# -- small helpers -------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--width", type=int, default=64, help="U-Net width (64)")
    parser.add_argument("--batch", type=int, default=4, help="training/inference batch (4)")
    parser.add_argument("--original-batch", type=int, default=12, help="original's batch (12)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per rate (5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (3)")
    parser.add_argument("--skip-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--scenes", type=int, default=64, help="synthetic training scenes (64)")
    parser.add_argument("--predict-images", type=int, default=8, help="images for predict (8)")
    parser.add_argument("--predict-repeats", type=int, default=3, help="predict passes (3)")
    parser.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmul")
    parser.add_argument("--record", type=Path, help="append the output to this results file")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-speed")
    args = parser.parse_args()
    if args.warmup < 1 or args.repeats < 3:  # 3: the original's median must drop its first step
        parser.error("--warmup must be at least 1 and --repeats at least 3")
    return args


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the previous variant left behind before the next one is measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux >= 4.0; elsewhere ru_maxrss (never reset)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since ``reset_peak_memory``, MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, IndexError, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "the whole process's peak RSS (torch itself included)"


def dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# -- ceilings and FLOPs ----------------------------------------------------------------------------
def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int, repeats: int) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (2 n^3 flops each), median of ``repeats``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    synchronize(device)
    started = time.perf_counter()
    torch.mm(a, b, out=c)
    synchronize(device)
    single = time.perf_counter() - started
    count = max(1, min(10_000, int(0.2 / max(single, 1e-7))))  # >= 0.2 s per timed call

    def run() -> int:
        for _ in range(count):
            torch.mm(a, b, out=c)
        synchronize(device)
        return count

    return median_rate(run, repeats, warmup=1) * 2 * n**3 / 1e9


def forward_flops(model: nn.Module, size: tuple[int, int], device: torch.device) -> float:
    """FLOPs of one forward pass of one image of ``size`` = (W, H)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size[1], size[0], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return float(counter.get_total_flops())


# -- configurations and inference ------------------------------------------------------------------
def make_config(args: argparse.Namespace, extra: list[str]) -> Config:
    """The benchmark's configuration: synthetic scenes at the size, no gradient accumulation."""
    width, height = args.size
    return load_config(
        None,
        [
            f"data.root={args.work / f'synthetic_{width}x{height}'}",
            f"data.cache_dir={args.work / 'cache'}",
            f"data.size=[{width},{height}]",
            f"data.synthetic_train={args.scenes}",
            "data.synthetic_val=4",
            f"model.width={args.width}",
            f"train.batch_size={args.batch}",
            "train.accum_steps=1",
            "train.training_iterations=1000000",
            f"train.device={args.device}",
            *extra,
        ],
    )


def make_trainer(args: argparse.Namespace, extra: list[str]) -> Trainer:
    return Trainer(make_config(args, extra), args.work / "run", resume=False, progress=False)


def default_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The precision the Trainer picks by default here (None: fp32), without building one."""
    return select_precision(make_config(args, []).train.precision, select_device(args.device))


def inference_runs(
    model: nn.Module,
    device: torch.device,
    size: tuple[int, int],
    autocast: Callable[[], contextlib.AbstractContextManager],
    prepare: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[int], Run]:
    """Batch size -> a run of one eval-mode forward pass under inference_mode."""

    def for_batch(batch: int) -> Run:
        x = prepare(torch.randn(batch, 3, size[1], size[0], device=device))

        def run() -> int:
            model.eval()
            with torch.inference_mode(), autocast():
                model(x)
            synchronize(device)
            return batch

        return run

    return for_batch


# -- (a) the original pipeline --------------------------------------------------------------------
def original_lookup(class_set: ClassSet) -> torch.Tensor:
    """Mask file value -> train id (values the table does not know are ignored)."""
    return torch.tensor([v if v >= 0 else IGNORE_INDEX for v in class_set.lookup])


def decode_original(sample: Sample, lookup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair as the original decoded it: PIL, getdata() into a tensor, float 0..255."""
    with warnings.catch_warnings():  # getdata() is deprecated since Pillow 12
        warnings.simplefilter("ignore", DeprecationWarning)
        with Image.open(sample.image) as image:
            width, height = image.size
            pixels = torch.tensor(image.convert("RGB").getdata()).reshape(height, width, 3)
        with Image.open(sample.mask) as mask:
            values = torch.tensor(mask.getdata()).reshape(height, width)
    return pixels.float().permute(2, 0, 1), lookup[values]


def original_variant(args: argparse.Namespace, device: torch.device) -> Variant:
    """Disk decode per step, fp32 NCHW, plain cross-entropy and AdamW on the same UNet."""
    config = make_config(args, [])
    class_set = load_class_set(config.data.class_set)
    ensure_synthetic(config.data, progress=False)
    samples = [s for s in find_samples(config.data, "train") if s.mask is not None]
    lookup = original_lookup(class_set)
    model = UNet(class_set.num_classes, width=args.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, counter = args.original_batch, itertools.count()

    def load_batch() -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [
            decode_original(samples[next(counter) % len(samples)], lookup) for _ in range(batch)
        ]
        images, masks = zip(*pairs)
        return torch.stack(images).to(device), torch.stack(masks).to(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> int:
        model.train()
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # synchronises
        return batch

    model_seconds: list[float] = []

    def end_to_end() -> int:
        """Decode a batch from disk, then train on it; the model part is timed on its own."""
        x, y = load_batch()
        started = time.perf_counter()
        step(x, y)
        model_seconds.append(time.perf_counter() - started)
        return batch

    def end_to_end_rate(repeats: int, warmup: int) -> float:
        return median_rate(end_to_end, repeats, warmup=0)

    def model_only_rate(repeats: int, warmup: int) -> float:
        return statistics.median(batch / seconds for seconds in model_seconds[-repeats:])

    return Variant(
        name="original",
        batch=batch,
        dtype=torch.float32,
        label="fp32 NCHW",
        forward_flops=forward_flops(model, args.size, device),
        train_end_to_end=end_to_end_rate,
        train_model_only=model_only_rate,
        infer=inference_runs(
            model, device, args.size, contextlib.nullcontext, lambda x: x.mul(255.0)
        ),
        infer_batches=(1,),
    )


# -- (b), (c), (d): the Trainer ------------------------------------------------------------------
def fixed_batch(trainer: Trainer, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` cached pairs (uint8), as the loader would deliver them."""
    dataset = trainer.data["train"]
    pairs = [dataset[i % len(dataset)] for i in range(batch)]
    images, masks = zip(*pairs)
    return torch.stack(images), torch.stack(masks)


def model_only_run(trainer: Trainer, batch: int) -> Run:
    """``train_step`` on one fixed batch (still augmented on the device, as every step is)."""
    batches = itertools.repeat(fixed_batch(trainer, batch))

    def run() -> int:
        trainer.train_step(batches)  # ends in .tolist(): synchronised
        return batch

    return run


def trainer_variant(name: str, trainer: Trainer, args: argparse.Namespace) -> Variant:
    """The real ``train_step`` fed by the real loader stream, and by one fixed batch."""
    rt, batch = trainer.rt, args.batch
    sampler = StreamBatchSampler(len(trainer.data["train"]), batch, seed=0)
    stream = iter(train_loader(trainer.data["train"], sampler, trainer.workers, rt.device))

    def end_to_end() -> int:
        trainer.train_step(stream)
        return batch

    return Variant(
        name=name,
        batch=batch,
        dtype=rt.amp_dtype or torch.float32,
        label=f"{dtype_name(rt.amp_dtype)}{' channels_last' if rt.channels_last else ' NCHW'}",
        forward_flops=forward_flops(trainer.model, args.size, rt.device),
        train_end_to_end=timed(end_to_end),
        train_model_only=timed(model_only_run(trainer, batch)),
        infer=inference_runs(
            trainer.forward_model, rt.device, args.size, rt.autocast, rt.prepare_input
        ),
        infer_batches=(1, batch),
    )


def smp_variant(args: argparse.Namespace) -> Variant | None:
    """segmentation_models_pytorch Unet(resnet34) swapped into the Trainer, if importable."""
    try:
        import segmentation_models_pytorch as smp
    except Exception as error:  # an ImportError, or torchvision built for another torch
        print(f"smp not installed (optional extra, pulls torchvision): {type(error).__name__}")
        return None
    trainer = make_trainer(args, [])
    rt = trainer.rt
    model = smp.Unet("resnet34", encoder_weights=None, classes=trainer.class_set.num_classes).to(
        rt.device
    )
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer.model = trainer.forward_model = model
    trainer.optimizer, trainer.encoder_groups = build_optimizer(model, trainer.config)
    return trainer_variant("smp resnet34", trainer, args)


# -- measuring -------------------------------------------------------------------------------------
def measure(
    variant: Variant, args: argparse.Namespace, device: torch.device, ceilings: dict[str, float]
) -> dict[str, Any]:
    """Every rate of one variant, and its peak memory."""
    reset_peak_memory(device)
    end_to_end = variant.train_end_to_end(args.repeats, args.warmup)
    model_only = variant.train_model_only(args.repeats, args.warmup)
    infer = {
        b: median_rate(variant.infer(b), args.repeats, args.warmup) for b in variant.infer_batches
    }
    ceiling = ceilings[dtype_name(variant.dtype)]
    train_gflops = 3 * variant.forward_flops * model_only / 1e9
    result: dict[str, Any] = {
        "batch": variant.batch,
        "precision": variant.label,
        "end_to_end_img_s": end_to_end,
        "model_only_img_s": model_only,
        "infer_b1_img_s": infer[1],
        "forward_gflop": variant.forward_flops / 1e9,
        "train_gflops": train_gflops,
        "train_peak_fraction": train_gflops / ceiling,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if args.batch in infer:
        infer_gflops = variant.forward_flops * infer[args.batch] / 1e9
        result.update(
            infer_bn_img_s=infer[args.batch],
            infer_gflops=infer_gflops,
            infer_peak_fraction=infer_gflops / ceiling,
        )
    return result


def predict_images(samples: list[Sample], folder: Path, count: int) -> Path:
    """``count`` synthetic scenes enlarged to 1024x512 PNGs in ``folder`` (the predict input)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i in range(count):
        with Image.open(samples[i % len(samples)].image) as image:
            large = image.convert("RGB").resize(PREDICT_SIZE, Image.Resampling.BILINEAR)
        large.save(folder / f"scene_{i:03d}.png")
    return folder


def predict_throughput(
    args: argparse.Namespace, checkpoint: Path, folder: Path, device: str
) -> float:
    """Images/s of ``predict_paths`` over the folder: decode, resize, model, upsample, write."""
    from unetseg.commands.predict import predict_paths
    from unetseg.engine.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device)
    output = args.work / "predict-out"

    def run() -> int:
        report = predict_paths([folder], output, predictor, PREDICT_BATCH, progress=False)
        if report.failed:
            raise RuntimeError(f"predict failed: {report.failed[0]}")
        return len(report.written)

    return median_rate(run, args.predict_repeats, warmup=1)


def onnx_vs_torch(args: argparse.Namespace, checkpoint: Path) -> dict[str, float] | None:
    """Batch-1 images/s of ONNX Runtime and torch eager on the CPU, same input."""
    from unetseg.engine.export import export_onnx
    from unetseg.engine.inference import Predictor

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime not installed: ONNX comparison skipped")
        return None
    path = args.work / f"speed-w{args.width}.onnx"
    try:
        export_onnx(checkpoint, path)
    except Exception as error:  # e.g. onnxscript missing: report it, keep the other results
        print(f"ONNX export failed, comparison skipped: {type(error).__name__}: {error}")
        return None
    ort = Predictor.from_onnx(path, json.loads(path.with_suffix(".json").read_text()))
    eager = Predictor.from_checkpoint(checkpoint, "cpu")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (1, args.size[1], args.size[0], 3), generator=generator)
    x = to_model_input(pixels.to(torch.uint8))

    def runner(predictor: Predictor) -> Run:
        return lambda: (predictor.logits(x), 1)[1]

    rates = alternating_rates(
        {"onnxruntime": runner(ort), "torch": runner(eager)}, args.repeats, args.warmup
    )
    difference = float((ort.logits(x) - eager.logits(x)).abs().max())
    return {
        "onnxruntime_img_s": rates["onnxruntime"],
        "torch_eager_img_s": rates["torch"],
        "ratio": rates["onnxruntime"] / rates["torch"],
        "max_abs_logit_difference": difference,
    }


# -- output ----------------------------------------------------------------------------------------
COLUMNS = (
    ("variant", 12, None),
    ("batch", 5, "batch"),
    ("precision", 18, "precision"),
    ("train e2e", 10, "end_to_end_img_s"),
    ("model-only", 10, "model_only_img_s"),
    ("infer b1", 9, "infer_b1_img_s"),
    ("infer bN", 9, "infer_bn_img_s"),
    ("GFLOP/img", 9, "forward_gflop"),
    ("train GFLOP/s", 13, "train_gflops"),
    ("%peak", 6, "train_peak_fraction"),
    ("infer GFLOP/s", 13, "infer_gflops"),
    ("%peak", 6, "infer_peak_fraction"),
    ("peak MiB", 8, "peak_memory_mb"),
    ("e2e/orig", 8, "vs_original"),
)


def cell(value: Any, key: str | None) -> str:
    if isinstance(value, str) or value is None:
        return str(value if value is not None else "-")
    if key and key.endswith("fraction"):
        return f"{100 * value:.0f}%"
    if key == "peak_memory_mb":
        return f"{value:.0f}"
    if key == "vs_original":
        return f"{value:.2f}x"
    return f"{value:.4g}"


def print_table(results: dict[str, dict[str, Any]], out: Output) -> None:
    """One row per variant; images/s unless the column says otherwise."""
    out("  ".join(f"{title:>{width}}" for title, width, _ in COLUMNS))
    for name, result in results.items():
        cells = [f"{name:>{COLUMNS[0][1]}}"]
        for _, width, key in COLUMNS[1:]:
            cells.append(f"{cell(result.get(key), key):>{width}}")
        out("  ".join(cells))


def rounded(value: Any) -> Any:
    """Numbers to 4 significant digits, recursively (for the JSON line)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    width, height = args.size
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"device {device}; U-Net width {args.width}; {width}x{height}; batch {args.batch}")

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    default = default_dtype(args)
    dtypes.setdefault(dtype_name(default), default or torch.float32)
    ceilings = {
        name: matmul_gflops(dtype, device, args.matmul_size, args.repeats)
        for name, dtype in dtypes.items()
    }
    print(
        f"matmul {args.matmul_size}^2 GFLOP/s: "
        + ", ".join(f"{name} {rate:.1f}" for name, rate in ceilings.items())
    )

    results: dict[str, dict[str, Any]] = {}
    results["original"] = measure(original_variant(args, device), args, device, ceilings)
    release(device)

    trainer = make_trainer(args, [])
    checkpoint = trainer.save(args.work / f"speed-w{args.width}.pt")
    workers = trainer.workers
    results["unetseg"] = measure(trainer_variant("unetseg", trainer, args), args, device, ceilings)
    del trainer
    release(device)

    if args.skip_compile:
        print("torch.compile skipped (--skip-compile)")
    else:
        trainer = make_trainer(args, ["train.compile=true"])
        results["compiled"] = measure(
            trainer_variant("compiled", trainer, args), args, device, ceilings
        )
        del trainer
        release(device)

    smp_model = smp_variant(args)
    if smp_model is not None:
        results["smp"] = measure(smp_model, args, device, ceilings)
        del smp_model
        release(device)

    for result in results.values():
        result["vs_original"] = result["end_to_end_img_s"] / results["original"]["end_to_end_img_s"]

    samples = find_samples(make_config(args, []).data, "train")
    folder = predict_images(samples, args.work / "predict-in", args.predict_images)
    predict_rate = predict_throughput(args, checkpoint, folder, args.device)
    onnx = onnx_vs_torch(args, checkpoint)

    out = Output()
    out(f"machine: {machine()}")
    out(f"device {device}; U-Net width {args.width}; {width}x{height}; batch {args.batch}")
    out(f"allocator: {os.environ.get('LD_PRELOAD') or 'the system allocator'}")
    out(
        f"matmul {args.matmul_size}^2 GFLOP/s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.items())
    )
    unet, original = results["unetseg"], results["original"]
    out()
    out(f"loader workers {workers}; training img/s end to end include the data; images/s unless")
    out("noted; %peak: achieved GFLOP/s (training at the model-only rate, inference at batch N)")
    out("over this run's matmul rate for the variant's dtype; peak MiB: " + memory_note(device))
    if device.type == "cuda":
        out(
            "(fp32 convolutions may use TF32 on CUDA, the fp32 matmul does not: %peak can pass 100)"
        )
    print_table(results, out)
    speedup = unet["model_only_img_s"] / original["model_only_img_s"]
    out(
        f"unetseg default model-only over fp32 NCHW (the original's model part): {speedup:.2f}x; "
        f"data overhead {1 - unet['end_to_end_img_s'] / unet['model_only_img_s']:.1%}"
    )
    out(
        f"predict path ({args.predict_images} PNGs {PREDICT_SIZE[0]}x{PREDICT_SIZE[1]}, "
        f"batch {PREDICT_BATCH}, device {args.device}): {predict_rate:.4g} img/s"
    )
    if onnx is not None:
        out(
            f"batch 1 on the CPU: onnxruntime {onnx['onnxruntime_img_s']:.4g} img/s, torch eager "
            f"{onnx['torch_eager_img_s']:.4g} img/s, ratio {onnx['ratio']:.2f}x "
            f"(max |logit difference| {onnx['max_abs_logit_difference']:.1e})"
        )
    summary = {
        "train_speedup_vs_fp32": speedup,
        "data_overhead": 1 - unet["end_to_end_img_s"] / unet["model_only_img_s"],
        "infer_peak_fraction": unet["infer_peak_fraction"],
        "train_peak_fraction": unet["train_peak_fraction"],
        "predict_img_s": predict_rate,
        "onnx": onnx,
        "matmul_gflops": ceilings,
        "device": str(device),
        "size": [width, height],
        "width": args.width,
        "batch": args.batch,
        "variants": results,
    }
    out(json.dumps(rounded(summary)))
    out.record(args.record, "Speed, side by side (benchmarks/speed.py)")


if __name__ == "__main__":
    main()
