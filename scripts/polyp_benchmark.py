#!/usr/bin/env python
"""``transfuse-polyp-benchmark`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/polyp_benchmark.py."""
import sys

from transfuse_bundle.tools.cli.polyp_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
