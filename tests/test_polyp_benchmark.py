"""The polyp benchmark on PraNet's test layout: two of the five sets present (real Kvasir-SEG images
linked in place under the set names), three missing; a TransFuse-S with fixed random weights at 64x64
(the numbers are not the point: that each one is the report's, in range, and laid out as Table 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import KVASIR, REPO
from transfuse_bundle.tools.prepare import PRANET_TEST_SETS
from transfuse_bundle.tools.cli.polyp_benchmark import main
from transfuse_bundle.tools.polyp_benchmark import default_config_files
from transfuse_bundle.tools.tasks import config_files, config_parser

CONFIGS = [str(f) for f in config_files("evaluate.json")]  # --config_file: the repository's evaluation chain


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


def _test_dataset(root: Path) -> dict[str, list[str]]:
    """``root/{Kvasir,CVC-300}/{images,masks}``: 3 and 2 Kvasir-SEG cases; the other sets are absent."""
    stems = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))
    sets = {"Kvasir": stems[:3], "CVC-300": stems[3:5]}
    for name, chosen in sets.items():
        for stem in chosen:
            _link(KVASIR / "images" / f"{stem}.jpg", root / name / "images" / f"{stem}.jpg")
            _link(KVASIR / "masks" / f"{stem}.png", root / name / "masks" / f"{stem}.png")
    return sets


def test_benchmark_writes_table_1_with_missing_sets(tmp_path):
    sets = _test_dataset(tmp_path / "TestDataset")
    parser = config_parser("evaluate.json", image_size=[64, 64])
    torch.manual_seed(0)
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "bundle" / "models" / "model.pt")

    out = tmp_path / "out"
    code = main([str(tmp_path / "TestDataset"), "--bundle_root", str(tmp_path / "bundle"), "--output_dir", str(out),
                 "--config_file", *CONFIGS, "--image_size", "64", "64", "--num_workers", "0"])
    assert code == 0
    table = json.loads((out / "polyp_benchmark.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert table["missing"] == ["CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB"]
    assert list(table["test_sets"]) == list(PRANET_TEST_SETS)
    for name, stems in sets.items():
        row, part = table["test_sets"][name], metrics["per_dataset"][name]
        assert row["status"] == "evaluated" and row["num_images"] == len(stems) == part["polyp_toolbox"]["num_cases"]
        assert row["group"] == ("seen" if name == "Kvasir" else "unseen")
        for key in ("mdice", "miou", "wfm", "sm", "mean_em", "max_em", "mae"):
            assert row[key] == part["polyp_toolbox"][key] and 0.0 <= row[key] <= 1.0, (name, key)
        assert row["miou"] <= row["mdice"] and row["mean_em"] <= row["max_em"]
        assert row["dice_at_0.5"] == part["mean_dice"]
    markdown = (out / "polyp_benchmark.md").read_text()
    assert "| Kvasir (seen) mDice | Kvasir mIoU |" in markdown and "| CVC-ColonDB | unseen | missing |" in markdown
    assert f"{table['test_sets']['Kvasir']['mdice']:.3f} | {table['test_sets']['Kvasir']['miou']:.3f}" in markdown
    assert "Missing from the test folder: CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB." in markdown


def test_benchmark_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds none of the PraNet test sets" in err and "\n" not in err


def test_default_configs_are_the_polyp_task_chain_else_the_bundle_configs(tmp_path):
    assert [p.relative_to(REPO).as_posix() for p in default_config_files(REPO)] == [
        "configs/train.json", "configs/tasks/polyp/task.json", "configs/tasks/polyp/train.json", "configs/evaluate.json"]
    assert default_config_files(REPO) == config_files("evaluate.json", "polyp")
    assert default_config_files(tmp_path) == [tmp_path / "configs" / "train.json", tmp_path / "configs" / "evaluate.json"]


def test_benchmark_keeps_files_it_did_not_write(tmp_path, capsys):
    _test_dataset(tmp_path / "TestDataset")
    out = tmp_path / "out"
    out.mkdir()
    (out / "datalist.json").write_text('{"training": ["my own list"]}')
    assert main([str(tmp_path / "TestDataset"), "--bundle_root", str(tmp_path / "bundle"), "--output_dir", str(out),
                 "--config_file", *CONFIGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out / 'datalist.json'}: exists and was not written by this tool") and "\n" not in err
    assert (out / "datalist.json").read_text() == '{"training": ["my own list"]}'
    assert sorted(p.name for p in out.iterdir()) == ["datalist.json"]
