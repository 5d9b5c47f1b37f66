"""Dataset validation: every problem is reported on one line naming the file,
before any work starts, in training, evaluation, inference and ``scripts/validate_data.py``; unusual but
valid inputs (grey, RGBA, palette, 16-bit, empty masks, large images) pass and load.

Real Kvasir-SEG / Prostate158 files from ../shared/data are read in place or copied (shrunk) to tmp_path.
"""

from __future__ import annotations

import json
import runpy
import shutil
import struct
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from conftest import KVASIR, PROSTATE158, REPO, bundle_cli, root_cause, run_command, run_workflow, untrained_weights
from transfuse_bundle.data import (
    DatasetError,
    check_dataset,
    find_image_mask_pairs,
    inference_datalist,
    load_datalist,
    screen_images,
    validate_datalist,
)
from transfuse_bundle.data.readers import LARGE_IMAGE_PIXELS, reduced_size, to_rgb
from transfuse_bundle.data.validate import validate_dataset
from transfuse_bundle.tools.tasks import config_parser, config_workflow

KVASIR_IDS = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:6]
SIZE = (48, 40)  # (width, height): not square, so a transposed mask would not match


def _small_pair(root: Path, stem: str, source: str) -> tuple[Path, Path]:
    """A real Kvasir image (JPEG) and mask (PNG 0/255), shrunk to SIZE, as root/images + root/masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image, mask = root / "images" / f"{stem}.jpg", root / "masks" / f"{stem}.png"
    Image.open(KVASIR / "images" / f"{source}.jpg").convert("RGB").resize(SIZE).save(image)
    Image.open(KVASIR / "masks" / f"{source}.png").convert("L").resize(SIZE, Image.NEAREST).save(mask)
    return image, mask


def _truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) * 2 // 3])
    return dst


def _lines(problems) -> str:
    return "\n".join(str(p) for p in problems)


def _single(problems, path: Path, *words: str) -> None:
    """Exactly one problem names ``path``, and it says ``words``."""
    named = [str(p) for p in problems if p.path == str(path)]
    assert len(named) == 1, _lines(problems)
    for word in words:
        assert word in named[0], named[0]


# ---- the checks, on real files -------------------------------------------------------------------------


def test_real_datasets_have_no_problems_and_take_seconds():
    pairs = find_image_mask_pairs(KVASIR)[:60]
    assert validate_datalist(pairs) == []
    volumes = [{"image": str(d / "t2.nii.gz"), "label": str(d / "t2_anatomy_reader1.nii.gz")} for d in sorted(PROSTATE158.iterdir())]
    assert validate_datalist(volumes, num_classes=3, spatial_dims=3) == []


def test_truncated_unreadable_and_missing_files_are_named(tmp_path):
    good_image, good_mask = _small_pair(tmp_path, "good", KVASIR_IDS[0])
    cut_image = _truncated_copy(KVASIR / "images" / f"{KVASIR_IDS[1]}.jpg", tmp_path / "cut.jpg")
    cut_mask = _truncated_copy(KVASIR / "masks" / f"{KVASIR_IDS[1]}.png", tmp_path / "cut.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    items = [
        {"image": str(good_image), "label": str(good_mask)},
        {"image": str(cut_image), "label": str(cut_mask)},
        {"image": str(text), "label": str(good_mask)},
        {"image": str(good_image), "label": str(good_mask)},  # the same case twice in one list
        {"image": str(tmp_path / "gone.jpg")},
    ]
    problems = validate_datalist(items)
    _single(problems, cut_image, "truncated")
    _single(problems, cut_mask, "truncated")
    _single(problems, text, "not a readable image")
    _single(problems, good_image, "listed twice", "[0]", "[3]")
    _single(problems, tmp_path / "gone.jpg", "does not exist")
    assert len(problems) == 5
    with pytest.raises(DatasetError) as err:
        check_dataset(items)
    assert str(err.value).count("\n") == 5 and str(cut_image) in str(err.value)  # header + one line per problem


def test_size_mismatch_and_mask_values(tmp_path):
    image, mask = _small_pair(tmp_path, "a", KVASIR_IDS[0])
    wrong_size = tmp_path / "wrong_size.png"
    Image.open(mask).resize((SIZE[1], SIZE[0]), Image.NEAREST).save(wrong_size)  # transposed
    ids_0_2 = tmp_path / "ids.png"  # a 3-class mask given to a binary config: thresholding at 128 would empty it
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 2).save(ids_0_2)
    photo = tmp_path / "photo.png"  # the image itself saved as a mask
    Image.open(image).convert("L").save(photo)
    zero_one = tmp_path / "zero_one.png"
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8)).save(zero_one)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros(SIZE[::-1], np.uint8)).save(empty)

    def case(label):
        return [{"image": str(image), "label": str(label)}]

    _single(validate_datalist(case(wrong_size)), wrong_size, "40 x 48", "48 x 40", str(image))
    _single(validate_datalist(case(ids_0_2)), ids_0_2, "0, 2", "empty")
    _single(validate_datalist(case(photo)), photo, "not binary")
    for fine in (mask, zero_one, empty):
        assert validate_datalist(case(fine)) == [], fine
    tiny = tmp_path / "tiny.jpg"  # smaller than JPEG's 8x8 block
    Image.fromarray(np.asarray(Image.open(image))[:5, :3]).save(tiny)
    assert validate_datalist([{"image": str(tiny)}]) == []
    # multi-class: class ids 0..2 are fine for 3 classes, 255 is not, 2 is not for... 2 classes (above)
    assert validate_datalist(case(ids_0_2), num_classes=3) == []
    _single(validate_datalist(case(mask), num_classes=3), mask, "0, 255", "0..2")


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_volumes_nan_shape_labels_and_dimensions(tmp_path):
    t2 = nib.load(str(PROSTATE158 / "020" / "t2.nii.gz"))
    volume = np.asarray(t2.dataobj, dtype=np.float32)[::4, ::4, ::4]  # real data, small
    label = np.asarray(nib.load(str(PROSTATE158 / "020" / "t2_anatomy_reader1.nii.gz")).dataobj)[::4, ::4, ::4].astype(np.uint8)
    good_image, good_label = _nifti(tmp_path / "img.nii.gz", volume), _nifti(tmp_path / "lab.nii.gz", label)
    holes = volume.copy()
    holes[1, 2, 3], holes[2, 2, 2] = np.nan, np.inf
    nan_image = _nifti(tmp_path / "nan.nii.gz", holes)
    short_label = _nifti(tmp_path / "short.nii.gz", label[:, :, :-1])
    big_ids = _nifti(tmp_path / "ids5.nii.gz", np.where(label > 0, 5, 0).astype(np.uint8))
    cut = _truncated_copy(PROSTATE158 / "021" / "t2.nii.gz", tmp_path / "cut.nii.gz")
    slice_2d = _nifti(tmp_path / "slice.nii.gz", volume[:, :, 0])
    png = tmp_path / "picture.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)

    def check(image, lab=None, dims=3):
        return validate_datalist([{"image": str(image), **({"label": str(lab)} if lab else {})}], 3, dims)

    assert check(good_image, good_label) == []
    _single(check(nan_image, good_label), nan_image, "2 voxel(s) are NaN or Inf")
    _single(check(good_image, short_label), short_label, "differs")
    _single(check(good_image, big_ids), big_ids, "0, 5", "0..2")
    two_channels = _nifti(tmp_path / "two.nii.gz", np.stack([label, label], axis=-1))  # training would read 2 channels
    _single(check(good_image, two_channels), two_channels, "has 2 channels", "one class id per voxel")
    _single(check(cut), cut, "truncated")
    # 2D data for a 3D config, and the reverse
    _single(check(slice_2d), slice_2d, "2D volume", "spatial_dims=3")
    _single(check(png), png, "2D image", "spatial_dims=3")
    _single(check(good_image, dims=2), good_image, "3D volume", "spatial_dims=2")


def _real_volumes(root: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Prostate158 case 020 at every 4th voxel with its real affine (voxels 4x larger), written to ``root``:
    ``(image file, label file, label array, affine)``."""
    t2 = nib.load(str(PROSTATE158 / "020" / "t2.nii.gz"))
    affine = t2.affine @ np.diag([4.0, 4.0, 4.0, 1.0])
    label = np.asarray(nib.load(str(PROSTATE158 / "020" / "t2_anatomy_reader1.nii.gz")).dataobj)[::4, ::4, ::4]
    image = root / "t2.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj, dtype=np.float32)[::4, ::4, ::4], affine), str(image))
    return image, _label_volume(root / "label.nii.gz", label, affine), label, affine


