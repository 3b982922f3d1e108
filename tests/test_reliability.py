"""Fault injection and bad input: killed processes, full disks, signals, hostile files, fuzzing.

Each test names one row of docs/reliability.md. Real processes are killed where a real process
must die (``kill -9``, a dead DDP worker, signals); everything else runs in this process. All runs
use the tiny width-4 U-Net at 64x32 on one thread per process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_predict import make_checkpoint, random_image
from test_train import tiny_overrides

from unetseg.commands.cli import main
from unetseg.commands.demo import QUICK_RECIPE
from unetseg.commands.evaluate import evaluate_checkpoint
from unetseg.core import checkpoint as ckpt
from unetseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights
from unetseg.core.classes import camvid11, cityscapes19
from unetseg.core.config import from_dict, load_config, save_config
from unetseg.core.model import build_model
from unetseg.data.io import DataError, Sample, open_image, read_train_ids, to_rgb
from unetseg.engine.inference import Predictor, predict_image
from unetseg.engine.train import Trainer, TrainingError, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CHECKPOINT_FILES = ("checkpoints/step_*.pt", "best.pt", "final.pt")
SIGNALS, SIGNAL_IDS = [signal.SIGINT, signal.SIGTERM], ["SIGINT", "SIGTERM"]


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Match the subprocesses (OMP_NUM_THREADS=1), so that weights compare bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sigint_as_at_a_terminal() -> None:
    """A suite run as a background job (``cmd &``) passes on an ignored SIGINT; undo that, so the
    commands under test get SIGINT as a user at a terminal sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launched:
    """A command started in its own session; output goes to a file; killed at teardown."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        with open(log, "w") as handle:
            self.proc = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_sigint_as_at_a_terminal,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> object:
        """Poll ``condition`` until truthy; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"exited {self.proc.returncode} before {what}:\n{self.text()[-3000:]}")
            time.sleep(0.02)
        pytest.fail(f"no {what} within {timeout} s:\n{self.text()[-3000:]}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s:\n{self.text()[-3000:]}")

    def leftovers(self) -> list[int]:
        """Processes still in this command's own process group (workers it started)."""
        return [pid for pid in process_group(self.proc.pid) if pid != self.proc.pid]

    def end(self) -> None:
        """Kill what is left of this command's own process group (launcher and its workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def process_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc; zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """One torch thread here too, as in the subprocesses (OMP_NUM_THREADS=1): weights compare
    bit for bit, and tiny models do not stall on spinning threads when the cores are shared."""
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in this process write relative paths (runs/, data/) into tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    started: list[Launched] = []
    counter = iter(range(1000))

    def start(*args: object, module: str = "unetseg", env: dict | None = None) -> Launched:
        command = [sys.executable, "-m", module, *map(str, args)]
        log = tmp_path / f"process_{next(counter)}.log"
        launched = Launched(command, log, env or ENV, tmp_path)
        started.append(launched)
        return launched

    yield start
    for launched in started:
        launched.end()


@pytest.fixture
def ddp_train(launch) -> Iterator[tuple[Callable[..., Launched], str]]:
    """Starts ``unetseg train`` as two gloo workers under torchrun, and a tag that finds them;
    kills any worker left at the end."""
    tag = uuid.uuid4().hex  # torchrun puts each worker in its own session: found by this tag
    env = {**ENV, "UNETSEG_DIST_TIMEOUT": "30", "UNETSEG_TEST_TAG": tag, "PYTHONFAULTHANDLER": "1"}

    torchrun = ["--standalone", "--nproc_per_node=2", "-m", "unetseg", "train"]

    def start(*args: object) -> Launched:
        return launch(*torchrun, *args, module="torch.distributed.run", env=env)

    yield start, tag
    for pid in worker_pids(tag, rank=0) + worker_pids(tag, rank=1):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ddp_overrides(root: Path, cache: Path, iterations: int, **extra: object) -> list[str]:
    """``tiny_overrides`` for a torchrun pair: one micro-batch a step, no evaluation or snapshot."""
    never = iterations + 1
    return tiny_overrides(
        root,
        cache,
        **{
            "train.accum_steps": 1,
            "train.training_iterations": iterations,
            "train.eval_interval": never,
            "train.snapshot_interval": never,
            **extra,
        },
    )


def cli(args: list[object], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``unetseg ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The error line of a failed command, checked to be one line without a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def last_logged_step(run: Path) -> int:
    """The last step in ``log.jsonl`` so far (0 before the first, or while a row is half written)."""
    try:
        return max(logged_steps(run), default=0)
    except ValueError:
        return 0


def logged_steps(run: Path) -> list[int]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def checkpoint_files(run: Path) -> list[Path]:
    return [path for pattern in CHECKPOINT_FILES for path in sorted(run.glob(pattern))]


def temporaries(folder: Path) -> list[Path]:
    """Files left by atomic writes (``.name.tmpPID.ext``) and cache builds (``.tmp-*``)."""
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny_state(class_set_name: str = "cityscapes19", width: int = 4, step: int = 2) -> dict:
    """A minimal checkpoint state (what predict and load_weights need)."""
    class_set = camvid11() if class_set_name == "camvid11" else cityscapes19()
    config = from_dict({"model": {"width": width}, "data": {"size": [64, 32]}})
    torch.manual_seed(0)
    model = build_model(config, class_set.num_classes)
    return {
        "format": ckpt.FORMAT,
        "step": step,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "class_set": class_set.to_dict(),
    }


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's data (the zip stays well-formed)."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def replicate_scenes(root: Path, split: str, copies: int) -> None:
    """Hard-link every scene of ``split`` ``copies`` times under new names (a big set, fast)."""
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    for n in range(copies):
        for k, image in enumerate(images):
            city = image.parent.name
            stem = image.name[: -len("_leftImg8bit.png")]
            new = f"{city}_{900000 + n * len(images) + k:06d}_000019"
            os.link(image, image.with_name(f"{new}_leftImg8bit.png"))
            mask = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            os.link(mask, mask.with_name(f"{new}_gtFine_labelIds.png"))


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~400 train and ~200 val scenes at 512x256 (6 + 2 drawn, the rest hard links)."""
    from unetseg.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("big")
    synthesize(root, n_train=6, n_val=2, size=(512, 256), seed=0, progress=False)
    replicate_scenes(root, "train", 66)
    replicate_scenes(root, "val", 100)
    return root


