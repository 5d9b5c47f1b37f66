"""The comparison command trains and evaluates other networks, and training recipes, through the same bundle, on real
images (Kvasir-SEG, read in place from ../shared/data)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import KVASIR
from transfuse_bundle.data import write_datalist


@pytest.mark.slow
def test_compare_models_trains_each_network_on_real_images(tmp_path):
    datalist = tmp_path / "kvasir.json"
    write_datalist(KVASIR, datalist, num_training=3, num_validation=1, num_test=2)
    models = ["MedT", "TransFuse-S concat+res (E.5)"]  # TransUNet (100M parameters) is built in test_other_networks
    from transfuse_bundle.tools.cli.compare_models import main as transfuse_compare

    assert transfuse_compare(["--dataset_dir", str(datalist), "--models", *models, "--epochs", "1", "--batch_size", "3",
                              "--num_workers", "0", "--latency_iters", "1", "--out", str(tmp_path / "out")]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "out" / "comparison.json").read_text())}
    assert list(rows) == models
    assert 100e6 > rows["TransFuse-S concat+res (E.5)"]["params"] > 20e6 > rows["MedT"]["params"]
    for row in rows.values():
        assert 0.0 <= row["mean_dice"] <= 1.0 and 0.0 <= row["mean_iou"] <= row["mean_dice"] + 1e-6
        assert row["latency_ms"] > 0 and row["train_s"] > 0 and 0.0 <= row["nsd"] <= 1.0
        # each model was evaluated by the bundle on every test image
        per_case = tmp_path / "out" / re.sub(r"[^a-z0-9]+", "-", row["model"].lower()).strip("-") / "eval" / "per_case.csv"
        assert len(per_case.read_text().strip().splitlines()) == 1 + 2
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in models)


@pytest.mark.slow
def test_recipe_comparison_carves_a_test_split_and_evaluates_every_run_on_it(tmp_path):
    pairs = sorted((KVASIR / "images").glob("*.jpg"))[:12]
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for image in pairs:  # a 12-pair folder of links to the shared data
        os.symlink(image, tmp_path / "data" / "images" / image.name)
        os.symlink(KVASIR / "masks" / f"{image.stem}.png", tmp_path / "data" / "masks" / f"{image.stem}.png")
    out = tmp_path / "out"
    from transfuse_bundle.tools.cli.compare_models import main as transfuse_compare

    assert transfuse_compare(["--recipes", "default", "official", "--dataset_dir", str(tmp_path / "data"), "--image_size",
                              "64", "64", "--epochs", "1", "--seeds", "3", "--test_fraction", "0.25", "--amp_dtype",
                              "float32", "--out", str(out)]) == 0
    lists = json.loads((out / "datalist.json").read_text())
    test = {case["image"] for case in lists["test"]}
    assert len(test) == 3 and not test & {case["image"] for case in lists["training"]}
    rows = json.loads((out / "recipes.json").read_text())
    assert [(r["recipe"], r["seed"]) for r in rows] == [("default", 3), ("official", 3)]
    for row in rows:
        assert 0.0 <= row["mean_iou"] <= row["mean_dice"] <= 1.0 and row["train_s"] > 0
        assert 0.0 <= row["nsd"] <= 1.0 and 0 <= row["empty_predictions"] <= 3
        run = out / f"{row['recipe']}-seed3"
        # no --num_workers: the configs' own default (loader_workers) applies, so none is passed to the runs
        assert "> num_workers:" not in (run / "train.log").read_text() + (run / "eval.log").read_text()
        assert "> amp_dtype: 'float32'" in (run / "train.log").read_text()  # fp32 even on a CPU with native bf16
        per_case = (run / "eval" / "per_case.csv").read_text()
        assert sorted(Path(p).name for p in test) == sorted(Path(line.split(",")[0]).name for line in per_case.strip().splitlines()[1:])
    table = (out / "recipes.md").read_text()
    assert "| **default**, mean (spread) | 1 seeds |" in table and "| official | 3 |" in table
    assert table.splitlines()[0].endswith("CPU threads, training in float32")


def test_a_failing_step_stops_the_comparison_naming_its_command_and_log(tmp_path, capsys):
    """A model's training and evaluation run one after the other in one new interpreter, each writing its own log; a
    step that fails (the training's refusal of a size the network cannot take) stops the comparison: the error names
    the step's command and log, which holds the refusal; the evaluation and the next model never run."""
    from transfuse_bundle.tools.cli.compare_models import main as transfuse_compare

    datalist = tmp_path / "kvasir.json"
    write_datalist(KVASIR, datalist, num_training=2, num_validation=1, num_test=1)
    out = tmp_path / "out"
    assert transfuse_compare(["--dataset_dir", str(datalist), "--models", "TransFuse-S", "MedT", "--image_size", "100",
                              "100", "--epochs", "1", "--out", str(out)]) == 1
    [error] = capsys.readouterr().err.splitlines()
    log = out / "transfuse-s" / "train.log"
    assert error.startswith("error: ") and " -m monai.bundle run training --config_file " in error, error
    assert error.endswith(f"failed (exit 1); see {log}"), error
    assert "error: image_size must be [H, W] with sides that are multiples of 16" in log.read_text()
    assert sorted(p.name for p in (out / "transfuse-s").iterdir()) == ["train.log"] and not (out / "medt").exists()


def test_comparison_never_replaces_earlier_results(tmp_path, capsys):
    """A non-empty --out (hours of earlier runs) is refused in one line before any work; so is an --out that is a file."""
    from transfuse_bundle.tools.cli.compare_models import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "recipes.md").write_text("earlier results\n")
    arguments = ["--recipes", "default", "--dataset_dir", str(KVASIR), "--epochs", "1", "--seeds", "0", "--out"]
    assert main([*arguments, str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out {out}: holds earlier results; give another folder, or --overwrite to replace them"]
    assert sorted(p.name for p in out.iterdir()) == ["recipes.md"] and (out / "recipes.md").read_text() == "earlier results\n"
    file_out = tmp_path / "file"
    file_out.write_text("not a folder")
    assert main([*arguments, str(file_out)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {file_out}: is a file") and file_out.read_text() == "not a folder"


@pytest.mark.parametrize("bad, message", [
    (["--num_workers", "-1"], "argument --num_workers: must be at least 0, got -1"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--threads", "two"], "argument --threads: expected an integer, got 'two'"),
    (["--test_fraction", "1.5"], "--test_fraction must be in (0, 1), got 1.5"),
])
def test_comparison_refuses_bad_numbers_before_any_work(bad, message, tmp_path, capsys):
    """A negative worker count or an empty budget stops in one line naming the option; --out is not even created."""
    from transfuse_bundle.tools.cli.compare_models import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipes", "default", "--dataset_dir", str(KVASIR), "--seeds", "0", "--out", str(out), *bad])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 autocast is valid on a CUDA device")
def test_comparison_refuses_float16_on_a_cpu_before_any_work(tmp_path, capsys):
    """fp16 autocast needs CUDA's GradScaler: on a CPU it stops in one line before --out is created."""
    from transfuse_bundle.tools.cli.compare_models import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipes", "default", "--dataset_dir", str(KVASIR), "--amp_dtype", "float16", "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --amp_dtype: amp_dtype 'float16' needs a CUDA device (its GradScaler is CUDA's), the device is cpu; "
        "use 'bfloat16' or 'float32'")
    assert not out.exists()


def test_comparison_on_a_missing_dataset_folder_stops_in_one_line_and_makes_nothing(tmp_path, capsys):
    """Before, --out was made and locked, then the first training failed with MONAI's output."""
    from transfuse_bundle.tools.cli.compare_models import main

    out, missing = tmp_path / "out", tmp_path / "kvasir_typo"
    for what in (["--models", "TransUNet"], ["--recipes", "default"]):
        assert main([*what, "--dataset_dir", str(missing), "--epochs", "1", "--out", str(out)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: --dataset_dir {missing}: does not exist (a folder with images/ + masks/, or a datalist.json); "
            "nothing was done"]
        assert sorted(p.name for p in tmp_path.iterdir()) == []