def _label_volume(path: Path, label: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(path))
    return path


def test_label_volume_with_another_geometry_is_refused_naming_both_files(tmp_path, capsys):
    """A label whose affine flips an axis (its voxels stored mirrored, so in world space it is still right) or
    moves it 50 mm would be paired voxel by voxel with its image and train mirrored or shifted."""
    image, label, array, affine = _real_volumes(tmp_path)
    flip_x = np.array([[-1.0, 0, 0, array.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    mirrored = _label_volume(tmp_path / "mirrored.nii.gz", array[::-1], affine @ flip_x)
    shifted_affine = affine.copy()
    shifted_affine[0, 3] += 50.0
    shifted = _label_volume(tmp_path / "shifted.nii.gz", array, shifted_affine)
    coarse = _label_volume(tmp_path / "coarse.nii.gz", array, affine @ np.diag([1.25, 1.25, 1.0, 1.0]))
    rounded_affine = affine.copy()
    rounded_affine[:3, 3] += 1e-3  # a header written by another tool: far below a voxel
    rounded = _label_volume(tmp_path / "rounded.nii.gz", array, rounded_affine)

    def check(lab):
        return validate_datalist([{"image": str(image), "label": str(lab)}], 3, 3)

    assert check(label) == [] and check(rounded) == []
    _single(check(mirrored), mirrored, "orientation RPS, the image's LPS", str(image))
    _single(check(shifted), shifted, "origin 50 mm from the image's", str(image))
    _single(check(coarse), coarse, "spacing 2.009 x 2.009 x 12 mm, the image's 1.607 x 1.607 x 12 mm", str(image))
    # the command, and the check training and evaluation run first (check_data of configs/train.json)
    datalist = tmp_path / "datalist.json"
    other = tmp_path / "other.nii.gz"  # validation needs another case than training (a case in both is refused)
    shutil.copyfile(image, other)
    datalist.write_text(json.dumps({"training": [{"image": str(image), "label": str(mirrored)}],
                                    "validation": [{"image": str(other), "label": str(label)}]}))
    command = runpy.run_path(str(REPO / "scripts" / "validate_data.py"), run_name="validate_data")
    assert command["main"]([str(datalist), "--num-classes", "3", "--spatial-dims", "3"]) == 1
    assert capsys.readouterr().out.startswith(f"{mirrored}: label geometry differs")
    workflow = config_workflow("train.json", "prostate", bundle_root=str(tmp_path / "bundle"),
                               dataset_dir=str(datalist), image_size=[32, 32], num_workers=0)
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()
    assert f"{mirrored}: label geometry differs" in str(err.value.__cause__)
    assert not (tmp_path / "bundle").exists()


def test_exif_rotated_picture_or_mask_is_refused(tmp_path):
    """A viewer shows a JPEG with EXIF orientation 3 upside down (same size, so no size check notices) while
    every reader here uses the stored pixels: which way the mask was drawn is unknown, so both are refused."""
    image, mask = _small_pair(tmp_path, "a", KVASIR_IDS[0])
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 3  # ExifTags.Base.Orientation: rotated 180 degrees
    Image.open(image).save(turned, exif=exif)
    turned_mask = tmp_path / "turned_mask.png"
    exif[0x0112] = 6
    Image.open(mask).save(turned_mask, exif=exif)
    assert Image.open(turned).getexif()[0x0112] == 3 and Image.open(turned_mask).getexif()[0x0112] == 6
    upright = tmp_path / "upright.jpg"
    exif[0x0112] = 1
    Image.open(image).save(upright, exif=exif)

    assert validate_datalist([{"image": str(upright), "label": str(mask)}]) == []
    _single(validate_datalist([{"image": str(turned), "label": str(mask)}]), turned,
            "EXIF orientation 3", "rotated 180 degrees", "exif_transpose")
    _single(validate_datalist([{"image": str(image), "label": str(turned_mask)}]), turned_mask,
            "EXIF orientation 6", "rotated 90 degrees clockwise")
    screened = screen_images([{"image": str(turned)}, {"image": str(upright)}])  # inference: skipped, named
    assert screened.good == [{"image": str(upright)}] and "EXIF orientation 3" in str(screened.problems[0])


@pytest.mark.parametrize("entry, words", [
    ({"image": "IMAGE", "label": None}, "'label' is null, not a file path"),
    ({"image": 123, "label": "MASK"}, "'image' is 123, not a file path"),
    ({"image": "IMAGE", "label": ["MASK"]}, "'label' is [\"/"),
    ({"image": "", "label": "MASK"}, "'image' is \"\", not a file path"),
    ("IMAGE", None),  # a bare path is the image (test lists)
    (["IMAGE", "MASK"], "entry is list"),
    (None, "entry is NoneType null"),
    ({"label": "MASK"}, "has no 'image'"),
    ({"image": "IMAGE", "label": "MASK", "spacing": [0.2, float("nan")]}, "spacing [0.2, nan] must be"),
    ({"image": "IMAGE", "label": "MASK", "spacing": "0.2"}, "spacing '0.2' must be"),
    ({"image": "IMAGE", "label": "MASK", "spacing": [1e308, 1e308]}, "> 0 and <= 1e+06 (mm per pixel)"),
    # the number of axes is known once the config's spatial_dims is: checked with the files, not on reading
    ({"image": "IMAGE", "label": "MASK", "spacing": [0.2, 0.2, 0.2]}, "must be one number or 2 (one per axis)"),
])
def test_datalist_entries_that_are_not_paths_give_one_line_naming_the_entry(tmp_path, entry, words):
    image, mask = _small_pair(tmp_path, "a", KVASIR_IDS[0])
    trained = dict(zip(("image", "label"), map(str, _small_pair(tmp_path, "b", KVASIR_IDS[1]))))  # another case

    def filled(value):
        if isinstance(value, str):
            return {"IMAGE": str(image), "MASK": str(mask)}.get(value, value)
        if isinstance(value, list):
            return [filled(v) for v in value]
        return {k: filled(v) for k, v in value.items()} if isinstance(value, dict) else value

    entry = filled(entry)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [trained], "test": [entry]}))
    if words is None:
        assert inference_datalist(datalist) == [{"image": str(image)}]
        return
    for read in (load_datalist, inference_datalist) if "one per axis" not in words else ():
        with pytest.raises(DatasetError) as err:
            read(datalist)
        assert str(err.value) == f"{datalist}: test[0]: " + str(err.value).split("test[0]: ", 1)[1]
        assert words in str(err.value) and "\n" not in str(err.value)
    # the same entry handed over directly (as MONAI Label hands over train#dataset#data)
    problems = validate_datalist({"training": [trained, entry]})
    assert [p.path for p in problems] == ["training[1]"] and words in problems[0].message, _lines(problems)