# ================================================================ faults


def test_kill_9_at_random_moments_then_resume_equals_a_straight_run(
    synthetic_root: Path, tmp_path: Path, launch
) -> None:
    """Fault 1: SIGKILL three times at seeded random moments, resuming each time."""
    interval = 4
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{
            "model.dropout": 0.2,
            "train.accum_steps": 1,
            "train.training_iterations": 40,
            "train.save_model_interval": interval,
            "train.eval_interval": 20,
            "train.snapshot_interval": 1000,
        },
    )
    # the recipe `unetseg train` runs without --config, as the killed runs below do
    straight = load_config(None, [*QUICK_RECIPE, *overrides])
    train(straight, tmp_path / "straight", progress=False)  # one thread

    # Kill at seeded steps, one in each third of the run (so that a resume, which restarts up to
    # an interval back, never sees the previous run's log reach the next one): on the step, not
    # after a sleep, so that a fast or a loaded machine kills at the same points.
    rng = random.Random(20240607)
    targets = [rng.randint(6, 12), rng.randint(19, 25), rng.randint(31, 36)]
    run = tmp_path / "killed"
    process = launch("train", "--out", run, *overrides)
    kills = []
    for target in targets:
        process.wait_for(lambda t=target: last_logged_step(run) >= t, 180, f"step {target}")
        process.proc.kill()
        process.proc.wait()
        reached = last_logged_step(run)
        present = checkpoint_files(run)
        for path in present:
            load_checkpoint(path)  # every checkpoint file present at a kill verifies
        process = launch("train", "--resume", run)
        found = process.wait_for(
            lambda p=process: re.search(r"resuming from \S+ at step (\d+)", p.text()),
            120,
            "the resume message",
        )
        resumed = int(found.group(1))
        assert 0 <= reached - resumed <= interval, (reached, resumed)
        kills.append((reached, resumed, len(present)))
    assert process.finish(180) == 0, process.text()[-3000:]
    assert len(kills) == 3 and all(reached < 40 for reached, _, _ in kills), kills

    weights_equal(
        load_checkpoint(tmp_path / "straight" / "final.pt")["model"],
        load_checkpoint(run / "final.pt")["model"],
    )
    assert logged_steps(run) == list(range(1, 41))  # repeated steps are logged once
    assert not [p for p in temporaries(run) if "checkpoints" not in p.parts], temporaries(run)


