"""The command-line tools: one module per command, each with ``main(argv=None) -> int`` (the exit status).

A module holds only its ``argparse`` parser and the call into the package; the work is done elsewhere
in :mod:`transfuse_bundle`. ``pyproject.toml`` (``[project.scripts]``) installs each as a console command
(``transfuse-benchmark`` runs :func:`transfuse_bundle.cli.benchmark.main`, ...), and ``scripts/<module>.py``
runs the same ``main`` from a checkout (after ``pip install -e .``).
"""