def test_datalist_that_is_not_utf8_json_is_one_problem_naming_it(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_bytes(b"\xff\xfe{}")  # e.g. saved as UTF-16 by an editor
    problems, count = validate_dataset(datalist)
    assert count == 0 and [p.path for p in problems] == [str(datalist)]
    assert problems[0].message.startswith("is not valid JSON: 'utf-8' codec can't decode"), problems[0].message
    with pytest.raises(DatasetError, match=f"{datalist} is not valid JSON: 'utf-8' codec can't decode"):
        load_datalist(datalist)


def test_folder_problems_all_reported_with_their_files(tmp_path):
    for stem, source in (("a", KVASIR_IDS[0]), ("b", KVASIR_IDS[1])):
        _small_pair(tmp_path, stem, source)
    shutil.copy(tmp_path / "images" / "a.jpg", tmp_path / "images" / "no_mask.jpg")
    shutil.copy(tmp_path / "masks" / "a.png", tmp_path / "masks" / "no_image.png")
    Image.open(tmp_path / "images" / "b.jpg").save(tmp_path / "images" / "b.png")  # duplicate stem
    problems, _ = validate_dataset(tmp_path)
    text = _lines(problems)
    assert "image(s) have no mask" in text and "no_mask.jpg" in text
    assert "mask(s) have no image" in text and "no_image.png" in text
    assert "two files with the stem 'b'" in text
    assert len(problems) == 3
    with pytest.raises(DatasetError) as err:  # training and evaluation report all three at once
        load_datalist(tmp_path)
    assert err.value.problems == problems


def test_wrong_or_empty_dataset_dir(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nowhere"
    cases["empty"] = tmp_path / "empty"
    cases["empty"].mkdir()
    cases["no_images"] = tmp_path / "no_images"
    (cases["no_images"] / "images").mkdir(parents=True)
    (cases["no_images"] / "masks").mkdir()
    (cases["no_images"] / "images" / "readme.txt").write_text("x")
    cases["empty_json"] = tmp_path / "list.json"
    cases["empty_json"].write_text(json.dumps({"training": []}))
    expected = {"missing": "does not exist", "empty": "no images", "no_images": "no images",
                "empty_json": "holds no cases"}
    for name, path in cases.items():
        problems, count = validate_dataset(path)
        readme = [p for p in problems if p.path.endswith("readme.txt")]  # named, not silently left out
        assert len(readme) == (name == "no_images") and all("not an image file" in str(p) for p in readme)
        problems = [p for p in problems if p not in readme]
        assert count == 0 and len(problems) == 1 and expected[name] in str(problems[0]), (name, _lines(problems))
        assert str(path) in str(problems[0])
    expected["empty_json"] = "'training' list is empty"  # training reads it: the message names the list
    for name in ("missing", "no_images", "empty_json"):
        with pytest.raises(DatasetError, match=expected[name]):
            load_datalist(cases[name])
    with pytest.raises(DatasetError, match="no images"):  # an empty folder given to inference
        inference_datalist(cases["empty"])


@pytest.mark.slow
def test_validate_data_command(tmp_path, capsys):
    good = tmp_path / "good"
    for stem, source in zip("abc", KVASIR_IDS):
        _small_pair(good, stem, source)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _truncated_copy(KVASIR / "images" / f"{KVASIR_IDS[3]}.jpg", bad / "images" / "b.jpg")
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(bad / "masks" / "c.png")
    script = str(REPO / "scripts" / "validate_data.py")
    result = run_command([sys.executable, script, bad], check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"{bad / 'images' / 'b.jpg'}: ") and "truncated" in lines[0]
    assert lines[1].startswith(f"{bad / 'masks' / 'c.png'}: ") and "differs" in lines[1]
    # a clean folder: exit status 0 and a summary (the script's main, in-process: one interpreter start is enough)
    command = runpy.run_path(script, run_name="validate_data")
    assert command["main"]([str(good), "--num-classes", "2"]) == 0
    assert "3 case(s) checked" in capsys.readouterr().out


# ---- unusual but valid inputs load through the real training preprocessing ----------------------------


def _train_parser(**overrides) -> ConfigParser:
    parser = config_parser("train.json", **{"image_size": [32, 32], "num_workers": 0, **overrides})
    parser.get_parsed_content("imports")
    return parser


def test_grey_rgba_palette_16bit_images_and_empty_masks_pass_and_load(tmp_path):
    rgb = Image.open(KVASIR / "images" / f"{KVASIR_IDS[0]}.jpg").convert("RGB").resize(SIZE)
    mask = Image.open(KVASIR / "masks" / f"{KVASIR_IDS[0]}.png").convert("L").resize(SIZE, Image.NEAREST)
    grey = np.asarray(rgb.convert("L"))
    binary = (np.asarray(mask) > 127).astype(np.uint8)
    images = {
        "grey": Image.fromarray(grey, "L"),
        "rgba": Image.fromarray(np.dstack([np.asarray(rgb), np.full(grey.shape, 128, np.uint8)]), "RGBA"),
        "palette": rgb.quantize(64),
        "sixteen": Image.fromarray(grey.astype(np.uint16) * 257),
        "empty": rgb,
    }
    masks = {
        "grey": Image.fromarray(binary * 255),
        "rgba": Image.fromarray(np.dstack([binary * 255] * 3 + [np.full(grey.shape, 255, np.uint8)]), "RGBA"),
        "palette": Image.fromarray(binary, "P"),
        "sixteen": Image.fromarray(binary.astype(np.uint16) * 65535),
        "empty": Image.fromarray(np.zeros_like(binary)),
    }
    assert images["sixteen"].mode == "I;16" and images["palette"].mode == "P" and masks["sixteen"].mode == "I;16"
    items = []
    for name in images:
        image_path, mask_path = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
        images[name].save(image_path)
        masks[name].save(mask_path)
        items.append({"image": str(image_path), "label": str(mask_path)})
    assert validate_datalist(items) == []

    parser = _train_parser()
    validate_tf = parser.get_parsed_content("validate#preprocessing")
    train_tf = parser.get_parsed_content("train#preprocessing")
    loaded = {name: validate_tf(dict(item)) for name, item in zip(images, items)}
    for name, out in loaded.items():
        assert out["image"].shape == (3, 32, 32) and torch.isfinite(out["image"]).all(), name
        assert out["label"].shape == (1, 32, 32) and set(out["label"].unique().tolist()) <= {0.0, 1.0}, name
        assert train_tf(dict(items[0]))["image"].shape == (3, 32, 32)
    # a 16-bit image reads as its 8-bit content (Image.convert('RGB') would have clipped it to white)
    assert torch.allclose(loaded["sixteen"]["image"], loaded["grey"]["image"], atol=1e-4)
    assert torch.equal(loaded["sixteen"]["label"], loaded["grey"]["label"])
    assert torch.equal(loaded["palette"]["label"], loaded["grey"]["label"])
    assert torch.equal(loaded["rgba"]["label"], loaded["grey"]["label"]) and loaded["grey"]["label"].sum() > 0
    assert loaded["empty"]["label"].sum() == 0


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (no pixel data): what PIL checks before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_large_image_is_read_reduced_and_oversized_is_reported(tmp_path):
    width, height = 4200, 4100  # just above LARGE_IMAGE_PIXELS: read at half size
    assert width * height > LARGE_IMAGE_PIXELS
    yy, xx = np.ogrid[:height, :width]  # broadcast: no full-size coordinate arrays
    blob = ((yy - 2000) ** 2 + (xx - 2500) ** 2 < 900**2).astype(np.uint8) * 255
    image, mask = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.fromarray(blob).save(image, quality=90)
    Image.fromarray(blob).save(mask, compress_level=1)
    assert validate_datalist([{"image": str(image), "label": str(mask)}]) == []

    target = reduced_size((width, height))
    assert target == (2100, 2050)
    with Image.open(image) as opened:
        assert to_rgb(opened).size == target
        assert opened.size == target  # the JPEG was decoded at half scale (Image.draft): never full size in memory
    parser = _train_parser()
    load_image, load_mask = parser.get_parsed_content("load_image")[0], parser.get_parsed_content("load_label")[0]
    case = load_mask(load_image({"image": str(image), "label": str(mask)}))
    assert tuple(case["image"].shape) == (*target, 3) and tuple(case["label"].shape) == target  # same (W, H)
    # the reduced image and mask still agree: the blob is where it was
    agree = ((case["image"][..., 0] > 127) == (case["label"] > 127)).float().mean()
    assert agree > 0.99

    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 10000)
    _single(validate_datalist([{"image": str(bomb)}]), bomb, "too large")


# ---- the bundle: validation runs first; inference keeps going on the good images ------------------------


def test_inference_mask_of_a_large_image_has_the_file_size(tmp_path):
    """A large image is read reduced (bounded memory), but its mask is written at the file's own size."""
    width, height = 4200, 4100  # read at half size, 2100 x 2050
    yy, xx = np.ogrid[:height, :width]
    blob = ((yy - 2000) ** 2 + (xx - 2500) ** 2 < 900**2).astype(np.uint8) * 255
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(blob).convert("RGB").save(images / "big.jpg", quality=90)
    bundle, out = tmp_path / "bundle", tmp_path / "pred"
    untrained_weights(bundle)
    workflow = config_workflow("inference.json", bundle_root=str(bundle), dataset_dir=str(images), output_dir=str(out),
                               image_size=[64, 64], num_workers=0, device="cpu")
    workflow.initialize()
    workflow.run()
    mask = Image.open(out / "big_seg.png")
    assert mask.size == (width, height)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def _bad_folder(root: Path) -> tuple[Path, Path]:
    """Four real small pairs; case c's mask has the wrong size, case d's is a 0/1/2 class-id mask."""
    for stem, source in zip("abcd", KVASIR_IDS):
        _small_pair(root, stem, source)
    wrong, ids = root / "masks" / "c.png", root / "masks" / "d.png"
    Image.open(wrong).resize((SIZE[0] + 1, SIZE[1])).save(wrong)
    Image.fromarray((np.asarray(Image.open(ids)) > 0).astype(np.uint8) * 2).save(ids)
    return wrong, ids


@pytest.mark.parametrize("config", ["train", "evaluate"])
def test_training_and_evaluation_stop_before_any_work_and_keep_the_model(tmp_path, config):
    wrong, ids = _bad_folder(tmp_path / "data")
    bundle = tmp_path / "bundle"
    model = untrained_weights(bundle)
    before = model.read_bytes()
    workflow = config_workflow(f"{config}.json", bundle_root=str(bundle), dataset_dir=str(tmp_path / "data"),
                               image_size=[64, 64], num_workers=0, device="cpu",
                               overwrite=config == "train")  # training over model.pt: the data is still checked first
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()
    cause = err.value
    while not isinstance(cause, DatasetError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, DatasetError), repr(err.value)
    assert {p.path for p in cause.problems} == {str(wrong), str(ids)}
    assert model.read_bytes() == before
    assert sorted(p.name for p in bundle.rglob("*")) == ["model.pt", "models"]  # nothing else written


@pytest.mark.parametrize("config, override, words", [
    ("train", {"output_dir": "FILE/eval"}, "output_dir: 'FILE/eval' cannot be created: FILE is a file, not a folder"),
    ("train", {"bundle_root": "FILE/bundle", "output_dir": "OUT"}, "ckpt_dir (the weights are saved there; bundle_root + /models by default): "
                                              "'FILE/bundle/models' cannot be created: FILE is a file"),
    ("evaluate", {"output_dir": "FILE"}, "output_dir 'FILE' is a file, not a folder"),
    ("inference", {"output_dir": "FILE/predictions"}, "output_dir 'FILE/predictions' cannot be created"),
])
def test_unwritable_output_dir_or_bundle_root_is_refused_before_any_work(tmp_path, config, override, words):
    """Before, training cached the data, built the network and failed at its first save (TensorBoard's folder or
    model.pt); evaluation and inference after the whole dataset was run."""
    for stem, source in zip("ab", KVASIR_IDS):
        _small_pair(tmp_path / "data", stem, source)
    blocker = tmp_path / "notes.txt"  # a file where a folder is needed: unwritable for root too
    blocker.write_text("the user's notes")
    overrides = {"bundle_root": str(tmp_path / "bundle"),
                 **{k: v.replace("FILE", str(blocker)).replace("OUT", str(tmp_path / "out")) for k, v in override.items()}}
    expected = ["data", "notes.txt"]
    if config != "train":  # evaluation and inference check their weights first
        untrained_weights(tmp_path / "bundle", image_size=(32, 32))
        expected = ["bundle", "data", "notes.txt"]
    workflow = config_workflow(f"{config}.json", dataset_dir=str(tmp_path / "data"), image_size=[32, 32], num_workers=0,
                               **overrides)
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()  # the checks are the first steps of run (MONAI puts the bundle root on sys.path there)
    assert isinstance(err.value.__cause__, OSError), repr(err.value)
    assert str(err.value.__cause__).startswith(words.replace("FILE", str(blocker))), str(err.value.__cause__)
    assert blocker.read_text() == "the user's notes" and sorted(p.name for p in tmp_path.iterdir()) == expected


@pytest.mark.slow
def test_inference_skips_a_bad_image_writes_the_others_and_exits_nonzero(tmp_path):
    images = tmp_path / "images"
    for stem, source in zip("abc", KVASIR_IDS):
        _small_pair(tmp_path, stem, source)
    cut = _truncated_copy(KVASIR / "images" / f"{KVASIR_IDS[3]}.jpg", images / "b_cut.jpg")  # between b and c
    bundle, out = tmp_path / "bundle", tmp_path / "pred"
    untrained_weights(bundle)
    result = bundle_cli("run", "--config_file", "['configs/train.json','configs/inference.json']", "--dataset_dir", images,
                        "--output_dir", out, "--bundle_root", bundle, "--image_size", "[64,64]", "--num_workers", "0",
                        check=False)
    assert result.returncode != 0, result.stdout[-3000:]
    assert str(cut) in result.stderr and "truncated" in result.stderr
    written = sorted(p.name for p in out.glob("*_seg.png"))
    assert written == ["a_seg.png", "b_seg.png", "c_seg.png"], result.stderr[-3000:]
    for name in written:
        assert Image.open(out / name).size == SIZE  # at the image's own size
    failed = json.loads((out / "failed.json").read_text())
    assert [entry["image"] for entry in failed] == [str(cut)] and "truncated" in failed[0]["problem"]


def test_screen_images_keeps_good_images_and_clears_a_stale_report(tmp_path):
    good, _ = _small_pair(tmp_path, "a", KVASIR_IDS[0])
    cut = _truncated_copy(KVASIR / "images" / f"{KVASIR_IDS[1]}.jpg", tmp_path / "cut.jpg")
    twin = tmp_path / "images" / "a.png"  # same stem as a.jpg: its output a_seg.png would overwrite a's
    Image.open(good).save(twin)
    report = tmp_path / "out" / "failed.json"
    screened = screen_images([{"image": str(good)}, {"image": str(cut)}, {"image": str(twin)}], report_file=report)
    assert screened.good == [{"image": str(good)}]
    assert [e["image"] for e in json.loads(report.read_text())] == [str(cut), str(twin)]
    with pytest.raises(DatasetError, match="skipped"):
        screened.raise_if_any()
    screened = screen_images([{"image": str(good)}], report_file=report)
    assert not report.exists()
    screened.raise_if_any()
    with pytest.raises(DatasetError, match="truncated"):  # nothing left to segment: fail at once
        screen_images([{"image": str(cut)}], report_file=report)


def test_training_checks_the_data_it_is_given_as_monai_label_gives_it(tmp_path):
    """MONAI Label overrides ``train#dataset#data`` / ``validate#dataset#data``: those items are what is
    checked (the default synthetic ``dataset_dir`` is never generated)."""
    wrong, ids = _bad_folder(tmp_path / "data")
    items = [{"image": str(tmp_path / "data" / "images" / f"{s}.jpg"), "label": str(tmp_path / "data" / "masks" / f"{s}.png")}
             for s in "abcd"]
    bundle = tmp_path / "bundle"
    workflow = config_workflow("train.json", bundle_root=str(bundle), image_size=[64, 64], num_workers=0,
                               **{"train#dataset#data": items[:3], "validate#dataset#data": items[3:]})
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()
    assert str(wrong) in str(err.value.__cause__) and str(ids) in str(err.value.__cause__)
    assert not bundle.exists()


# ---- every entry of an input folder is used or reported; pictures read with in_channels ---------


def _odd_entries(folder: Path) -> dict[Path, str]:
    """Entries of ``folder`` nothing can be made of, each with what its report must say."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [Image.open(KVASIR / "images" / f"{KVASIR_IDS[0]}.jpg").convert("RGB").resize(SIZE)] * 2
    frames[0].save(folder / "animated.gif", save_all=True, append_images=[frames[1].rotate(90)])
    (folder / "broken.jpg").symlink_to(folder / "moved_away.jpg")
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "notes.txt").write_text("scanned on Monday\n")
    (folder / "more").mkdir()
    (folder / "zero.jpg").write_bytes(b"")
    return {folder / "animated.gif": "2 frames", folder / "broken.jpg": "symbolic link to",
            folder / "loop_a.png": "symbolic link loop", folder / "loop_b.png": "symbolic link loop",
            folder / "notes.txt": "not a supported image file", folder / "more": "is a folder",
            folder / "zero.jpg": "empty (0 bytes)"}


def test_inference_segments_gif_and_webp_and_reports_every_other_entry(tmp_path):
    images = tmp_path / "images"
    odd = _odd_entries(images)
    for name, source in (("a.jpg", KVASIR_IDS[0]), ("b.gif", KVASIR_IDS[1]), ("c.webp", KVASIR_IDS[2])):
        Image.open(KVASIR / "images" / f"{source}.jpg").convert("RGB").resize(SIZE).save(images / name)
    (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not an input
    bundle, out = tmp_path / "bundle", tmp_path / "pred"
    untrained_weights(bundle)
    workflow = config_workflow("inference.json", bundle_root=str(bundle), dataset_dir=str(images), output_dir=str(out),
                               image_size=[64, 64], num_workers=0, device="cpu")
    workflow.initialize()
    with pytest.raises(Exception) as err:  # exit status non-zero: some entries were skipped
        workflow.run()
    assert isinstance(root_cause(err.value), DatasetError) and "skipped" in str(root_cause(err.value))
    written = sorted(p.name for p in out.glob("*_seg.png"))
    assert written == ["a_seg.png", "b_seg.png", "c_seg.png"]
    assert all(Image.open(out / name).size == SIZE for name in written)
    failed = {Path(entry["image"]): entry["problem"] for entry in json.loads((out / "failed.json").read_text())}
    assert set(failed) == set(odd)
    for path, words in odd.items():
        assert words in failed[path], (path, failed[path])


def test_validate_data_and_training_report_dangling_links_and_other_files(tmp_path, capsys):
    for stem, source in zip("ab", KVASIR_IDS):
        _small_pair(tmp_path, stem, source)
    Image.open(tmp_path / "images" / "b.jpg").save(tmp_path / "images" / "g.gif")  # GIF pairs are read
    Image.open(tmp_path / "masks" / "b.png").save(tmp_path / "masks" / "g.gif")
    (tmp_path / "images" / "c.jpg").symlink_to(tmp_path / "elsewhere" / "c.jpg")  # both dangling
    (tmp_path / "masks" / "a_copy.png").symlink_to(tmp_path / "elsewhere" / "a.png")
    (tmp_path / "masks" / "readme.txt").write_text("masks by Dr X\n")
    expected = {tmp_path / "images" / "c.jpg": "image file is a symbolic link to",
                tmp_path / "masks" / "a_copy.png": "mask file is a symbolic link to",
                tmp_path / "masks" / "readme.txt": "not a mask file this bundle reads"}
    problems, count = validate_dataset(tmp_path)
    assert count == 3  # a, b and g
    for path, words in expected.items():
        _single(problems, path, words)
    assert len(problems) == len(expected), _lines(problems)
    with pytest.raises(DatasetError) as err:  # training stops on them before any work
        load_datalist(tmp_path)
    assert err.value.problems == problems
    from transfuse_bundle.tools.cli.validate_data import main
    assert main([str(tmp_path)]) == 1
    assert str(tmp_path / "images" / "c.jpg") in capsys.readouterr().out


@pytest.mark.slow
def test_grey_network_trains_and_segments_colour_pictures(tmp_path):
    """--in_channels 1 on 2D pictures: colour, grey and 16-bit files are all read as one grey channel."""
    data = tmp_path / "data"
    for stem, source in zip("abc", KVASIR_IDS):
        _small_pair(data, stem, source)
    grey = np.asarray(Image.open(data / "images" / "c.jpg").convert("L"))
    (data / "images" / "c.jpg").unlink()
    Image.fromarray(grey.astype(np.uint16) * 257).save(data / "images" / "c.png")  # 16-bit grey
    parser = _train_parser(in_channels=1)
    loaded = parser.get_parsed_content("validate#preprocessing")({"image": str(data / "images" / "a.jpg"),
                                                                  "label": str(data / "masks" / "a.png")})
    assert loaded["image"].shape == (1, 32, 32)
    bundle = tmp_path / "bundle"
    run_workflow("train.json", bundle_root=str(bundle), dataset_dir=str(data), in_channels=1,
                 image_size=[64, 64], num_workers=0, batch_size=2, max_epochs=1, cache_rate=0.0, device="cpu")
    out = tmp_path / "pred"
    run_workflow("inference.json", bundle_root=str(bundle), dataset_dir=str(data),
                 output_dir=str(out), in_channels=1, image_size=[64, 64], num_workers=0, device="cpu")
    assert sorted(p.name for p in out.glob("*_seg.png")) == ["a_seg.png", "b_seg.png", "c_seg.png"]
    with pytest.raises(ValueError, match="in_channels=2: 2D pictures are read as 1 .grey. or 3 .RGB."):
        check_dataset(load_datalist(data), in_channels=2)  # what training and evaluation call first
