"""Shared test setup. Tests never download: hubs are switched off before anything imports them."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def check_binary_report():
    """The report checks shared by the real-data trainings (Kvasir-SEG, PH2): see :func:`_check_binary_report`."""
    return _check_binary_report


def _check_binary_report(metrics: dict, out: Path, num_cases: int) -> None:
    """Range and consistency of a binary 2D evaluation report whose images all hold the foreground: the
    empty-mask counts, NSD, the ISIC 2017 metrics and the polyp toolbox metrics, in metrics.json and
    per_case.csv alike (no NaN or inf anywhere)."""
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == num_cases and all(cell not in ("", "nan", "inf") for row in rows for cell in row.values())
    empty = metrics["empty_cases"]
    assert empty["truth_empty"] == empty["both_empty"] == 0  # every image holds the foreground
    assert empty["prediction_empty"] == sum(r["empty"] == "prediction_empty" for r in rows)
    for key in ("sensitivity", "specificity", "thresholded_jaccard", "nsd"):
        assert 0.0 <= metrics[key] <= 1.0, key
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(metrics[key], abs=1e-5), key
    assert metrics["thresholded_jaccard"] <= metrics["mean_iou"]
    assert np.mean([float(r["hd95"]) for r in rows]) == pytest.approx(metrics["hd95"], rel=1e-5)  # every case counted
    toolbox = metrics["polyp_toolbox"]
    assert toolbox["num_cases"] == num_cases
    for key in ("mdice", "miou", "wfm", "sm", "mean_em", "max_em", "mae"):
        assert 0.0 <= toolbox[key] <= 1.0, key
    assert toolbox["miou"] <= toolbox["mdice"] and toolbox["mean_em"] <= toolbox["max_em"]
    for key in ("mdice", "miou", "wfm", "sm", "mae"):
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(toolbox[key], abs=1e-5), key
    print(f"new metrics: {({k: metrics[k] for k in ('sensitivity', 'specificity', 'thresholded_jaccard', 'nsd', 'empty_cases')})} "
          f"toolbox {toolbox}")
