"""Shared test setup. Tests never download: hubs are switched off before anything imports them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
# With other processes on the same cores, OpenMP threads that spin-wait make torch 10-100x slower
# (a 64x64 TransFuse-S step: 0.7 s passive, 10-24 s spinning, measured on the 2-core CI machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SUITE_DISK_GB = 2.5  # peak size of pytest's temporary folders (measured: 2.4 GB)


def pytest_report_header(config):
    """States the free disk next to what the suite needs: a full disk fails whichever test writes next."""
    import shutil
    import tempfile

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    warning = "" if free_gb > SUITE_DISK_GB else "  <-- NOT ENOUGH: tests that write files will fail"
    return f"free disk for temporary files: {free_gb:.1f} GB (the suite needs about {SUITE_DISK_GB} GB){warning}"
