#!/usr/bin/env python
"""``transfuse-package`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/package_bundle.py."""
import sys

from transfuse_bundle.tools.cli.package_bundle import main

if __name__ == "__main__":
    sys.exit(main())
