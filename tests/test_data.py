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


KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir_seg"


def _kvasir_cases(count: int, offset: int = 0) -> list[dict[str, str]]:
    """``count`` real Kvasir-SEG pairs as datalist entries (absolute paths into ../shared/data)."""
    stems = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[offset:offset + count]
    return [{"image": str(KVASIR / "images" / f"{s}.jpg"), "label": str(KVASIR / "masks" / f"{s}.png")} for s in stems]


def test_evaluation_reads_a_datalist_of_test_cases_only(tmp_path: Path):
    """Before: evaluation refused it ("the 'training' list is empty"), though the README says it reads the test list."""
    from conftest import run_workflow, untrained_weights

    from transfuse_bundle.data.validate import validate_dataset

    test = _kvasir_cases(2)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": test}))
    assert evaluation_datalist(datalist) == test
    assert validate_dataset(datalist) == ([], 2)  # transfuse-validate-data checks it too
    untrained_weights(tmp_path / "bundle")
    run_workflow("evaluate.json", bundle_root=str(tmp_path / "bundle"), dataset_dir=str(datalist),
                 output_dir=str(tmp_path / "eval"), image_size=[64, 64], num_workers=0, polyp_metrics=False)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_cases"] == 2
    datalist.write_text(json.dumps({"test": [], "validation": []}))
    with pytest.raises(DatasetError, match="no 'test', 'validation' or 'training' cases to evaluate"):
        evaluation_datalist(datalist)


def test_a_case_in_training_and_validation_is_refused_naming_it(tmp_path: Path):
    """Before: the same case in both lists (here once through a symbolic link) trained and validated on without a word."""
    from transfuse_bundle.data import validate_datalist

    cases = _kvasir_cases(3)
    link = tmp_path / "same.jpg"
    link.symlink_to(cases[0]["image"])
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:2], "validation": [{**cases[0], "image": str(link)}]}))
    with pytest.raises(DatasetError, match=r"same\.jpg: the same case is in training\[0\] and validation\[0\]"):
        load_datalist(datalist)
    datalist.write_text(json.dumps({"training": cases[:2], "test": [cases[2], cases[1]]}))
    with pytest.raises(DatasetError, match=r"the same case is in training\[1\] and test\[1\]"):
        evaluation_datalist(datalist)
    # the lists MONAI Label hands to training (train#dataset#data, validate#dataset#data) are checked the same way
    problems = validate_datalist({"training": cases[:2], "validation": cases[1:]})
    assert [(p.path, "training[1] and validation[0]" in p.message) for p in problems] == [(cases[1]["image"], True)]
    assert validate_datalist({"training": cases[:2], "validation": cases[2:]}) == []


@pytest.mark.parametrize("key, words", [
    ("Validation", "key 'Validation' is not read (the lists are 'training', 'validation', 'test', lower case): rename it 'validation'"),
    ("val", "rename it 'validation'"),
    ("Test", "rename it 'test'"),
    ("holdout", "key 'holdout' holds 1 case(s) that are never read"),
])
def test_a_list_under_another_key_is_refused_naming_it(tmp_path: Path, key: str, words: str):
    """Before: a 'Validation' list was ignored and a random share of training was validated on instead."""
    cases = _kvasir_cases(3)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:2], key: cases[2:]}))
    with pytest.raises(DatasetError) as err:
        load_datalist(datalist)
    assert str(err.value) == f"{datalist}: {words}" or words in str(err.value), str(err.value)
    # keys that are not lists of cases (MSD's dataset.json, prepare_data's own) are fine
    datalist.write_text(json.dumps({"training": cases[:2], "validation": cases[2:], "name": "Kvasir", "numTraining": 2,
                                    "labels": {"0": "background"}, "layout": "folder", "source": str(KVASIR)}))
    assert len(load_datalist(datalist)["validation"]) == 1


# --- what a file means: 12-bit X-rays in 16-bit PNGs, masks painted as opacity, grey masks ----------------------

def _kvasir_grey(index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(_kvasir_cases(1, index)[0]["image"]).convert("L"))


def _with_sbit(path: Path, bits: int) -> None:
    """Inserts a PNG ``sBIT`` chunk (significant bits of a grey image) after the header, as X-ray exporters do."""
    import struct
    import zlib

    data = path.read_bytes()
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:33] + chunk + data[33:])  # signature (8) + IHDR (25)


def _load(config_id: str, path: Path, task: str = "hip") -> torch.Tensor:
    """``path`` read by the config's own ``load_image`` / ``load_label`` transforms (channel first)."""
    from monai.transforms import Compose

    from transfuse_bundle.tools.tasks import config_parser

    key = "image" if config_id == "load_image" else "label"
    return Compose(config_parser("train.json", task).get_parsed_content(config_id))({key: str(path)})[key]