def test_kill_mid_write_keeps_config_yaml_and_resume_drops_temporaries(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Fault 1 (details): files a killed run was writing are removed on resume, and a kill while
    config.yaml is rewritten at a (re)start keeps the old one (--resume reads it)."""
    import unetseg.engine.train as train_module

    config = load_config(
        None, tiny_overrides(synthetic_root, tmp_path / "cache", **{"train.training_iterations": 2})
    )
    run = tmp_path / "run"
    train(config, run, progress=False)
    before = (run / "config.yaml").read_text()
    stale = [run / ".best.tmp99999999.pt", run / "checkpoints" / ".step_0000004.tmp99999999.pt"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")

    def dies_mid_write(config, path):
        path.write_text(before[: len(before) // 3])
        raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs

    monkeypatch.setattr(train_module, "save_config", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, resume=True, progress=False)
    assert (run / "config.yaml").read_text() == before
    assert load_config(run / "config.yaml").to_dict() == config.to_dict()
    assert temporaries(run) == []


def test_corrupt_zip_without_sidecar_is_skipped_and_none_usable_fails_clearly(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    """Fault 2: no sidecar, corrupt zip -> skipped; nothing usable -> one line, exit 1."""
    run = tmp_path / "run"
    folder = run / "checkpoints"
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tiny_state(step=step), folder / f"step_{step:07d}.pt")
    flipped, truncated = folder / "step_0000006.pt", folder / "step_0000004.pt"
    flip_tensor_byte(flipped)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    for path in (flipped, truncated):
        path.with_name(path.name + ".sha256").unlink()

    path, state = ckpt.latest_good_checkpoint(run)
    assert path.name == "step_0000002.pt" and state["step"] == 2
    err = capsys.readouterr().err
    assert "step_0000006.pt: corrupted archive (CRC mismatch" in err
    assert "step_0000004.pt: truncated or corrupted archive" in err

    (folder / "step_0000002.pt").write_bytes(b"")
    save_config(
        load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache")), run / "config.yaml"
    )
    code, _, err = cli(["train", "--resume", run], capsys)
    assert code == 1
    assert error_line(err).startswith(f"error: {run}: no usable checkpoint to resume from; move")
    assert err.count("warning: ") == 3


def test_disk_full_while_a_checkpoint_is_written(synthetic_root: Path, tmp_path: Path, monkeypatch):
    """Fault 3: ENOSPC half-way through a checkpoint: the previous one survives, training stops."""
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache"))
    run = tmp_path / "run"
    real_save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):
        if "step_0000004" not in str(f):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(TrainingError) as caught:
        train(config, run, progress=False)
    message = str(caught.value)
    assert "step_0000004.pt" in message and "No space left on device" in message
    assert f"last good checkpoint is {run / 'checkpoints' / 'step_0000002.pt'}" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000002.pt",
        "step_0000002.pt.sha256",
    ]
    assert load_checkpoint(run / "checkpoints" / "step_0000002.pt")["step"] == 2
    assert temporaries(run) == []
    assert max(logged_steps(run)) == 4  # stopped at the failed save


def test_one_non_finite_step_is_skipped_counted_and_training_goes_on(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Fault 4: one step whose forward pass overflows (NaN activations) changes nothing, not even
    the BatchNorm statistics; it is counted in log.jsonl and the run finishes."""
    import unetseg.engine.train as train_module

    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache"))
    poison = {"on": False}
    original_prepare, original_step = train_module.prepare_batch, Trainer.train_step
    around: dict[str, dict[str, torch.Tensor]] = {}

    def poisoned_batch(*args, **kwargs):
        x, y = original_prepare(*args, **kwargs)
        return (x * float("nan"), y) if poison["on"] else (x, y)

    def step_3_is_poisoned(self, batches):
        if self.step != 2:
            return original_step(self, batches)
        around["before"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        poison["on"] = True
        try:
            return original_step(self, batches)
        finally:
            poison["on"] = False
            around["after"] = {k: v.clone() for k, v in self.model.state_dict().items()}

    monkeypatch.setattr(train_module, "prepare_batch", poisoned_batch)
    monkeypatch.setattr(Trainer, "train_step", step_3_is_poisoned)
    result = train(config, tmp_path / "run", progress=False)

    rows = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 1, 1, 1]
    # the skipped step's non-finite loss is logged as null (strict JSON)
    assert rows[2]["loss"] is None and all(isinstance(r["loss"], float) for r in rows[3:])
    weights_equal(around["before"], around["after"])  # parameters and BatchNorm buffers
    final = load_checkpoint(result.final_checkpoint)
    assert final["step"] == 6 and final["nonfinite_total"] == 1
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert result.metrics["val_loss"] == result.metrics["val_loss"]  # evaluation is not NaN


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_dead_ddp_worker_ends_the_launcher_and_the_pair_resumes(
    synthetic_root: Path, tmp_path: Path, ddp_train
) -> None:
    """Fault 5: SIGKILL rank 1 of a 2-process gloo run: all exit quickly; --resume completes."""
    start, tag = ddp_train
    overrides = ddp_overrides(synthetic_root, tmp_path / "cache", 12)
    run = tmp_path / "ddp"
    process = start("--out", run, *overrides)
    process.wait_for(lambda: list(run.glob("checkpoints/*.sha256")), 120, "a first checkpoint")
    rank_1 = process.wait_for(lambda: worker_pids(tag, rank=1), 10, "the rank-1 worker")
    os.kill(rank_1[0], signal.SIGKILL)
    killed_at = time.monotonic()
    code = finish_or_dump(process, 60, tag)
    assert code != 0
    assert time.monotonic() - killed_at < 60
    assert not worker_pids(tag, rank=0) and not worker_pids(tag, rank=1)

    process = start("--resume", run)
    assert finish_or_dump(process, 180, tag) == 0, process.text()[-3000:]
    assert re.search(r"resuming from \S+ at step \d+", process.text())
    assert load_checkpoint(run / "final.pt")["step"] == 12


def test_an_elastic_restart_without_its_run_folder_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The default folder name carries the start time: a restart would start a new run."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    code, _, err = cli(["train"], capsys)
    assert code == 2
    assert error_line(err) == (
        "error: an elastic restart (torchrun --max-restarts) needs the run's --out"
    )


def finish_or_dump(process: Launched, timeout: float, tag: str) -> int:
    """The launcher's exit status; if it hangs, the workers' Python stacks go to its log first."""
    try:
        return process.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in worker_pids(tag, rank=0) + worker_pids(tag, rank=1):
            os.kill(pid, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's stack
        time.sleep(3)
        pytest.fail(f"hung for {timeout} s:\n{process.text()[-12000:]}")


def worker_pids(tag: str, rank: int) -> list[int]:
    """Processes whose environment holds our tag and RANK=<rank> (found through /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"UNETSEG_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


def test_sigterm_during_training_saves_and_names_resume(
    synthetic_root: Path, tmp_path: Path, launch
) -> None:
    """Fault 6: SIGTERM to `unetseg train`: exit 130, a checkpoint saved, --resume named."""
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{
            "train.accum_steps": 1,
            "train.training_iterations": 200,
            "train.save_model_interval": 50,
        },
    )
    run = tmp_path / "run"
    process = launch("train", "--out", run, *overrides)
    process.wait_for(lambda: len(logged_steps(run)) >= 3, 120, "three training steps")
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(30) == 130
    text = process.text()
    found = re.search(
        r"error: SIGTERM received: saved (\S+) at step (\d+); continue with --resume (\S+)", text
    )
    assert found, text[-2000:]
    saved, step = Path(found.group(1)), int(found.group(2))
    assert Path(found.group(3)) == run
    assert load_checkpoint(saved)["step"] == step and 3 <= step < 50


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_sigterm_to_one_ddp_worker_stops_both_at_one_saved_step(
    synthetic_root: Path, tmp_path: Path, ddp_train
) -> None:
    """Fault 6 under DDP: SIGTERM to rank 1 alone: both ranks save one step and leave quickly."""
    start, tag = ddp_train
    overrides = ddp_overrides(
        synthetic_root, tmp_path / "cache", 5000, **{"train.save_model_interval": 1000}
    )
    run = tmp_path / "ddp"
    process = start("--out", run, *overrides)
    process.wait_for(lambda: len(logged_steps(run)) >= 3, 120, "three training steps")
    rank_1 = process.wait_for(lambda: worker_pids(tag, rank=1), 10, "the rank-1 worker")
    os.kill(rank_1[0], signal.SIGTERM)
    assert finish_or_dump(process, 60, tag) != 0
    text = process.text()
    found = re.search(
        r"a stop signal to another process received: saved (\S+) at step (\d+); "
        r"continue with --resume (\S+)",
        text,
    )
    assert found, text[-3000:]
    saved, step = Path(found.group(1)), int(found.group(2))
    assert Path(found.group(3)) == run
    assert load_checkpoint(saved)["step"] == step and 3 <= step < 1000
    assert f"SIGTERM received: saved {saved} at step {step}" in text  # rank 1, same step
    assert not worker_pids(tag, rank=0) and not worker_pids(tag, rank=1)


@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_signal_during_prepare_leaves_no_cache(big_root: Path, tmp_path: Path, launch, signum):
    """Fault 6: SIGINT/SIGTERM while `unetseg prepare` caches: no cache and no .tmp-* left."""
    cache = tmp_path / "cache"
    process = launch(
        "prepare", f"data.root={big_root}", f"data.cache_dir={cache}", "data.size=[64,32]"
    )
    process.wait_for(lambda: list(cache.glob(".tmp-*/images.npy")), 60, "a cache being built")
    time.sleep(0.3)
    process.proc.send_signal(signum)
    code = process.finish(30)  # a bound, not a speed: it stops at once or hangs
    assert code == 130, process.text()[-2000:]
    assert list(cache.iterdir()) == []  # neither a cache folder nor a .tmp-* folder
    time.sleep(0.2)
    assert process.leftovers() == []  # no orphaned decoding workers


def test_kill_9_during_prepare_leaves_no_decoding_worker(big_root: Path, tmp_path: Path, launch):
    """Fault 1 (prepare): SIGKILL of `unetseg prepare` mid-way takes its decoding workers along."""
    cache = tmp_path / "cache"
    process = launch(
        "prepare", f"data.root={big_root}", f"data.cache_dir={cache}", "data.size=[64,32]"
    )
    process.wait_for(process.leftovers, 60, "decoding workers")
    process.proc.kill()
    process.proc.wait()
    deadline = time.monotonic() + 5
    while process.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.leftovers() == []


@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_signal_during_predict_leaves_only_complete_files(tmp_path: Path, launch, signum) -> None:
    """Fault 6: SIGINT/SIGTERM during `unetseg predict` of 30 images: complete files only."""
    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    picture = Image.fromarray(random_image(800, 1600))
    for i in range(30):
        picture.save(inputs / f"street_{i:02d}.jpg", quality=80)
    process = launch("predict", "--checkpoint", checkpoint, "--input", inputs, "--output", output)
    process.wait_for(lambda: list(output.glob("*_color.png")), 60, "a first prediction")
    process.proc.send_signal(signum)
    code = process.finish(30)  # a bound, not a speed: it stops at once or hangs
    assert code == 130, process.text()[-2000:]
    written = sorted(output.iterdir())
    assert len(list(output.glob("*_color.png"))) < 30  # it was stopped mid-way
    assert temporaries(output) == []
    for path in written:
        with Image.open(path) as image:
            image.load()  # complete: decodes to the end
            assert image.size == (1600, 800)


@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_signal_during_evaluate_writes_no_metrics(big_root: Path, tmp_path: Path, launch, signum):
    """Fault 6: SIGINT/SIGTERM during `unetseg evaluate`: quick exit, no metrics.json."""
    state = tiny_state()
    state["config"]["data"].update(root=str(big_root), cache_dir=str(tmp_path / "cache"))
    checkpoint = tmp_path / "model.pt"
    ckpt.save_checkpoint(state, checkpoint)
    out = tmp_path / "evaluation"
    process = launch(
        "evaluate", "--checkpoint", checkpoint, "--full-res", "--out", out, "--device", "cpu"
    )
    process.wait_for(
        lambda: "evaluate val (full res):" in process.text(), 60, "the evaluation loop"
    )
    time.sleep(0.3)
    process.proc.send_signal(signum)
    code = process.finish(30)  # a bound, not a speed: it stops at once or hangs
    # The CLI turns SIGTERM into the same clean stop as Ctrl-C.
    assert code == 130, process.text()
    assert not (out / "metrics.json").exists()
    assert temporaries(out) == []


# ================================================================ bad input: configuration

MISSING = "nonexistent-data-root"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["train.batch_sise=4"],
            "train.batch_sise: unknown key (did you mean 'batch_size'?)",
            id="unknown-key",
        ),
        pytest.param(
            ["train.batch_size=four"], "train.batch_size: expected int, got 'four'", id="type"
        ),
        pytest.param(
            ["train.batch_size=0"], "train.batch_size: must be at least 1, got 0", id="batch-0"
        ),
        pytest.param(
            ["data.size=[100,64]"],
            "data.size: [100, 64] must be [width, height], both multiples of 16",
            id="size-16",
        ),
        pytest.param(
            ["train.min_lr=1e-2"],
            "train.min_lr: 0.01 is above train.base_lr 0.005",  # the quick recipe's rate
            id="min-lr",
        ),
        pytest.param(
            ["train.accum_steps=0"], "train.accum_steps: must be at least 1, got 0", id="accum-0"
        ),
        pytest.param(
            ["--config", "bad.yaml"],
            "bad.yaml: malformed YAML (line 4): expected ',' or ']'",
            id="malformed-yaml",
        ),
        pytest.param(
            ["--config", "nothere.yaml"], "nothere.yaml: config file not found", id="missing-file"
        ),
        pytest.param(
            ["--resume", "not-a-run"], "config.yaml: config file not found", id="resume-no-run"
        ),
        pytest.param(
            ["--config", "good.yaml", "train.batch_sise=4"],
            "error: command line: train.batch_sise: unknown key",  # not the file's typo
            id="override-typo-with-a-file",
        ),
        pytest.param(
            ["--config", "list.yaml", "train.batch_size=2"],
            "list.yaml: the top level must be a mapping of sections",
            id="list-yaml",
        ),
        pytest.param(
            ["good.yaml"],
            "'good.yaml': a configuration file is given as --config good.yaml",
            id="yaml-without-config",
        ),
    ],
)
def test_bad_config_on_the_command_line(tmp_path: Path, capsys, args, expected):
    """Bad input 7: one line naming the key or file, exit 2, no data touched."""
    (tmp_path / "bad.yaml").write_text("train:\n  batch_size: 2\n  base_lr: [1, 2\n")
    (tmp_path / "good.yaml").write_text("train:\n  batch_size: 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    code, _, err = cli(["train", "--out", "run", *args, f"data.root={MISSING}"], capsys)
    assert code == 2
    assert expected in error_line(err) and err.strip() == error_line(err)
    assert not (tmp_path / MISSING).exists() and not (tmp_path / "run").exists()


def test_bad_config_in_a_real_process(tmp_path: Path) -> None:
    """Bad input 7: the same through `python -m unetseg`: exit status 2, one stderr line."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetseg",
            "train",
            "train.batch_size=0",
            f"data.root={MISSING}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr == "error: train.batch_size: must be at least 1, got 0\n"
    assert list(tmp_path.iterdir()) == []


# ================================================================ bad input: images and masks


def save(array: np.ndarray, path: Path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_bad_images_and_masks_are_named_by_check_and_predict(tmp_path: Path, capsys) -> None:
    """Bad input 8: every bad file named by `data check` (exit 1) and `predict` (exit 1)."""
    images, masks = tmp_path / "data" / "train", tmp_path / "data" / "trainannot"
    rgb, gray = random_image(24, 32), np.full((24, 32), 3, np.uint8)
    fine = {
        "plain": lambda p: save(rgb, p),
        "rgba_image": lambda p: save(np.dstack([rgb, np.full((24, 32), 90, np.uint8)]), p),
        "palette_image": lambda p: Image.fromarray(rgb).convert("P").save(p),
        "deep_image": lambda p: save(gray.astype(np.uint16) * 5000, p),
    }
    for name, write in fine.items():
        images.mkdir(parents=True, exist_ok=True)
        write(images / f"{name}.png")
        save(gray, masks / f"{name}.png")
    bad_images = {
        "empty_image": b"",
        "truncated_image": (images / "plain.png").read_bytes()[:200],
        "text_image": b"these are not pixels\n",
        "bomb_image": png_header(100_000, 100_000),
    }
    for name, content in bad_images.items():
        (images / f"{name}.png").write_bytes(content)
        save(gray, masks / f"{name}.png")
    for name in ("rgba_mask", "rgb_mask", "bomb_mask", "size_mask", "value_mask", "palette_mask"):
        save(rgb, images / f"{name}.png")
    save(
        np.dstack([np.repeat(gray[..., None], 3, 2), np.full((24, 32), 255, np.uint8)]),
        masks / "rgba_mask.png",
    )
    save(np.repeat(gray[..., None], 3, 2), masks / "rgb_mask.png")
    (masks / "bomb_mask.png").write_bytes(png_header(100_000, 100_000))
    save(np.full((20, 32), 3, np.uint8), masks / "size_mask.png")
    save(np.full((24, 32), 200, np.uint8), masks / "value_mask.png")
    palette = Image.frombytes("P", (32, 24), gray.tobytes())  # indices 3, drawn in any colour
    palette.putpalette([(7 * i) % 256 for i in range(768)])
    palette.save(masks / "palette_mask.png")

    config = ["data.kind=folders", f"data.root={tmp_path / 'data'}", "data.class_set=camvid11"]
    code, out, err = cli(["data", "check", "--split", "train", *config], capsys)
    assert code == 1
    named = {Path(line.strip().split(":")[0]).name: line for line in out.splitlines()[1:]}
    expect = {
        "empty_image.png": "empty file (0 bytes)",
        "truncated_image.png": "truncated",
        "text_image.png": "not an image",
        "bomb_image.png": "decompression bomb",
        "rgba_mask.png": "mode RGBA, expected one index channel",
        "rgb_mask.png": "mode RGB, expected one index channel",
        "bomb_mask.png": "decompression bomb",
        "size_mask.png": "mask is 32x20 but its image size_mask.png is 32x24",
        "value_mask.png": "mask values [200] are not in class set 'camvid11'",
    }
    assert set(named) == set(expect), out
    for name, words in expect.items():
        assert words in named[name], named[name]
    assert out.splitlines()[0] == f"train: {len(fine) + 10} pairs, {len(expect)} problem(s)"
    palette_pair = Sample(images / "palette_mask.png", masks / "palette_mask.png")
    assert (read_train_ids(palette_pair, camvid11())[1] == 3).all()  # indices, not colours

    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    output = tmp_path / "predicted"
    args = ["predict", "--checkpoint", checkpoint, "--input", images, "--output", output]
    code, out, err = cli([*args, "--device", "cpu"], capsys)
    assert code == 1 and "Traceback" not in err
    failed = {
        Path(line.split(": ")[1]).name for line in err.splitlines() if line.startswith("skipped: ")
    }
    assert failed == {f"{name}.png" for name in bad_images}
    assert f"failed: {len(bad_images)} input(s), each named above" in err.splitlines()
    for name in [*fine, "rgba_mask", "rgb_mask"]:
        with Image.open(output / f"{name}_labelIds.png") as mask:
            assert mask.size == (32, 24), name
    for name in bad_images:
        assert not list(output.glob(f"{name}_*")), name


# ================================================================ bad input: checkpoints


@pytest.mark.parametrize(
    ("file", "model", "expected"),
    [
        pytest.param(
            ("camvid11", 4),
            ("cityscapes19", 4),
            "class count differs: head.weight is (11, 4, 1, 1) in the file, "
            "(19, 4, 1, 1) in the model",
            id="class-count",
        ),
        pytest.param(
            ("cityscapes19", 8), ("cityscapes19", 4), "architecture differs: ", id="width"
        ),
    ],
)
def test_load_weights_says_what_differs(file, model, expected) -> None:
    """Bad input 9: another class count or width: the message says which."""
    weights = tiny_state(*file)["model"]
    config = from_dict({"model": {"width": model[1]}})
    target = build_model(
        config, (camvid11() if model[0] == "camvid11" else cityscapes19()).num_classes
    )
    with pytest.raises(CheckpointError) as caught:
        load_weights(target, weights, Path("other.pt"))
    assert str(caught.value).startswith(f"other.pt: {expected}")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param("model.width=8", "architecture differs", id="width"),
        pytest.param("data.class_set=cityscapes24", "class count differs", id="class-count"),
    ],
)
def test_resume_with_another_model_fails_in_one_line(
    synthetic_root: Path, tmp_path: Path, capsys, override: str, expected: str
) -> None:
    """Bad input 9: `train --resume RUN` with another width or class set: exit 1, one line."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache"))
    save_config(config, run / "config.yaml")
    ckpt.save_checkpoint(tiny_state(), run / "checkpoints" / "step_0000002.pt")
    code, _, err = cli(["train", "--resume", run, override], capsys)
    assert code == 1
    assert expected in error_line(err) and "step_0000002.pt" in error_line(err)


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its CheckpointError must contain)."""
    marker = folder / "MARKER"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "random": (os.urandom(4096), "not a PyTorch checkpoint (not a zip archive"),
        "json": (json.dumps({"format": ckpt.FORMAT}).encode(), "not a PyTorch checkpoint"),
        "empty": (b"", "not a PyTorch checkpoint (an empty file)"),
        "plain_pickle": (
            pickle.dumps({"format": ckpt.FORMAT, "x": Payload(marker)}),
            "not a PyTorch checkpoint",
        ),
    }
    out = {name: (folder / f"{name}.pt", words) for name, (_, words) in files.items()}
    for name, (content, _) in files.items():
        out[name][0].write_bytes(content)
    torch.save({"format": ckpt.FORMAT, "x": Payload(marker)}, folder / "torch_pickle.pt")
    out["torch_pickle"] = (
        folder / "torch_pickle.pt",
        "refused to load: it would import ",
    )
    torch.save({"format": ckpt.FORMAT, "step": 1}, folder / "incomplete.pt")
    out["incomplete"] = (
        folder / "incomplete.pt",
        "incomplete checkpoint (no model, config, class_set)",
    )
    return out


