#!/usr/bin/env python
"""``transfuse-download`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/download.py."""
import sys

from transfuse_bundle.tools.cli.download import main

if __name__ == "__main__":
    sys.exit(main())
