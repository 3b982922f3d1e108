"""The training loop, top to bottom.

One run writes everything into one folder, which rank 0 holds locked (``.lock``) while it runs:
``config.yaml``, ``run.json`` (what the run resolved to: device, precision, data, steps),
``schedule.png`` (runs without a time budget), ``log.jsonl`` (a row per logged step),
``eval.jsonl`` (a row per evaluation), ``curves_loss.png`` / ``curves_miou.png`` /
``curves_lr.png``, ``snapshots/step_N.png``, ``checkpoints/step_N.pt`` (+ ``.sha256``),
``best.pt``, ``final.pt``, ``model.safetensors`` (+ ``.json``), ``metrics.json`` and
``evaluation/`` (the final full evaluation on the validation split, with its charts) and
``report.html``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from unetseg.core import checkpoint as ckpt
from unetseg.core.classes import load_class_set
from unetseg.core.config import Config, changed_settings, save_config
from unetseg.core.ema import WeightAverage
from unetseg.core.encoders import ENCODERS, FEATURE_LEVELS
from unetseg.core.files import atomic_path, exclusive_lock, write_json
from unetseg.core.losses import SegmentationLoss
from unetseg.core.model import build_model, count_parameters
from unetseg.core.runtime import (
    Runtime,
    StopSignal,
    barrier,
    make_runtime,
    process_rank,
    resolved_again,
    shutdown,
)
from unetseg.core.schedule import Schedule
from unetseg.core.syncbn import convert_sync_batchnorm
from unetseg.data.loader import StreamBatchSampler, default_workers, train_loader, val_loader
from unetseg.data.prepare import prepare_data
from unetseg.data.statistics import rare_class_weights, stats_of_masks
from unetseg.data.transforms import prepare_batch
from unetseg.engine import viz
from unetseg.engine.calibration import Calibration, calibrate, calibrate_file
from unetseg.engine.domain import DomainProfile, profile_of
from unetseg.engine.evaluate import (
    Scored,
    comparison_rows,
    evaluate_model,
    worst_first,
    write_evaluation,
)
from unetseg.engine.finetune import (
    build_optimizer,
    frozen_encoder_levels,
    hold_fixed,
    pretrained_encoder,
)
from unetseg.engine.report import write_report
from unetseg.engine.runlog import RunLog


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite steps, a failed checkpoint write)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved before stopping."""


