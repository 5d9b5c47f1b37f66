#!/usr/bin/env python
"""``transfuse-load-test`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/load_test.py."""
import sys

from transfuse_bundle.tools.cli.load_test import main

if __name__ == "__main__":
    sys.exit(main())