def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path) -> None:
    """Bad input 9: random bytes, JSON, a code payload (pickle or torch.save): CheckpointError."""
    for name, (path, words) in hostile_files(tmp_path).items():
        with pytest.raises(CheckpointError) as caught:
            ckpt.model_from_checkpoint(path)
        assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value), name
        assert "weights_only" not in str(caught.value)  # never advise turning the guard off
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_hostile_checkpoints(tmp_path: Path, capsys, command) -> None:
    """Bad input 9: the same files through `unetseg predict/evaluate --checkpoint`: exit 1."""
    Image.fromarray(random_image(32, 48)).save(tmp_path / "image.png")
    for name, (path, words) in hostile_files(tmp_path / "files").items():
        args = ["--checkpoint", path, "--device", "cpu"]
        if command == "predict":
            args += ["--input", tmp_path / "image.png", "--output", tmp_path / "out"]
        code, _, err = cli([command, *args], capsys)
        assert code == 1, name
        assert words in error_line(err) and err.strip() == error_line(err), name
    assert not (tmp_path / "files" / "MARKER").exists()
    assert not (tmp_path / "out").exists()


# ================================================================ bad input: fuzzing

FORMATS = {  # PIL format -> modes it can write
    "PNG": ("L", "RGB", "RGBA", "P", "I;16"),
    "JPEG": ("L", "RGB"),
    "BMP": ("L", "RGB", "RGBA", "P"),
    "WEBP": ("L", "RGB", "RGBA", "P", "I;16"),
}
MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ")
FUZZ = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@st.composite
def encoded_images(draw) -> tuple[bytes, tuple[int, int]]:
    """A random valid image file: (bytes, (width, height))."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        channels = {"L": 1, "P": 1, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels.squeeze(2) if channels == 1 else pixels)
        if mode == "P":
            image = image.convert("P")
            if draw(st.booleans()):
                image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), (width, height)


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image file with bytes flipped and/or cut short."""
    data = bytearray(draw(encoded_images())[0])
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input"


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path = tmp_path_factory.mktemp("fuzz_model") / "model.pt"
    return Predictor.from_checkpoint(make_checkpoint(path, cityscapes19()), device="cpu")


