"""The GPU check (transfuse-gpu-check) in its tiny CPU mode: every stage runs through the project's own
benchmark and bundle workflows on real Kvasir-SEG images and lands in one JSON + Markdown report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transfuse_bundle.tools.cli.gpu_check import main
from conftest import DATA


def test_gpu_check_tiny_runs_every_stage(tmp_path: Path):
    out = tmp_path / "check"
    assert main(["--tiny", "--out", str(out), "--data", str(DATA / "kvasir_seg")]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and list(report["stages"]) == ["benchmark", "training", "evaluation", "tensorrt"]
    bench = report["stages"]["benchmark"]
    row = bench["results"][0]
    assert row["model"] == "S" and row["size"] == "32x32"
    assert bench["peak_gflop_s"]["fp32"] > 0 and row["pct_peak_train_fp32"] > 0
    assert row["best_batch_fp32-fast"] in (1, 2) and row["throughput_img_s_best_fp32-fast"] > 0
    training = report["stages"]["training"]
    assert training["epochs"] == 1 and training["training_images"] == 4 and training["grad_scaler"] is False
    assert 0.0 <= training["val_mean_dice"] <= 1.0 and training["last_epoch_s"] > 0
    assert (out / "bundle" / "models" / "model.pt").is_file()
    evaluation = report["stages"]["evaluation"]
    assert evaluation["num_cases"] == 2 and 0.0 <= evaluation["mean_dice"] <= 1.0
    assert json.loads((out / "eval" / "metrics.json").read_text())["num_cases"] == 2
    # the TensorRT overlay refuses on a CPU in one line instead of running PyTorch eagerly under its name
    assert report["stages"]["tensorrt"]["refused"].startswith("configs/inference_trt.json compiles the network with "
                                                               "TensorRT, which needs a CUDA GPU")
    assert not (out / "eval_trt").exists()
    assert report["total_wall_s"] >= sum(stage["wall_s"] for stage in report["stages"].values()) - 0.5
    markdown = (out / "gpu_check.md").read_text()
    for heading in ("# GPU check (tiny)", "## Benchmark", "Roofline:", "## Training", "## Evaluation", "## Tensorrt",
                    "| S | 32x32 | train_fp32 |", "| autocast_dtype |"):
        assert heading in markdown, heading


def test_gpu_check_refuses_before_any_work(tmp_path: Path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["--tiny", "--out", str(out), "--data", str(DATA / "kvasir_seg")]) == 2
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert capsys.readouterr().err.strip() == f"error: {out} is not empty: choose a new folder for the GPU check's report"

    few = tmp_path / "few"  # a Kvasir folder with 3 pairs: the tiny check needs 4 + 1 + 2
    for name in sorted((DATA / "kvasir_seg" / "images").iterdir())[:3]:
        for sub, suffix in (("images", name.suffix), ("masks", ".png")):
            (few / sub).mkdir(parents=True, exist_ok=True)
            src = next((DATA / "kvasir_seg" / sub).glob(name.stem + ".*"))
            shutil.copy(src, few / sub / (name.stem + (src.suffix if sub == "masks" else suffix)))
    assert main(["--tiny", "--out", str(tmp_path / "new"), "--data", str(few)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "3 cases, fewer than the 7 asked for" in err and "\n" not in err
    assert not (tmp_path / "new" / "gpu_check.json").exists()
