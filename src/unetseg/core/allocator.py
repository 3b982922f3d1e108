"""Run the process under mimalloc: large tensors then stop costing a page-fault storm per step.

glibc's malloc hands every buffer of 32 MiB or more back to the kernel when it is freed, so each
training step maps and faults in its big activations again (a fifth of the time goes to the
kernel on a small CPU). mimalloc, told never to purge (``MIMALLOC_PURGE_DELAY=-1``), keeps them;
width-32 U-Net training at 512x256 ran 1.15x faster with it here (benchmarks/RESULTS.md). An
allocator has to be chosen before the process starts, so the entry point re-executes itself once
with ``LD_PRELOAD``. ``UNETSEG_ALLOCATOR=system`` keeps glibc (memory freed is then returned at once).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LIBRARY = (
    Path("cmeel.prefix") / "lib" / "libmimalloc.so.3"
)  # where the cmeel-mimalloc wheel puts it
PRELOADED = "UNETSEG_ALLOCATOR_PRELOADED"


def mimalloc_library() -> Path | None:
    """The mimalloc shared library of the installed ``cmeel-mimalloc`` wheel, if any."""
    for entry in sys.path:
        candidate = Path(entry or ".") / LIBRARY
        if candidate.is_file():
            return candidate.resolve()
    return None


def use_fast_allocator() -> None:
    """Re-execute this very command under mimalloc (Linux only; once; unless opted out)."""
    if (
        sys.platform != "linux"
        or os.environ.get(PRELOADED)
        or os.environ.get("UNETSEG_ALLOCATOR", "mimalloc") == "system"
    ):
        return
    library = mimalloc_library()
    if library is None:
        return
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD", "")]))
    env = {**os.environ, PRELOADED: "1", "LD_PRELOAD": preload}
    env.setdefault("MIMALLOC_PURGE_DELAY", "-1")
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as error:  # keep going with the system allocator rather than fail
        print(f"warning: could not switch to mimalloc ({error})", file=sys.stderr)