def decode(path: Path, data: bytes) -> np.ndarray | None:
    """open_image + to_rgb; None where the documented DataError was raised."""
    path.write_bytes(data)
    try:
        image = open_image(path)
    except DataError as error:
        assert str(error).startswith(f"{path}: ")
        return None
    rgb = to_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (image.height, image.width, 3)
    return rgb


@settings(FUZZ, max_examples=1500)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(MAGIC), st.binary(max_size=600)).map(b"".join),
        damaged_images(),
    )
)
def test_fuzz_random_and_damaged_bytes_raise_only_data_error(fuzz_file: Path, data: bytes) -> None:
    """Bad input 10: random or damaged files decode or raise DataError, nothing else."""
    decode(fuzz_file, data)


@settings(FUZZ, max_examples=800)
@given(item=encoded_images())
def test_fuzz_valid_images_decode_at_their_size(fuzz_file: Path, item) -> None:
    """Bad input 10: every valid image of any mode and format decodes at its own size."""
    data, (width, height) = item
    rgb = decode(fuzz_file, data)
    assert rgb is not None and rgb.shape == (height, width, 3)


@settings(FUZZ, max_examples=300)
@given(item=st.one_of(encoded_images(), damaged_images().map(lambda d: (d, None))))
def test_fuzz_predict_image_keeps_the_size(fuzz_file: Path, tiny_predictor: Predictor, item):
    """Bad input 10: predict_image gives an (H, W) mask of valid ids for any decodable file."""
    data, size = item
    rgb = decode(fuzz_file, data)
    if rgb is None:
        assert size is None  # only damaged files may fail to decode
        return
    if size is None and rgb.shape[0] * rgb.shape[1] > 10**6:
        return  # a damaged header that declares a big image: decoding it was the test
    mask = predict_image(tiny_predictor, rgb)
    assert mask.dtype == np.uint8 and mask.shape == rgb.shape[:2]
    assert int(mask.max()) < tiny_predictor.class_set.num_classes


