#!/usr/bin/env python
"""``transfuse-monailabel-app`` from a checkout (after ``pip install -e .``); options: ``--help``, code: transfuse_bundle/tools/cli/make_monailabel_app.py."""
import sys

from transfuse_bundle.tools.cli.make_monailabel_app import main

if __name__ == "__main__":
    sys.exit(main())
