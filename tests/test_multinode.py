"""Several machines through torchrun's own rendezvous, tried on this one: two agents on
127.0.0.1, one training process each, as two nodes would run them; and torchrun restarting the
workers of a failed job by itself (``--max-restarts``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_train import assert_same_weights, equivalence_overrides, tiny_overrides

from unetseg.core.checkpoint import latest_good_checkpoint, load_checkpoint
from unetseg.core.config import load_config
from unetseg.engine.train import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "UNETSEG_DIST_TIMEOUT": "60"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node(rank: int, port: int, run: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    """One torchrun agent of a two-node job (the first hosts the rendezvous store)."""
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=unetseg-test",
        f"--rdzv-conf=is_host={int(rank == 0)}",
        "-m", "unetseg", "train", "--out", str(run), *overrides,
    ]  # fmt: skip
    with open(log, "w") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc: torchrun starts each worker in a session of
    its own, so killing the agent's process group would leave its worker training."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending.extend(children.get(tree[-1], []))
    return tree


def kill_node(process: subprocess.Popen) -> None:
    """kill -9 of an agent and everything it started, as when a machine goes away."""
    for pid in process_tree(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Callable[[Path, list[str]], list[subprocess.Popen]]]:
    """Starts the two agents of a job on a free port; kills what is left of them at the end."""
    started: list[subprocess.Popen] = []

    def start(run: Path, overrides: list[str]) -> list[subprocess.Popen]:
        port = free_port()
        nodes = [node(r, port, run, overrides, tmp_path / f"node{r}.log") for r in (0, 1)]
        started.extend(nodes)
        return nodes

    yield start
    for process in started:
        kill_node(process)


def test_two_nodes_train_as_one_process_with_the_global_batch(synthetic_root, tmp_path, two_nodes):
    common = equivalence_overrides(synthetic_root, tmp_path / "cache")
    train(load_config(None, [*common, "train.batch_size=4"]), tmp_path / "single", progress=False)
    nodes = two_nodes(tmp_path / "two", [*common, "train.batch_size=2"])
    for index, process in enumerate(nodes):
        assert process.wait(timeout=300) == 0, (tmp_path / f"node{index}.log").read_text()[-3000:]
    assert_same_weights(tmp_path / "single", tmp_path / "two")
    # Only rank 0 wrote the run folder: one line per step, one set of checkpoints.
    steps = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(steps) == 3
    assert load_checkpoint(tmp_path / "two" / "final.pt")["step"] == 3


def test_a_node_that_dies_ends_the_other_with_a_clear_line(synthetic_root, tmp_path, two_nodes):
    """kill -9 of one agent (and its worker) mid-run: the other stops within a bounded time
    instead of waiting forever in a collective, and --resume continues from the last checkpoint."""
    run = tmp_path / "run"
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{"train.training_iterations": 100000, "train.save_model_interval": 2},
    )
    first, second = two_nodes(run, overrides)
    deadline = time.monotonic() + 300
    while not list(run.glob("checkpoints/*.sha256")) and time.monotonic() < deadline:
        assert first.poll() is None and second.poll() is None, (tmp_path / "node0.log").read_text()
        time.sleep(0.1)
    kill_node(second)
    code = first.wait(timeout=240)  # a bound, not a speed: it ends, or it hangs
    assert code != 0
    log = (tmp_path / "node0.log").read_text()
    assert "error" in log.lower(), log[-3000:]
    found = latest_good_checkpoint(run)
    assert found is not None
    _, state = found
    target = int(state["step"]) + 2  # two steps more, in one process
    resumed = load_config(None, [*overrides, f"train.training_iterations={target}"])
    result = train(resumed, run, resume=True, progress=False)
    assert load_checkpoint(result.final_checkpoint)["step"] == target


def test_an_elastic_restart_continues_from_the_last_checkpoint_by_itself(synthetic_root, tmp_path):
    """torchrun --max-restarts=1, its worker killed (kill -9) as it starts step 4: the restarted
    worker resumes from the step-2 checkpoint on its own and ends with the weights of a process
    that was never stopped. One worker: with two, the restarted pair's Gloo connection timed out
    once under load ("connectFullMesh ... Connection refused"; docs/reliability.md)."""
    common = equivalence_overrides(
        synthetic_root,
        tmp_path / "cache",
        **{"train.training_iterations": 6, "train.save_model_interval": 2, "train.log_interval": 1},
    )
    train(load_config(None, [*common, "train.batch_size=2"]), tmp_path / "single", progress=False)
    run = tmp_path / "elastic"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "--max-restarts=1", "--monitor-interval=0.1", str(Path(__file__).with_name("crash_once.py")),
        "train", "--out", str(run), *common, "train.batch_size=2",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env={**ENV, "CRASH_AT_STEP": "3", "CRASH_RANK": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "step_0000002.pt at step 2" in log, log[-4000:]  # the restart resumed, not restarted
    assert_same_weights(tmp_path / "single", run)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # each step logged once, the lost ones again