# ================================================================ second pass (issue 27)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            [{"name": "road", "color": [1, 2, 3]}, {"name": "road", "color": [4, 5, 6]}],
            r"class names must be distinct, \['road'\]",
        ),
        ([{"name": "road", "color": [300, 0, 0]}], r"colour \[300, 0, 0\] is not three integers"),
        ([{"name": "road", "color": [1.5, 0, 0]}], "is not three integers"),
    ],
)
def test_a_class_table_that_would_break_a_run_later_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture, classes: list, message: str
) -> None:
    """Duplicate names trained, then broke every evaluate and --resume; a colour above 255
    overflowed at the first evaluation. Both are refused before any work, with the file named."""
    table = tmp_path / "classes.yaml"
    table.write_text(yaml.safe_dump({"name": "mine", "classes": classes}))
    code, _, err = cli(["data", "check", "data.kind=folders", f"data.class_set={table}"], capsys)
    assert code == 2
    line = error_line(err)
    assert str(table) in line and re.search(message, line), line


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("class_set", {"name": "x", "names": ["a", "a"]}, "malformed class table"),
        ("class_set", [1, 2], "malformed class table"),
        ("ema", [1, 2], "malformed weight average"),
        ("ema", {"weights": "not weights"}, "malformed weight average"),
    ],
)
def test_a_checkpoint_with_a_malformed_part_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, field: str, value: object, message: str
) -> None:
    state = tiny_state()
    state[field] = value
    checkpoint = tmp_path / "bad.pt"
    ckpt.save_checkpoint(state, checkpoint)
    image = tmp_path / "a.png"
    Image.fromarray(random_image(32, 64)).save(image)
    code, _, err = cli(
        ["predict", "--checkpoint", checkpoint, "--input", image, "--output", tmp_path / "o"],
        capsys,
    )
    assert code == 1
    assert message in error_line(err) and str(checkpoint) in err


