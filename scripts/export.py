#!/usr/bin/env python
"""``transfuse-export`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/export.py."""
import sys

from transfuse_bundle.tools.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
