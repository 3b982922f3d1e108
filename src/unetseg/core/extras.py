"""Optional packages, imported where a command needs them: a missing one is one error line
naming the ``pip install`` that adds it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    """An optional package is not installed; the message names the pip install."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or MissingExtra naming the ``unetseg[extra]`` that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{purpose} needs {module}, which is not installed: pip install 'unetseg[{extra}]'"
        ) from None
