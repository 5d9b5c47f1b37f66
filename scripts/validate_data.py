#!/usr/bin/env python
"""``transfuse-validate-data`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/validate_data.py."""
import sys

from transfuse_bundle.tools.cli.validate_data import main

if __name__ == "__main__":
    sys.exit(main())
