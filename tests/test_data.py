"""Data layer: folder layouts, datalist.json, deterministic split, synthetic data, mask transform, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from transfuse_bundle.data import (
    DatasetError,
    MaskToClassIdsd,
    evaluation_datalist,
    find_image_mask_pairs,
    inference_datalist,
    load_datalist,
    make_synthetic_case,
    split_training,
    synthetic_dataset,
)


def _write_pair(root: Path, stem: str, image_ext: str = ".jpg", mask_ext: str = ".png", size=(20, 24)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 100, np.uint8)).save(root / "images" / f"{stem}{image_ext}")
    mask = np.zeros(size, np.uint8)
    mask[5:10, 5:12] = 255
    Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}")


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    for index, ext in enumerate([".jpg", ".jpeg", ".png", ".bmp", ".tif", ".PNG", ".jpg", ".jpg", ".png", ".jpeg"]):
        _write_pair(tmp_path, f"case{index:02d}", image_ext=ext)
    return tmp_path


def test_folder_layout_pairs_every_extension(folder_dataset: Path):
    pairs = find_image_mask_pairs(folder_dataset)
    assert len(pairs) == 10
    assert {Path(p["image"]).suffix for p in pairs} == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".PNG"}
    assert all(Path(p["image"]).stem == Path(p["label"]).stem for p in pairs)
    assert all(Path(p["image"]).is_absolute() or Path(p["image"]).exists() for p in pairs)


def test_split_is_deterministic_disjoint_and_order_independent(folder_dataset: Path):
    first = load_datalist(folder_dataset, val_fraction=0.3, seed=7)
    second = load_datalist(folder_dataset, val_fraction=0.3, seed=7)
    assert first == second
    assert len(first["validation"]) == 3 and len(first["training"]) == 7 and first["test"] == []
    train_images = {d["image"] for d in first["training"]}
    assert train_images.isdisjoint(d["image"] for d in first["validation"])
    items = find_image_mask_pairs(folder_dataset)
    assert split_training(items[::-1], 0.3, 7) == split_training(items, 0.3, 7)
    assert split_training(items, 0.3, 8) != split_training(items, 0.3, 7)
    assert evaluation_datalist(folder_dataset) == items  # a folder is evaluated whole


def test_datalist_json_lists_and_relative_paths(folder_dataset: Path):
    pairs = find_image_mask_pairs(folder_dataset)
    rel = [{"image": str(Path(p["image"]).relative_to(folder_dataset)), "label": str(Path(p["label"]).relative_to(folder_dataset))} for p in pairs]
    (folder_dataset / "datalist.json").write_text(json.dumps({"training": rel[:6], "validation": rel[6:8], "test": rel[8:]}))
    lists = load_datalist(folder_dataset)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [6, 2, 2]
    assert lists["training"][0]["image"] == pairs[0]["image"]
    assert evaluation_datalist(folder_dataset) == lists["test"]
    assert [d["image"] for d in inference_datalist(folder_dataset)] == [d["image"] for d in lists["test"]]
    # the JSON file can be given directly; no validation list -> deterministic split of training
    other = folder_dataset / "other.json"
    other.write_text(json.dumps({"training": rel}))
    lists = load_datalist(other, val_fraction=0.2)
    assert len(lists["validation"]) == 2 and len(lists["training"]) == 8
    assert evaluation_datalist(other) == lists["validation"]


def test_errors_name_the_path(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_datalist(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"images/ and masks/"):
        load_datalist(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=f"no images .* in {tmp_path / 'images'}"):
        load_datalist(tmp_path)
    _write_pair(tmp_path, "ok")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.jpeg")
    with pytest.raises(DatasetError, match=r"have no mask .*lonely\.jpeg"):
        load_datalist(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "lonely.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "ok.png")
    with pytest.raises(DatasetError, match="two files with the stem 'ok'"):
        load_datalist(tmp_path)


def test_datalist_json_errors_name_the_entry(tmp_path: Path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.png", "label": "a_mask.png"}]}))
    with pytest.raises(DatasetError, match=r"training\[0\] image file .*a\.png.* does not exist"):
        load_datalist(tmp_path)
    datalist.write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetError, match="'training' list is empty"):
        load_datalist(datalist)
    datalist.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_datalist(tmp_path)


def test_synthetic_dataset_is_deterministic_and_reused(tmp_path: Path):
    image, mask = make_synthetic_case(3, (40, 56))
    again_image, again_mask = make_synthetic_case(3, (40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8 and mask.shape == (40, 56)
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    assert set(np.unique(mask)) == {0, 255}
    assert 0.01 < (mask > 0).mean() < 0.6
    root = synthetic_dataset(tmp_path / "syn", num_cases=8, num_validation=2, num_test=2, size=(40, 56))
    lists = load_datalist(root)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [4, 2, 2]
    stamp = (Path(root) / "images" / "case_000.png").stat().st_mtime_ns
    synthetic_dataset(tmp_path / "syn", num_cases=8, num_validation=2, num_test=2, size=(40, 56))
    assert (Path(root) / "images" / "case_000.png").stat().st_mtime_ns == stamp  # not regenerated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic-")]  # no temporary leftovers
    with pytest.raises(ValueError, match="no training cases"):
        synthetic_dataset(tmp_path / "bad", num_cases=3, num_validation=2, num_test=2)


def test_synthetic_dataset_where_it_cannot_be_written_is_one_dataset_error(tmp_path: Path):
    """A bundle_root that is a file, or a folder in the way: the refusal names the folder (not an OSError traceback)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'file' / 'syn'}: cannot write the synthetic dataset here"):
        synthetic_dataset(tmp_path / "file" / "syn", num_cases=8, num_validation=2, num_test=2, size=(40, 56))
    (tmp_path / "syn" / "other").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'syn'}: exists without a datalist.json"):
        synthetic_dataset(tmp_path / "syn", num_cases=8, num_validation=2, num_test=2, size=(40, 56))


@pytest.mark.parametrize(
    "values, expected",
    [([0, 255, 254, 3], [0, 1, 1, 0]), ([0, 1, 1, 0], [0, 1, 1, 0]), ([0, 0, 0, 0], [0, 0, 0, 0])],
)
def test_binary_masks_become_zero_one(values, expected):
    mask = torch.tensor(values, dtype=torch.float32).reshape(1, 2, 2)
    out = MaskToClassIdsd("label", num_classes=2)({"label": mask})["label"]
    assert out.tolist() == torch.tensor(expected, dtype=torch.float32).reshape(1, 2, 2).tolist()


def test_rgb_masks_collapse_to_one_channel_and_bad_class_ids_name_the_file():
    rgb = torch.zeros(3, 2, 2)
    rgb[:, 0, 0] = 255
    out = MaskToClassIdsd("label", num_classes=2)({"label": rgb})["label"]
    assert out.shape == (1, 2, 2) and out.sum() == 1
    ids = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert torch.equal(MaskToClassIdsd("label", num_classes=3)({"label": ids})["label"], ids)
    bad = MetaTensor(torch.tensor([[[0.0, 255.0]]]), meta={"filename_or_obj": "/data/masks/x.png"})
    with pytest.raises(ValueError, match=r"mask /data/masks/x\.png has values in \[0, 255\]"):
        MaskToClassIdsd("label", num_classes=3)({"label": bad})
