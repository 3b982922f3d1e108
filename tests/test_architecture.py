"""The layers of the package, as pyproject.toml declares them: commands -> engine -> data -> core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_layer_contract_holds() -> None:
    """import-linter's own check, as ``make lint`` runs it: no import runs back up a layer."""
    lint = Path(sys.executable).with_name("lint-imports")
    completed = subprocess.run(
        [str(lint), "--config", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "1 kept, 0 broken" in completed.stdout


def test_the_public_api_names_resolve() -> None:
    """Every name ``unetseg`` exports is importable, and ``import unetseg`` loads no torch."""
    code = (
        "import sys, unetseg; assert 'torch' not in sys.modules; "
        "[getattr(unetseg, n) for n in unetseg.__all__]; print(len(unetseg.__all__))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 10
