#!/usr/bin/env python
"""``transfuse-gpu-check`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/gpu_check.py."""
import sys

from transfuse_bundle.tools.cli.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
