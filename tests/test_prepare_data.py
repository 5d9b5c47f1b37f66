"""Dataset preparation: public layouts -> datalist.json, on real files from ../shared/data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import KVASIR, PH2, PROSTATE158, REPO, run_command
from transfuse_bundle.data import DatasetError, load_datalist
from transfuse_bundle.tools.prepare import detect_layout, prepare



def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _kvasir_ids(n: int, offset: int = 0) -> list[str]:
    return sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[offset : offset + n]


@pytest.fixture
def pranet_layout(tmp_path):
    root = tmp_path / "polyp"
    for stem in _kvasir_ids(6):
        _link(KVASIR / "images" / f"{stem}.jpg", root / "TrainDataset" / "image" / f"{stem}.jpg")
        _link(KVASIR / "masks" / f"{stem}.png", root / "TrainDataset" / "mask" / f"{stem}.png")
    for name, offset in (("Kvasir", 6), ("CVC-300", 9)):
        for stem in _kvasir_ids(3, offset):
            _link(KVASIR / "images" / f"{stem}.jpg", root / "TestDataset" / name / "images" / f"{stem}.jpg")
            _link(KVASIR / "masks" / f"{stem}.png", root / "TestDataset" / name / "masks" / f"{stem}.png")
    return root


def test_pranet_split_tags_each_test_set(pranet_layout, tmp_path):
    out = tmp_path / "lists" / "datalist.json"
    lists = prepare(pranet_layout, out)
    assert json.loads(out.read_text())["layout"] == "polyp-pranet"
    assert len(lists["training"]) + len(lists["validation"]) == 6 and lists["validation"]
    assert sorted({d["dataset"] for d in lists["test"]}) == ["CVC-300", "Kvasir"]
    assert len(lists["test"]) == 6
    # the bundle reads what was written
    assert len(load_datalist(out)["test"]) == 6


def test_pranet_mismatch_names_the_file_and_writes_nothing(pranet_layout, tmp_path):
    stray = pranet_layout / "TrainDataset" / "image" / "stray.jpg"
    _link(KVASIR / "images" / f"{_kvasir_ids(1, 20)[0]}.jpg", stray)
    out = tmp_path / "datalist.json"
    with pytest.raises(DatasetError, match=r"have no mask .*stray\.jpg"):
        prepare(pranet_layout, out)
    assert not out.exists()


def test_real_kvasir_folder_is_split_deterministically(tmp_path):
    first = prepare(KVASIR, tmp_path / "a.json", test_fraction=0.1, val_fraction=0.1)
    second = prepare(KVASIR, tmp_path / "b.json", test_fraction=0.1, val_fraction=0.1)
    assert first == second
    sizes = {k: len(v) for k, v in first.items()}
    assert sum(sizes.values()) == 900 and sizes["test"] == 90
    images = [d["image"] for split in first.values() for d in split]
    assert len(set(images)) == 900  # disjoint


def test_isic2017_layout(tmp_path):
    root = tmp_path / "isic"
    ids = sorted(p.stem for p in (PH2 / "images").glob("*.jpg"))[:6]
    for split, chunk in (("Training", ids[:2]), ("Validation", ids[2:4]), ("Test_v2", ids[4:])):
        for stem in chunk:
            _link(PH2 / "images" / f"{stem}.jpg", root / f"ISIC-2017_{split}_Data" / f"{stem}.jpg")
            _link(PH2 / "masks" / f"{stem}.png", root / f"ISIC-2017_{split}_Part1_GroundTruth" / f"{stem}_segmentation.png")
    assert detect_layout(root) == "isic2017"
    lists = prepare(root, tmp_path / "isic.json")
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [2, 2, 2]
    assert lists["test"][0]["label"].endswith("_segmentation.png")


def test_prostate158_real_volumes(tmp_path):
    lists = prepare(PROSTATE158, tmp_path / "p.json")
    cases = lists["training"] + lists["validation"]
    assert len(cases) == 2 and all(c["label"].endswith("t2_anatomy_reader1.nii.gz") for c in cases)


def test_msd_prostate_layout(tmp_path):
    root = tmp_path / "Task05_Prostate"
    training = []
    for i, case in enumerate(sorted(p for p in PROSTATE158.iterdir() if p.is_dir()) * 3):
        _link(case / "t2.nii.gz", root / "imagesTr" / f"prostate_{i:02d}.nii.gz")
        _link(case / "t2_anatomy_reader1.nii.gz", root / "labelsTr" / f"prostate_{i:02d}.nii.gz")
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "PROSTATE", "training": training}))
    lists = prepare(root, tmp_path / "msd.json")
    assert sum(len(v) for v in lists.values()) == 6 and lists["test"] and lists["validation"]
    (root / "labelsTr" / "prostate_03.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"training\[3\] label file .*prostate_03\.nii\.gz"):
        prepare(root, tmp_path / "msd2.json")


def test_hip_needs_spacing_and_records_it(tmp_path):
    root = tmp_path / "hip"
    for stem in _kvasir_ids(10):  # stand-in images; the layout is what is checked
        _link(KVASIR / "images" / f"{stem}.jpg", root / "images" / f"{stem}.jpg")
        _link(KVASIR / "masks" / f"{stem}.png", root / "masks" / f"{stem}.png")
    with pytest.raises(DatasetError, match="pixel spacing"):
        prepare(root, tmp_path / "hip.json", layout="hip")
    lists = prepare(root, tmp_path / "hip.json", layout="hip", spacing=[0.14, 0.14])
    assert all(d["spacing"] == [0.14, 0.14] for split in lists.values() for d in split)


def test_cli_reports_unknown_layout_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_command([sys.executable, REPO / "scripts" / "prepare_data.py", tmp_path / "empty",
                          "--output", tmp_path / "x.json"], check=False)
    assert result.returncode == 2
    assert "cannot tell the layout of" in result.stderr and str(tmp_path / "empty") in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_cli_subset_of_a_folder(tmp_path):
    out = tmp_path / "sub.json"
    run_command([sys.executable, REPO / "scripts" / "prepare_data.py", KVASIR, "--output", out, "--subset", "5", "2", "3"])
    lists = json.loads(out.read_text())
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [5, 2, 3]


@pytest.fixture
def folder_layout(tmp_path) -> Path:
    """A folder layout of 6 real Kvasir pairs (links) and the user's notes.json: a dataset that must stay as it is."""
    root = tmp_path / "kvasir"
    for stem in _kvasir_ids(6):
        _link(KVASIR / "images" / f"{stem}.jpg", root / "images" / f"{stem}.jpg")
        _link(KVASIR / "masks" / f"{stem}.png", root / "masks" / f"{stem}.png")
    (root / "notes.json").write_text('{"scanner": "unknown"}')
    return root