@dataclass
class TrainResult:
    """Where a finished run put its outputs."""

    run_dir: Path
    final_checkpoint: Path
    best_checkpoint: Path | None
    metrics: dict[str, Any]


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """Augmentation randomness as a pure function of position, so resume repeats it exactly."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank)


class Trainer:
    """Owns the model, optimizer, data stream and run folder of one training run."""

    def __init__(self, config: Config, run_dir: Path, resume: bool, progress: bool) -> None:
        self.config, self.run_dir, self.progress = config, run_dir, progress
        encoder = ENCODERS[config.model.encoder]
        self.rt: Runtime = make_runtime(config.train, encoder.cpu_bf16_training)
        t = config.train
        # What gains nothing from bf16 on a CPU is the backward pass of Lite's depthwise
        # convolutions: with the whole encoder frozen there is none.
        self.frozen_rt = resolved_again(self.rt, t.precision)
        torch.manual_seed(t.seed + self.rt.rank)  # own dropout masks per process
        self.class_set = load_class_set(config.data.class_set)
        if self.rt.is_main:  # one process checks and caches, the others wait and reuse it
            self.data = prepare_data(config, self.class_set, progress=progress)
        barrier(self.rt)
        if not self.rt.is_main:
            self.data = prepare_data(config, self.class_set, progress=False)
        self.model = self._build_model(pretrained=not resume)
        self.ema = self._new_average()
        self.optimizer, self.encoder_groups = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(
            self.rt.device.type,
            enabled=torch.float16 in (self.rt.amp_dtype, self.frozen_rt.amp_dtype),
        )
        self.loss_fn = SegmentationLoss(
            self.class_set.num_classes,
            ce_weight=config.loss.ce_weight,
            dice_weight=config.loss.dice_weight,
            class_weights=self._class_weights(),
            ce_hard_fraction=config.loss.ce_hard_fraction,
        ).to(self.rt.device)
        self.schedule = Schedule(
            t.base_lr, t.min_lr, t.warmup_steps, t.training_iterations, t.decay, t.decay_factor
        )
        self.step, self.best_miou, self.nonfinite_total = 0, -1.0, 0
        self.domain: DomainProfile | None = None  # the training data's, once training ends
        self.elapsed_s = 0.0  # wall-clock seconds of the training loop, across resumes
        self.last_checkpoint: Path | None = None
        if resume:
            self._resume()
        self.workers = default_workers(config.data.num_workers, self.rt.device, self.rt.world_size)
        self.frozen_levels = 0
        self._follow_encoder_freeze()
        self.forward_model = self._wrap_model()

    # -- setup -----------------------------------------------------------------------------
    def _class_weights(self) -> list[float] | None:
        """Explicit ``loss.class_weights``, or median-frequency weights of the cached train masks."""
        loss = self.config.loss
        if loss.class_weights:
            return loss.class_weights
        if loss.class_weighting == "none":
            return None
        stats = stats_of_masks(self.data["train"].masks, self.class_set.names)
        weights = stats.median_frequency_weights()
        if loss.class_weighting == "sqrt_median_frequency":  # rare classes favoured less
            weights = [w**0.5 for w in weights]
        if self.rt.is_main:
            write_json(
                self.run_dir / "class_weights.json", dict(zip(self.class_set.names, weights))
            )
        return weights

    def sampling_weights(self) -> torch.Tensor | None:
        """Per-image draw weights of ``data.sampling: rare_class`` (None: uniform epochs)."""
        data = self.config.data
        if data.sampling == "uniform":
            return None
        weights, probability = rare_class_weights(
            self.data["train"].masks, self.class_set.num_classes, data.rare_class_temperature
        )
        if self.rt.is_main:  # what the draws favour, for the user to see
            names = self.class_set.names
            write_json(
                self.run_dir / "sampling.json",
                {"class_probability": dict(zip(names, probability.tolist()))},
            )
        return weights

    def _build_model(self, pretrained: bool) -> nn.Module:
        model = build_model(self.config, self.class_set.num_classes, pretrained)
        if self.config.train.sync_batchnorm and self.rt.distributed:
            model = convert_sync_batchnorm(model, self.rt.device)
        model = model.to(self.rt.device)
        if self.rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _wrap_model(self) -> nn.Module:
        model: nn.Module = self.model
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.config.train.compile:
            model = torch.compile(model)
        return model

    def _follow_encoder_freeze(self) -> bool:
        """Freeze or release the pretrained encoder's levels as ``frozen_encoder_levels`` says
        for this step; True when that changed."""
        encoder = pretrained_encoder(self.model, self.config)
        levels = 0 if encoder is None else frozen_encoder_levels(self.config.train, self.step)
        if levels == self.frozen_levels:
            return False
        assert encoder is not None
        hold_fixed(encoder, levels)
        self.frozen_levels = levels
        return True

    def _new_average(self) -> WeightAverage | None:
        t = self.config.train
        if t.ema_decay > 0 or t.average_from > 0:
            return WeightAverage(self.model, t.ema_decay)
        return None

    def _resume(self) -> None:
        found = ckpt.latest_good_checkpoint(self.run_dir)
        if found is None:
            fix = (
                f"move {self.run_dir / 'checkpoints'} aside to start afresh there"
                if ckpt.checkpoint_paths(self.run_dir)
                else f"start it afresh with --out {self.run_dir}"
            )
            raise TrainingError(f"{self.run_dir}: no usable checkpoint to resume from; {fix}")
        path, state = found
        ckpt.load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and self.scaler.is_enabled():  # empty when saved without fp16
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.rt.device.type == "cuda" and len(state["rng"].get("cuda", [])):
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.rt.device)
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        if self.ema is not None and state.get("ema"):
            average = state["ema"]
            self.ema.load_state_dict(
                {**average, "weights": ckpt.with_defaults(self.model, average["weights"])}
            )
        elif self.ema is not None:  # averaging switched on at this resume: start from the weights
            self.ema = self._new_average()
        self.last_checkpoint = path
        if self.rt.is_main:
            print(f"resuming from {path} at step {self.step}", file=sys.stderr)
            for setting in changed_settings(self.config.to_dict(), state["config"]):
                print(f"warning: resuming with {setting}, not the run's value", file=sys.stderr)
            # What a killed run was writing (atomic writes' temporaries) will never be finished.
            for stale in [*self.run_dir.glob(".*.tmp*"), *self.run_dir.glob("*/.*.tmp*")]:
                stale.unlink(missing_ok=True)

    @property
    def step_runtime(self) -> Runtime:
        """The runtime of this step's training: its own precision while the encoder is frozen."""
        return self.frozen_rt if self.frozen_levels == FEATURE_LEVELS else self.rt

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated, snapshot and shipped: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.forward_model

    def budget_progress(self) -> float | None:
        """The share of ``train.time_budget_min`` spent, or None without a budget."""
        budget = self.config.train.time_budget_min
        return self.elapsed_s / (60 * budget) if budget > 0 else None

    def averaging_uniformly(self) -> bool:
        """Whether ``train.average_from`` of the run is behind us: of the steps or of the time
        budget, whichever ends first (as in the learning-rate schedule)."""
        t = self.config.train
        spent = max(self.step / t.training_iterations, self.budget_progress() or 0.0)
        return t.average_from > 0 and spent >= t.average_from

    def tick(self, clock: float) -> None:
        """Set ``elapsed_s`` from the loop's clock. Under a time budget every process takes rank
        0's reading, so that all use the same learning rate and stop at the same step."""
        elapsed = time.perf_counter() - clock
        if self.rt.distributed and self.config.train.time_budget_min > 0:
            shared = torch.tensor([elapsed], dtype=torch.float64, device=self.rt.device)
            dist.broadcast(shared, src=0)
            elapsed = float(shared)
        self.elapsed_s = elapsed

    def stop_requested(self, received: str | None) -> bool:
        """Whether any process was signalled to stop. Under DDP all must agree, so that they save
        and leave at the same step rather than leave the others waiting in a collective."""
        if not self.rt.distributed:
            return received is not None
        flag = torch.tensor([float(received is not None)], device=self.rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def budget_spent(self) -> bool:
        progress = self.budget_progress()
        return progress is not None and progress >= 1.0

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "model": ckpt.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "elapsed_s": self.elapsed_s,
            "lr": self.schedule(
                min(self.step, self.config.train.training_iterations - 1), self.budget_progress()
            ),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": (
                    torch.cuda.get_rng_state(self.rt.device)
                    if self.rt.device.type == "cuda"
                    else torch.empty(0, dtype=torch.uint8)
                ),
            },
            "best_miou": self.best_miou,
            "nonfinite_total": self.nonfinite_total,
            "config": self.config.to_dict(),
            "class_set": self.class_set.to_dict(),
            **({"domain": self.domain.to_dict()} if self.domain is not None else {}),
        }

    def save(self, path: Path | None = None) -> Path:
        """Save a checkpoint (rank 0 only); periodic ones rotate, keeping the newest few."""
        path = path or self.run_dir / "checkpoints" / f"step_{self.step:07d}.pt"
        if self.rt.is_main:
            try:
                ckpt.save_checkpoint(self._state(), path)
            except OSError as error:
                good = self.last_checkpoint or "none yet"
                raise TrainingError(
                    f"could not write checkpoint {path}: {error.strerror or error}; "
                    f"the last good checkpoint is {good}"
                ) from None
            if path.parent.name == "checkpoints":
                self.last_checkpoint = path
                for old in ckpt.checkpoint_paths(self.run_dir)[
                    self.config.train.keep_checkpoints :
                ]:
                    old.unlink(missing_ok=True)
                    old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path

    # -- one optimizer step ----------------------------------------------------------------
    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Accumulate ``accum_steps`` micro-batches, clip, and step (or skip a non-finite step)."""
        t = self.config.train
        lr = self.schedule(self.step, self.budget_progress())
        for group, in_encoder in zip(self.optimizer.param_groups, self.encoder_groups):
            group["lr"] = lr * t.encoder_lr_scale if in_encoder else lr
        if self._follow_encoder_freeze():  # DDP reduces what needed gradients when it was built
            self.forward_model = self._wrap_model()
        self.forward_model.train()
        # A skipped step must leave the model as it was, BatchNorm statistics included.
        buffers = [b.detach().clone() for b in self.model.buffers()]
        totals = self._accumulate_gradients(batches)
        self.scaler.unscale_(self.optimizer)
        max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_finite = bool(torch.isfinite(totals).all())
        grads_finite = bool(torch.isfinite(grad_norm))
        # fp16 loss scaling overflows now and then by design: the scaler shrinks its scale and the
        # step is skipped, but that is no fault to count towards max_nonfinite_steps.
        finite = loss_finite and (grads_finite or self.scaler.is_enabled())
        if loss_finite and grads_finite:
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.model, uniform=self.averaging_uniformly())
        else:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        loss, ce, dice = totals.tolist()
        return {
            "loss": loss,
            "ce": ce,
            "dice": dice,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "finite": finite,
        }

    def _accumulate_gradients(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Forward and backward ``accum_steps`` micro-batches; their mean loss, cross-entropy
        and Dice, over every process. The warm start runs in its own precision."""
        t, rt = self.config.train, self.step_runtime
        totals = torch.zeros(3, device=rt.device)
        for micro in range(t.accum_steps):
            images, masks = next(batches)
            x, y = prepare_batch(
                images.to(rt.device, non_blocking=True),
                masks.to(rt.device, non_blocking=True),
                self.config.augment,
                step_generator(t.seed, self.step, micro, rt.rank),
            )
            x = rt.prepare_input(x)
            sync = micro == t.accum_steps - 1 or not rt.distributed
            context = self.forward_model.no_sync() if not sync else contextlib.nullcontext()
            with context:
                with rt.autocast():
                    logits = self.forward_model(x)
                loss, terms = self.loss_fn(logits, y)
                self.scaler.scale(loss / t.accum_steps).backward()
            totals += torch.stack([loss.detach(), terms["ce"], terms["dice"]]) / t.accum_steps
        if rt.distributed:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
            totals /= rt.world_size
        return totals

    # -- evaluation, snapshots, logs --------------------------------------------------------
    def evaluate(self, max_batches: int, per_image: bool = False) -> dict[str, Any]:
        """Scores of the weights that ship over ``max_batches`` val batches (0: all of them)."""
        loader = val_loader(
            self.data["val"],
            self.config.train.batch_size,
            self.workers,
            self.rt.device,
            self.rt.rank,
            self.rt.world_size,
        )
        result = evaluate_model(
            self.eval_model,
            loader,
            self.class_set,
            self.rt,
            self.loss_fn,
            max_batches,
            per_image,
        )
        return result

    def calibrate(self, checkpoint: Path | None = None) -> Calibration:
        """Fit a temperature on the whole val split (in this process alone): of the weights that
        ship, set in them, or of those ``checkpoint`` ships, stored in that file."""
        loader = val_loader(
            self.data["val"], self.config.train.batch_size, self.workers, self.rt.device
        )
        width, height = self.config.data.size
        pixels = len(self.data["val"]) * width * height
        if checkpoint is not None:
            return calibrate_file(checkpoint, loader, self.rt, pixels, self.domain)
        # Unwrapped: a DDP forward in one process alone would wait for the others' buffers.
        return calibrate(ckpt.unwrap(self.eval_model), loader, self.rt, pixels)

    def snapshot(self) -> None:
        """A grid of fixed val images, spread over the split (consecutive frames of a video
        look alike): image | ground truth | prediction."""
        val = self.data["val"]
        count = min(self.config.train.snapshot_images, len(val))
        if count == 0 or not self.rt.is_main:
            return
        pairs = [val[i * len(val) // count] for i in range(count)]
        rows = comparison_rows(ckpt.unwrap(self.eval_model), pairs, self.rt)
        grid = viz.comparison_grid(rows, self.class_set)
        grid = np.concatenate([grid, viz.legend_strip(self.class_set, grid.shape[1])], axis=0)
        viz.save_image(grid, self.run_dir / "snapshots" / f"step_{self.step:07d}.png")


def train(
    config: Config, run_dir: Path, resume: bool = False, progress: bool = True
) -> TrainResult:
    """Train as configured, writing everything into ``run_dir``; resumable after any stop.

    One training at a time per folder: rank 0 holds ``run_dir/.lock`` while it runs.
    """
    with _one_run_per_folder(run_dir):
        if not resume and (ckpt.checkpoint_paths(run_dir) or (run_dir / "final.pt").exists()):
            raise TrainingError(
                f"{run_dir} already holds a run: continue it with --resume, or choose another "
                "folder"
            )
        if not resume:  # a killed first attempt's best weights must not pass for this run's
            for stale in (run_dir / "best.pt", run_dir / "best.pt.sha256"):
                stale.unlink(missing_ok=True)
        trainer = Trainer(config, run_dir, resume, progress)
        try:
            return _run(trainer)
        finally:
            if trainer.rt.distributed:
                # Free DDP before the process group: when DDP's reducer holds the last reference,
                # the group is destroyed with the GIL held while gloo's threads wait for it (a
                # hang at exit).
                trainer.forward_model = trainer.model
                gc.collect()
            shutdown(trainer.rt)


@contextlib.contextmanager
def _one_run_per_folder(run_dir: Path) -> Iterator[None]:
    """Rank 0 holds the run folder's lock; a second training into it stops with one line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if process_rank() != 0:
        yield
        return
    lock = run_dir / ".lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock))
        except BlockingIOError:
            holder = lock.read_text().strip() or "another process"
            raise TrainingError(
                f"{run_dir} is in use by another training (pid {holder}); wait for it or stop it"
            ) from None
        yield


def _run(trainer: Trainer) -> TrainResult:
    config, rt, run_dir = trainer.config, trainer.rt, trainer.run_dir
    t = config.train
    log = RunLog(run_dir, rt.is_main)
    if rt.is_main:
        _open_run_folder(trainer, log)
    batches = _batches(trainer)
    images_per_step = t.batch_size * t.accum_steps * rt.world_size
    consecutive_bad, step_seconds, logged_step = 0, 0.0, trainer.step
    bar = _progress_bar(trainer)
    clock = time.perf_counter() - trainer.elapsed_s  # a resumed run's budget goes on
    with StopSignal() as stop, bar:
        while trainer.step < t.training_iterations and not trainer.budget_spent():
            started = time.perf_counter()
            stats = trainer.train_step(batches)
            step_seconds += time.perf_counter() - started
            consecutive_bad = _count_nonfinite(trainer, stats["finite"], consecutive_bad)
            trainer.step += 1
            trainer.tick(clock)
            step = trainer.step
            last = step == t.training_iterations or trainer.budget_spent()
            bar.update(step - bar.n if t.time_budget_min <= 0 else int(trainer.elapsed_s) - bar.n)
            if step % t.log_interval == 0 or last:
                # Throughput of the training steps since the last row (evaluation excluded).
                images_per_s = images_per_step * (step - logged_step) / step_seconds
                step_seconds, logged_step = 0.0, step
                _log_step(trainer, log, bar, stats, images_per_s)
            if step % t.eval_interval == 0 or last:
                _periodic_eval(trainer, log, bar)
            if step % t.snapshot_interval == 0:
                trainer.snapshot()
            if step % t.save_model_interval == 0 or last:
                trainer.save()
            if trainer.stop_requested(stop.received):
                path = trainer.save()
                cause = stop.received or "a stop signal to another process"
                raise TrainingInterrupted(
                    f"{cause} received: saved {path} at step {step}; "
                    f"continue with --resume {run_dir}"
                )
            trainer.tick(clock)  # evaluations and saves count towards the budget too
    return _finish(trainer, log)


def _open_run_folder(trainer: Trainer, log: RunLog) -> None:
    """Rank 0: the config --resume reads back, the log cut to the checkpoint, the schedule plot."""
    t = trainer.config.train
    with atomic_path(trainer.run_dir / "config.yaml") as temporary:
        save_config(trainer.config, temporary)
    # Steps after the checkpoint (or, starting afresh, a killed first attempt's) come again.
    log.truncate(trainer.step)
    _announce(trainer)
    if t.time_budget_min <= 0:  # a budgeted run's decay follows the clock: see curves_lr
        viz.plot_schedule(
            trainer.schedule.values(),
            trainer.run_dir / "schedule.png",
            f"learning rate ({t.decay} decay)",
        )


def _batches(trainer: Trainer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's training batches, from the sample the checkpoint stopped at onwards."""
    t, rt = trainer.config.train, trainer.rt
    sampler = StreamBatchSampler(
        len(trainer.data["train"]),
        t.batch_size,
        t.seed,
        rt.rank,
        rt.world_size,
        start=trainer.step * t.accum_steps,
        weights=trainer.sampling_weights(),
    )
    return iter(train_loader(trainer.data["train"], sampler, trainer.workers, rt.device))


def _count_nonfinite(trainer: Trainer, finite: bool, consecutive_bad: int) -> int:
    """The skipped steps in a row after this one; too many in a row end the run."""
    if finite:
        return 0
    trainer.nonfinite_total += 1
    consecutive_bad += 1
    if consecutive_bad >= trainer.config.train.max_nonfinite_steps:
        raise TrainingError(
            f"non-finite loss or gradient in {consecutive_bad} steps in a row "
            f"(last at step {trainer.step}); last good checkpoint: "
            f"{trainer.last_checkpoint or 'none'}"
        )
    return consecutive_bad


def _log_step(
    trainer: Trainer, log: RunLog, bar: tqdm, stats: dict[str, float], images_per_s: float
) -> None:
    """One row of log.jsonl, and the progress bar's loss and learning rate."""
    row = {
        "step": trainer.step,
        **{k: v for k, v in stats.items() if k != "finite"},
        "skipped": trainer.nonfinite_total,
        "images_per_s": images_per_s,
        "memory_mb": _memory_mb(trainer.rt.device),
        "elapsed_s": trainer.elapsed_s,
    }
    log.append("log.jsonl", row)
    bar.set_postfix(step=trainer.step, loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}")


def _progress_bar(trainer: Trainer) -> tqdm:
    """Steps out of ``training_iterations``, or seconds out of the time budget."""
    t = trainer.config.train
    budget = t.time_budget_min > 0
    return tqdm(
        total=round(60 * t.time_budget_min) if budget else t.training_iterations,
        initial=int(trainer.elapsed_s) if budget else trainer.step,
        desc="train",
        unit="s" if budget else "step",
        # Seconds out of the budget: tqdm's rate column would read "1.00s/s".
        bar_format="{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]"
        if budget
        else None,
        # Redirected to a file, a bar is a stream of carriage returns: the evaluation lines say
        # how far the run is instead.
        disable=not (trainer.progress and trainer.rt.is_main and sys.stderr.isatty()),
        dynamic_ncols=True,
    )


def _announce(trainer: Trainer) -> None:
    """What the run is about to do, printed and written to ``run.json``: model, device, the
    resolved precision, data and schedule."""
    config, rt, t = trainer.config, trainer.rt, trainer.config.train
    model = ckpt.unwrap(trainer.model)
    pretrained = pretrained_encoder(model, config) is not None
    facts = {
        "encoder": config.model.encoder,
        "pretrained": pretrained,
        "parameters": count_parameters(model),
        "device": str(rt.device),
        "precision": _precision_name(
            trainer.step_runtime if t.freeze_encoder_levels == FEATURE_LEVELS else rt
        ),
        "channels_last": rt.channels_last,
        "processes": rt.world_size,
        "train_images": len(trainer.data["train"]),
        "val_images": len(trainer.data["val"]),
        "size": config.data.size,
        "images_per_step": t.batch_size * t.accum_steps * rt.world_size,
        "steps": t.training_iterations,
        "time_budget_min": t.time_budget_min,
        "start_step": trainer.step,
        "torch": torch.__version__,
    }
    if _precision_name(trainer.step_runtime) != facts["precision"]:  # a warm start, for now
        facts["precision_encoder_frozen"] = _precision_name(trainer.step_runtime)
    write_json(trainer.run_dir / "run.json", facts)
    frozen = facts.get("precision_encoder_frozen")
    weights = "ImageNet encoder" if pretrained else "random weights"
    budget = f" or {t.time_budget_min:g} min" if t.time_budget_min > 0 else ""
    print(
        f"training {config.model.encoder} ({weights}, {facts['parameters'] / 1e6:.2f} M "
        f"parameters) on {facts['device']} in {facts['precision']}"
        f"{f' ({frozen} while the encoder is frozen)' if frozen else ''}"
        f"{', channels_last' if rt.channels_last else ''}, {rt.world_size} process(es)\n"
        f"  {facts['train_images']} train / {facts['val_images']} val images at "
        f"{config.data.size[0]}x{config.data.size[1]}, {facts['images_per_step']} images a step, "
        f"steps {trainer.step + 1} to {t.training_iterations}{budget}; run folder {trainer.run_dir}",
        file=sys.stderr,
        flush=True,
    )


def _precision_name(rt: Runtime) -> str:
    return str(rt.amp_dtype or "fp32").removeprefix("torch.")


def _periodic_eval(trainer: Trainer, log: RunLog, bar: tqdm) -> None:
    result = trainer.evaluate(trainer.config.train.eval_iterations)
    scores = result["scores"]
    row = {
        "step": trainer.step,
        "val_loss": result["loss"],
        "miou": _finite(scores.miou),
        "mean_dice": _finite(scores.mean_dice),
        "pixel_accuracy": scores.pixel_accuracy,
        "iou": {n: _finite(v) for n, v in zip(trainer.class_set.names, scores.iou)},
        # training seconds so far (across resumes): runs of different speed compare at equal time
        "elapsed_s": trainer.elapsed_s,
    }
    log.append("eval.jsonl", row)
    log.plot()
    if trainer.rt.is_main:
        bar.write(
            f"step {trainer.step}: val loss {result['loss']:.4f}, mIoU {scores.miou:.4f} "
            f"({trainer.elapsed_s / 60:.1f} min)",
            file=sys.stderr,
        )
    if trainer.rt.is_main and scores.miou > trainer.best_miou:
        trainer.best_miou = float(scores.miou)
        trainer.save(trainer.run_dir / "best.pt")


def _finish(trainer: Trainer, log: RunLog) -> TrainResult:
    """Final checkpoint, shareable weights, a full validation pass and its metrics.json."""
    run_dir = trainer.run_dir
    final = trainer.save(run_dir / "final.pt")
    result = trainer.evaluate(max_batches=0, per_image=True)
    if trainer.rt.is_main and result["scores"].miou > trainer.best_miou:
        # Steps after the last periodic evaluation (a time budget ends anywhere) count too.
        trainer.best_miou = float(result["scores"].miou)
        trainer.save(run_dir / "best.pt")
    metrics = result["scores"].to_dict(trainer.class_set.names)
    metrics.update(step=trainer.step, split="val", val_loss=_finite(result["loss"]))
    if trainer.rt.is_main:
        calibration = _calibrate_outputs(trainer, final)
        metrics["calibration"] = calibration.to_dict()
        ckpt.unwrap(trainer.eval_model).domain = trainer.domain.to_dict()
        ckpt.export_safetensors(
            trainer.eval_model, trainer.config, trainer.class_set, run_dir / "model.safetensors"
        )
        write_json(run_dir / "metrics.json", metrics)
        _write_final_evaluation(trainer, result, metrics, calibration)
        trainer.snapshot()
        write_report(run_dir)
    log.close()
    best = run_dir / "best.pt"
    return TrainResult(run_dir, final, best if best.is_file() else None, metrics)


def _calibrate_outputs(trainer: Trainer, final: Path) -> Calibration:
    """The temperature of final.pt's weights (then of the exported ones), and of best.pt's when
    those are from an earlier step, each fitted on val and stored in its file with the domain
    profile of the training data (and each one's confidence on val)."""
    calibration = trainer.calibrate()
    print(f"calibration: {calibration.line()}", file=sys.stderr)
    train = trainer.data["train"]
    trainer.domain = profile_of(train, trainer.class_set, calibration.image_confidence)
    trainer.save(final)
    best = trainer.run_dir / "best.pt"
    if best.is_file() and ckpt.load_checkpoint(best)["step"] != trainer.step:
        trainer.calibrate(best)
    elif best.is_file():
        trainer.save(best)
    return calibration


def _write_final_evaluation(
    trainer: Trainer,
    result: dict[str, Any],
    metrics: dict[str, Any],
    calibration: Calibration,
    worst: int = 4,
) -> None:
    """``evaluation/`` of the final val pass: charts, confusion matrix and worst images, so that
    report.html shows them without a separate ``unetseg evaluate``."""
    image_mious = result["image_miou"]  # this rank's share: every world_size-th val image
    order = worst_first(image_mious)[:worst]
    val, step = trainer.data["val"], trainer.rt.world_size
    pairs = [val[i * step] for i in order]
    rows = comparison_rows(ckpt.unwrap(trainer.eval_model), pairs, trainer.rt)
    worst_scores = [image_mious[i] for i in order]
    sources = [val.sources[i * step] for i in order]
    scored = Scored(result["scores"], result["matrix"], rows, worst_scores, sources, calibration)
    write_evaluation(trainer.run_dir / "evaluation", metrics, scored, trainer.class_set, "val")


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