@pytest.mark.parametrize("target", ["model.json", "final.pt", "folder"])
def test_export_never_writes_over_its_metadata_a_checkpoint_or_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, target: str
) -> None:
    """``--output m.json`` wrote the metadata over the model, ``--output final.pt`` replaced the
    checkpoint with ONNX bytes; now only a .onnx path is accepted, and never a folder."""
    checkpoint = tmp_path / "final.pt"
    ckpt.save_checkpoint(tiny_state(), checkpoint)
    before = checkpoint.read_bytes()
    output = tmp_path / target
    if target == "folder":
        output = tmp_path / "folder.onnx"
        output.mkdir()
    code, _, err = cli(["export", "--checkpoint", checkpoint, "--output", output], capsys)
    assert code == 2
    assert str(output) in error_line(err)
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["final.pt", "final.pt.sha256", *(["folder.onnx"] if target == "folder" else [])]
    )


def test_one_training_per_run_folder_and_a_fresh_start_after_an_early_kill(
    synthetic_root: Path, tmp_path: Path, launch, capsys: pytest.CaptureFixture
) -> None:
    """Two trainings into one folder both ran to the end, interleaving their files; and a kill
    before the first checkpoint left a folder that neither --resume nor a fresh run accepted."""
    run = tmp_path / "run"
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{"train.training_iterations": 100000, "train.save_model_interval": 100000},
    )
    first = launch("train", "--out", run, *overrides)
    first.wait_for(lambda: last_logged_step(run) >= 2, 120, "a first logged step")
    for args in (["--out", run, *overrides], ["--resume", run]):
        code, _, err = cli(["train", *args], capsys)
        assert code == 1
        assert f"{run} is in use by another training (pid {first.proc.pid})" in error_line(err)
    first.proc.kill()
    first.proc.wait()
    assert not ckpt.checkpoint_paths(run)  # killed before its first checkpoint
    short = tiny_overrides(synthetic_root, tmp_path / "cache", **{"train.training_iterations": 3})
    code, _, err = cli(["train", "--out", run, *short], capsys)
    assert code == 0, err
    assert logged_steps(run) == [1, 2, 3]  # the killed attempt's rows are gone


@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_a_stop_to_the_process_group_with_loader_workers_saves_a_checkpoint(
    synthetic_root: Path, tmp_path: Path, launch, signum: int
) -> None:
    """A terminal's Ctrl-C reaches the whole process group: the loader workers died first and the
    loop failed ("DataLoader worker exited unexpectedly") without its interrupt checkpoint."""
    run = tmp_path / "run"
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{"data.num_workers": 1, "train.training_iterations": 100000},
    )
    process = launch("train", "--out", run, *overrides)
    process.wait_for(lambda: last_logged_step(run) >= 3, 120, "a third logged step")
    os.killpg(process.proc.pid, signum)
    assert process.finish(60) == 130, process.text()[-3000:]
    found = re.search(r"received: saved (\S+) at step (\d+)", process.text())
    assert found, process.text()[-3000:]
    assert load_checkpoint(Path(found.group(1)))["step"] == int(found.group(2)) >= 3
    assert "exited unexpectedly" not in process.text()
    deadline = time.monotonic() + 10  # the worker goes with the loader (it checks every 5 s)
    while process.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.leftovers() == []


