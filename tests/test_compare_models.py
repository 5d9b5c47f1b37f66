"""The comparison command trains and evaluates other networks through the same bundle, on real images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transfuse_bundle.data import write_datalist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_models_trains_each_network_on_real_images(tmp_path):
    datalist = tmp_path / "kvasir.json"
    write_datalist(ROOT.parent / "shared" / "data" / "kvasir_seg", datalist, num_training=6, num_validation=2, num_test=3)
    models = ["TransUNet", "MedT", "TransFuse-S concat+res (E.5)"]
    subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_models.py"), "--dataset_dir", str(datalist),
                    "--models", *models, "--epochs", "1", "--batch_size", "3", "--num_workers", "0",
                    "--latency_iters", "1", "--out", str(tmp_path / "out")], check=True, cwd=tmp_path, timeout=900)
    rows = {r["model"]: r for r in json.loads((tmp_path / "out" / "comparison.json").read_text())}
    assert list(rows) == models
    assert rows["TransUNet"]["params"] > 100e6 > rows["TransFuse-S concat+res (E.5)"]["params"] > 20e6 > rows["MedT"]["params"]
    for row in rows.values():
        assert 0.0 <= row["mean_dice"] <= 1.0 and 0.0 <= row["mean_iou"] <= row["mean_dice"] + 1e-6
        assert row["latency_ms"] > 0 and row["train_s"] > 0
        # each model was evaluated by the bundle on every test image
        per_case = tmp_path / "out" / re.sub(r"[^a-z0-9]+", "-", row["model"].lower()).strip("-") / "eval" / "per_case.csv"
        assert len(per_case.read_text().strip().splitlines()) == 1 + 3
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in models)
