#!/usr/bin/env python
"""``transfuse-benchmark`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/benchmark.py."""
import sys

from transfuse_bundle.tools.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
