#!/usr/bin/env python
"""``transfuse-export`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/cli/export.py."""
import sys

from transfuse_bundle.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