def _tree(root: Path) -> list[tuple[str, str]]:
    return sorted((str(p.relative_to(root)), p.read_text() if p.suffix == ".json" else "") for p in root.rglob("*"))


def _status(main, argv: list[str]) -> int:
    """A CLI's exit status, whether returned or raised by argparse."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("output, options, words", [
    ("masks", [], "is a folder: give the datalist file to write, e.g. {root}/masks/datalist.json"),
    ("masks", ["--subset", "2", "1", "1"], "is a folder"),
    ("notes.json", [], "exists and is not a datalist: not replaced"),
    ("images/FIRST", [], "must be a .json file"),
    ("images/FIRST/datalist.json", [], "{root}/images/FIRST' is a file, not a folder"),
    ("datalist.json", ["--layout", "hip", "--spacing", "nan", "0.2"], "spacing [nan, 0.2] must be one number or 2"),
    ("datalist.json", ["--layout", "hip", "--spacing", "0.2", "0"], "spacing [0.2, 0.0] must be"),
    ("datalist.json", ["--spacing", "0.2", "0.2"], "the folder layout takes no spacing"),
    ("datalist.json", ["--subset", "2", "1", "1", "--val-fraction", "0.5"], "--val-fraction would be ignored"),
    ("datalist.json", ["--subset", "-1", "2", "2"], "case counts must be >= 0 (and num_training >= 1), got num_training -1"),
])
def test_cli_refuses_bad_output_and_options_before_writing_anything(folder_layout, capsys, output, options, words):
    """Before: an --output folder raised IsADirectoryError after leaving ``masks.tmp`` in the dataset, a JSON
    file was overwritten by the datalist, a NaN spacing was recorded, and --spacing of another layout was a TypeError."""
    from transfuse_bundle.tools.cli.prepare_data import main

    first = _kvasir_ids(1)[0] + ".jpg"
    before = _tree(folder_layout)
    target = folder_layout / output.replace("FIRST", first)
    assert _status(main, [str(folder_layout), "--output", str(target), *options]) == 2
    err = capsys.readouterr().err
    assert words.replace("{root}", str(folder_layout)).replace("FIRST", first) in err, err
    assert len(err.strip().splitlines()) == 1 or "usage:" in err, err
    assert _tree(folder_layout) == before


@pytest.mark.parametrize("options", [[], ["--subset", "2", "1", "1"]])
def test_cli_never_replaces_a_datalist_it_did_not_write(folder_layout, tmp_path, capsys, options):
    """Before: --output replaced any file holding a 'training' list, the user's hand-edited datalist.json included.
    Now it replaces only the datalist it wrote itself, unchanged since (the output manifest of outputs.py)."""
    from transfuse_bundle.tools.cli.prepare_data import main

    out = tmp_path / "lists" / "datalist.json"
    command = [str(folder_layout), "--output", str(out), *options]
    assert _status(main, command) == 0
    assert _status(main, command) == 0  # its own datalist: a rerun replaces it
    edited = json.loads(out.read_text())
    edited["training"] = edited["training"][:1]  # the user's hand edit
    out.write_text(json.dumps(edited))
    capsys.readouterr()
    assert _status(main, command) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {out}: exists and was not written by this tool (or was changed since), so it is not "
                   f"overwritten; nothing was written: choose another --output, move the file(s), or pass --overwrite true")
    assert json.loads(out.read_text()) == edited
    mine = tmp_path / "mine.json"  # a datalist the user wrote, never one of ours
    mine.write_text(json.dumps(edited))
    assert _status(main, [str(folder_layout), "--output", str(mine), *options]) == 2
    assert json.loads(mine.read_text()) == edited
    for overwrite in (["--overwrite"], ["--overwrite", "true"]):
        assert _status(main, [*command, *overwrite]) == 0  # asked: replaced, and recorded as ours again
        assert json.loads(out.read_text()) != edited
    assert _status(main, command) == 0
