#!/usr/bin/env python
"""``transfuse-prepare-data`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/prepare_data.py."""
import sys

from transfuse_bundle.tools.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