def test_synth_refuses_a_tiny_size_and_names_a_file_in_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Tracebacks where one line was promised: ``synth --size 17x5``, and an output path that
    is a file (the file system's refusals are reported by the command line, one line each)."""
    code, _, err = cli(["synth", "--out", tmp_path / "s", "--size", "17x5", "--train", "1"], capsys)
    assert code == 2 and "size 17x5 is too small; use at least 32x16" in error_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(["synth", "--out", blocker, "--train", "1", "--val", "0"], capsys)
    assert code == 1 and str(blocker) in error_line(err)


def test_memory_stays_bounded_on_large_photos(tmp_path: Path) -> None:
    """Six 20-megapixel photos: one at 62 MP peaked at 5.8 GB and eight at 13.3 GB (float
    copies in the overlay, every writer thread and the read-ahead holding full-size images);
    now the photos in flight are bounded by pixels and the overlay is blended in uint8."""
    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = Image.fromarray(random_image(50, 40)).resize((4000, 5000), Image.Resampling.BILINEAR)
    for i in range(6):
        photo.save(inputs / f"photo_{i}.jpg", quality=80)
    code = (
        "import resource, sys; from unetseg.commands.cli import main; "
        f"status = main(['predict', '--checkpoint', {str(checkpoint)!r}, '--input', "
        f"{str(inputs)!r}, '--output', {str(tmp_path / 'out')!r}, '--device', 'cpu']); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert len(list((tmp_path / "out").glob("*_color.png"))) == 6
    assert peak_mb < 1500, peak_mb  # one photo is 60 MB as RGB, the six 360 MB


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str) -> Iterator[Path]:
    """A real, small file system (tmpfs) at ``folder``; the test is skipped where none can be
    mounted (not root, or no mount in this sandbox)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_really_full_disk_is_one_line_while_training_and_caching(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 2 MB tmpfs as the run folder gave a traceback from torch.save; as the cache, prepare died
    of SIGBUS (a memory-mapped write to a sparse file) and left .tmp-* behind."""
    with tiny_disk(tmp_path / "disk", "400k") as disk:
        overrides = tiny_overrides(
            synthetic_root, tmp_path / "cache", **{"train.training_iterations": 50}
        )
        code, _, err = cli(["train", "--out", disk / "run", *overrides], capsys)
        assert code == 1
        assert "No space left on device" in error_line(err), err
    with tiny_disk(tmp_path / "cachedisk", "16k") as disk:
        args = [
            "prepare",
            f"data.root={synthetic_root}",
            f"data.cache_dir={disk}",
            "data.size=[64,32]",
        ]
        code, _, err = cli(args, capsys)
        assert code == 1
        assert "No space left on device" in error_line(err), err
        assert list(disk.iterdir()) == []  # no half-built cache


def test_links_in_an_input_folder_are_named_or_followed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A broken link is a skipped input that says so; a link loop is walked once; an empty folder
    is an error, not "wrote 0"."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(random_image(24, 32)).save(images / "sub" / "good.png")
    (images / "gone.png").symlink_to(tmp_path / "deleted.png")
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)
    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    args = ["predict", "--checkpoint", checkpoint, "--device", "cpu", "--output"]
    code, out, err = cli([*args, tmp_path / "out", "--input", images], capsys)
    assert code == 1 and "Traceback" not in err
    assert f"skipped: {images / 'gone.png'}: broken symbolic link" in err.splitlines()
    assert "wrote 1 prediction set(s)" in out
    assert (tmp_path / "out" / "sub" / "good_labelIds.png").is_file()

    (tmp_path / "empty").mkdir()
    code, _, err = cli([*args, tmp_path / "out2", "--input", tmp_path / "empty"], capsys)
    assert code == 1
    assert error_line(err).startswith(
        f"error: {tmp_path / 'empty'}: no images or clips in this folder"
    )


def test_an_empty_split_is_a_problem_not_a_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    for folder in ("train", "trainannot", "val", "valannot"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(random_image(24, 32)).save(root / "train" / "a.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "trainannot" / "a.png")
    folders = ["data.kind=folders", f"data.root={root}", "data.class_set=camvid11"]
    code, out, _ = cli(["data", "check", *folders], capsys)
    assert code == 1
    assert out.splitlines()[-2:] == [
        "val: 0 pairs, 1 problem(s)",
        f"  val: no samples of split 'val' under {root}",
    ]
    checkpoint = make_checkpoint(tmp_path / "model.pt", camvid11())
    with pytest.raises(DataError, match=r"^val: no samples of split 'val' under "):
        evaluate_checkpoint(checkpoint, full_res=True, overrides=folders, progress=False)


def test_config_show_prints_what_a_command_would_use(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, _ = cli(["config", "show", "train.base_lr=3e-4", "data.size=256x128"], capsys)
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["base_lr"] == 3e-4 and shown["data"]["size"] == [256, 128]
    assert from_dict(shown).to_dict() == shown  # every section.key, loadable as a recipe
    code, _, err = cli(["config", "show", "train.base_lr=fast"], capsys)
    assert code == 2 and error_line(err).startswith("error: command line: train.base_lr")


def test_report_rebuilds_a_run_folders_page(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    train(
        load_config(None, tiny_overrides(synthetic_root, tmp_path / "cache")), run, progress=False
    )
    (run / "report.html").unlink()
    code, out, _ = cli(["report", run], capsys)
    assert code == 0 and out.strip() == f"report: {run / 'report.html'}"
    assert 'id="confusion"' in (run / "report.html").read_text()
    code, _, err = cli(["report", tmp_path], capsys)
    assert code == 2
    assert error_line(err) == f"error: {tmp_path}: not a run folder (no config.yaml)"


@pytest.mark.parametrize(
    ("missing", "command"),
    [("onnxscript", "export"), ("onnxruntime", "predict")],
    ids=["export", "predict-onnx"],
)
def test_a_missing_onnx_package_names_the_pip_install(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, missing, command
) -> None:
    checkpoint = make_checkpoint(tmp_path / "model.pt", cityscapes19())
    if command == "predict":
        assert (
            main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
            == 0
        )
        Image.fromarray(random_image(24, 32)).save(tmp_path / "a.png")
        args = ["predict", "--onnx", tmp_path / "m.onnx", "--input", tmp_path / "a.png"]
    else:
        args = ["export", "--checkpoint", checkpoint]
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    code, _, err = cli([*args, "--out", tmp_path / "out.onnx"], capsys)
    assert code == 1
    assert error_line(err).endswith(
        f"needs {missing}, which is not installed: pip install 'unetseg[onnx]'"
    )


def test_train_without_a_config_runs_the_quick_recipe_and_says_so(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    short = tiny_overrides(synthetic_root, tmp_path / "cache", **{"train.training_iterations": 2})
    code, _, err = cli(["train", "--out", run, *short], capsys)
    assert code == 0
    assert "no --config: the demo's quick recipe" in err
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert used["model"]["dropout"] == 0.0 and used["augment"]["scale_min"] == 1.0  # not defaults
    assert used["model"]["width"] == 4  # the command line still decides
