#!/usr/bin/env python
"""``transfuse-quantize`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/quantize.py."""
import sys

from transfuse_bundle.tools.cli.quantize import main

if __name__ == "__main__":
    sys.exit(main())
