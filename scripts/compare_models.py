#!/usr/bin/env python
"""``transfuse-compare`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/compare_models.py."""
import sys

from transfuse_bundle.tools.cli.compare_models import main

if __name__ == "__main__":
    sys.exit(main())