def test_twelve_bit_xray_in_a_16_bit_png_is_read_at_its_bit_depth(tmp_path: Path):
    """Before: 16-bit PNGs were scaled by 255/65535, so a 12-bit X-ray (0-4095) became nearly black (max 16)."""
    from transfuse_bundle.data.readers import full_scale, png_significant_bits

    grey = _kvasir_grey()
    twelve = tmp_path / "xray12.png"
    Image.fromarray((grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)).save(twelve)
    assert Image.open(twelve).mode.startswith("I")
    read = _load("load_image", twelve).numpy()
    assert read.shape[0] == 3 and np.abs(read[0] - grey).max() <= 1  # the whole 0-255 range, as the 8-bit picture
    # an sBIT chunk says how many bits hold data: a dim 12-bit image stays dim rather than being stretched as 10-bit
    dim = tmp_path / "dim12.png"
    Image.fromarray((grey.astype(np.uint32) * 900 // 255).astype(np.uint16)).save(dim)
    assert png_significant_bits(dim) is None and _load("load_image", dim).max() == 224  # 900 of 10 bits (1023)
    _with_sbit(dim, 12)
    assert png_significant_bits(dim) == 12 and _load("load_image", dim).max() == 56  # 900 of 4095
    # a 16-bit file that uses the full range, or 12 bits scaled up to 16 as the PNG standard asks, is read as before
    full = tmp_path / "full16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(full)
    _with_sbit(full, 12)
    assert np.abs(_load("load_image", full).numpy()[0] - grey).max() <= 1
    assert [full_scale(v) for v in (0, 1, 255, 256, 4095, 4096, 65535)] == [1, 1, 255, 1023, 4095, 16383, 65535]


def test_mask_painted_as_opacity_is_read_from_its_alpha_channel(tmp_path: Path):
    """Before: an RGBA mask, white everywhere with the mask in alpha, trained as 100 % foreground."""
    from transfuse_bundle.data import validate_datalist

    case = _kvasir_cases(1)[0]
    mask = np.asarray(Image.open(case["label"]).convert("L"))
    rgba = np.dstack([np.full(mask.shape + (3,), 255, np.uint8), mask])
    alpha_mask = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(alpha_mask)
    label = _load("load_label", alpha_mask, task="polyp")
    assert label.shape == (1, *mask.shape)
    assert np.array_equal(label[0].numpy(), (mask >= 128).astype(np.float32))
    assert 0.01 < float(label.mean()) < 0.9
    assert validate_datalist([{"image": case["image"], "label": str(alpha_mask)}]) == []
    # colour masks with alpha (transparent background, coloured foreground) are still read from their colour
    coloured = np.dstack([np.zeros(mask.shape + (2,), np.uint8), mask, np.where(mask > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(coloured, mode="RGBA").save(tmp_path / "coloured.png")
    assert np.array_equal(_load("load_label", tmp_path / "coloured.png", task="polyp")[0].numpy(),
                          (mask >= 128).astype(np.float32))


def test_binary_masks_with_grey_areas_are_refused_and_anti_aliased_edges_are_not(tmp_path: Path):
    """Before: a mask whose foreground is mid-grey (or a blurred, soft mask) was thresholded at 128 without a word
    whenever the grey pixels were under 5 % of the image; a 12-bit mask's greys were not even counted."""
    from PIL import ImageFilter

    from transfuse_bundle.data import validate_datalist

    cases = _kvasir_cases(40)
    small = min(cases, key=lambda c: (np.asarray(Image.open(c["label"])) > 127).mean())  # the smallest polyp
    mask = np.asarray(Image.open(small["label"]).convert("L"))
    assert (mask > 127).mean() < 0.05
    files = {
        "grey_fill": np.where(mask > 127, 160, 0).astype(np.uint8),  # a grey polyp: foreground only by a threshold at 128
        "blurred": np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6))),
        "grey_12bit": np.where(mask > 127, 2000, 0).astype(np.uint16),
        "soft_12bit": (np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6))).astype(np.uint16) * 16),
        "binary_12bit": np.where(mask > 127, 4095, 0).astype(np.uint16),
    }
    files["grey_12bit"][:2, :2] = 4095  # a full-scale corner: the polyp is a grey area of a 12-bit mask
    found = {}
    for name, pixels in files.items():
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        problems = validate_datalist([{"image": small["image"], "label": str(tmp_path / f"{name}.png")}])
        found[name] = [p.message for p in problems]
    # the mask and its image at a third of their size, resampled: anti-aliased edges, 1-2 pixels of grey
    size = (mask.shape[1] // 3, mask.shape[0] // 3)
    Image.open(small["image"]).resize(size, Image.BILINEAR).save(tmp_path / "small.jpg")
    Image.fromarray(mask).resize(size, Image.BILINEAR).save(tmp_path / "antialiased.png")
    assert len(np.unique(np.asarray(Image.open(tmp_path / "antialiased.png")))) > 10
    found["antialiased"] = [p.message for p in validate_datalist([{"image": str(tmp_path / "small.jpg"),
                                                                     "label": str(tmp_path / "antialiased.png")}])]
    for name in ("grey_fill", "blurred", "grey_12bit", "soft_12bit"):
        assert len(found[name]) == 1 and found[name][0].startswith("mask is not binary: "), (name, found[name])
    assert "grey areas, not just anti-aliased edges" in found["grey_fill"][0]
    assert found["antialiased"] == [] and found["binary_12bit"] == []
    label = _load("load_label", tmp_path / "binary_12bit.png", task="polyp")  # 0/4095: thresholded at 2047.5
    assert np.array_equal(label[0].numpy(), (mask > 127).astype(np.float32))


def test_validation_is_split_so_that_every_rank_has_a_share():
    """Before: torchrun with fewer validation cases than processes crashed on the rank without one."""
    from transfuse_bundle.data import check_rank_split, rank_shares

    assert rank_shares(5, 2) == [[0, 2, 4], [1, 3]]
    for count, world in ((2, 2), (3, 2), (7, 4), (1, 1)):
        shares = check_rank_split(list(range(count)), world)
        assert all(shares) and sorted(i for share in shares for i in share) == list(range(count))
    assert check_rank_split([], 2) == [[], []]  # no validation at all: the single-process rules apply
    with pytest.raises(DatasetError, match=r"^the validation list has 1 case\(s\), fewer than the 2 processes of this "
                                           r"run: .* \(torchrun --nproc_per_node 1\)$"):
        check_rank_split([{"image": "a.png"}], "2")
