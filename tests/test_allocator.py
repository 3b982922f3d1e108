"""The entry point re-executes itself under mimalloc when the wheel is there, once, unless opted out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from unetseg.core.allocator import PRELOADED, mimalloc_library

PROBE = (
    "import os; from unetseg.core.allocator import use_fast_allocator; use_fast_allocator(); "
    "maps = open('/proc/self/maps').read(); "
    "print('libmimalloc' in maps, os.environ.get('MIMALLOC_PURGE_DELAY'), "
    "os.environ.get('LD_PRELOAD', '').count('libmimalloc'))"
)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or mimalloc_library() is None, reason="needs Linux and cmeel-mimalloc"
)


def run_probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in (PRELOADED, "LD_PRELOAD")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_process_runs_under_mimalloc_that_keeps_freed_memory():
    assert run_probe() == "True -1 1"


def test_the_system_allocator_on_request():
    assert run_probe(UNETSEG_ALLOCATOR="system") == "False None 0"


def test_an_already_switched_process_is_not_switched_again():
    assert run_probe(**{PRELOADED: "1"}) == "False None 0"
