"""``python -m unetseg`` (and ``torchrun -m unetseg``): the ``unetseg`` command."""

import sys

from unetseg.commands.cli import entry

sys.exit(entry())
