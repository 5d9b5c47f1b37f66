"""The command-line tools: one module per command, each with ``main(argv=None) -> int`` (the exit status).

A module holds only its ``argparse`` parser and the call into the package; the work is done elsewhere
in :mod:`transfuse_bundle`. ``pyproject.toml`` (``[project.scripts]``) installs each as a console command
(``transfuse-benchmark`` runs :func:`transfuse_bundle.tools.cli.benchmark.main`, ...), and ``scripts/<module>.py``
runs the same ``main`` from a checkout (after ``pip install -e .``).
"""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` type: an integer >= ``minimum``, so that e.g. ``--num_workers -1`` is refused in one line
    before any work starts instead of failing hours later inside a run."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse
