"""The evaluation report on real masks: distances in mm from the NIfTI geometry or the datalist's
``spacing``, pixels otherwise, per class / per dataset / per case, the plain-language summary and the
overlay pictures of volumes.

The engine is a plain ignite ``Engine`` that hands over the cases in MONAI's decollated form (the
batch with the datalist keys in ``engine.state.batch``, image / label / pred in ``engine.state.output``),
with MONAI's Dice and IoU handlers and this package's distance handlers attached, as
``configs/evaluate.json`` has them. Predictions are the real ground-truth masks moved by a few pixels,
so every expected number is computed independently here with nibabel's header spacing and MONAI's
functional metrics.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import MeanDice, MeanIoUHandler, from_engine
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from PIL import Image

from conftest import KVASIR, PROSTATE_CASE
from transfuse_bundle.metrics import HausdorffDistanceMM, SegmentationReport, SurfaceDiceMM, SurfaceDistanceMM



def _one_hot(ids: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(C, *spatial)`` float one-hot of a class-id array."""
    return torch.nn.functional.one_hot(torch.as_tensor(ids).long(), num_classes).movedim(-1, 0).float()


def _run_report(cases: list[dict], out: Path, class_names: list[str]) -> SegmentationReport:
    """Feeds ``cases`` one per iteration through the metric handlers and the report."""
    engine = Engine(lambda engine, batch: [{k: case[k] for k in ("image", "label", "pred")} for case in batch])
    pair = from_engine(["pred", "label"])
    MeanDice(include_background=False, save_details=True, output_transform=pair).attach(engine, "val_mean_dice")
    MeanIoUHandler(include_background=False, save_details=True, output_transform=pair).attach(engine, "val_mean_iou")
    HausdorffDistanceMM().attach(engine, "val_hd95")
    SurfaceDistanceMM().attach(engine, "val_asd")
    SurfaceDiceMM().attach(engine, "val_nsd")
    report = SegmentationReport(out, class_names=class_names, num_overlays=8)
    report.attach(engine)
    engine.run([[case] for case in cases], max_epochs=1)
    return report


def _expected(pred: torch.Tensor, label: torch.Tensor, spacing) -> dict[str, np.ndarray]:
    """Per-class Dice, HD95 and ASD of one case, computed independently of the report."""
    p, g = pred[None], label[None]
    inter = (p[:, 1:] * g[:, 1:]).sum(dim=tuple(range(2, p.ndim)))
    dice = 2 * inter / (p[:, 1:].sum(dim=tuple(range(2, p.ndim))) + g[:, 1:].sum(dim=tuple(range(2, p.ndim))))
    return {
        "dice": dice[0].numpy(),
        "hd95": compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=spacing)[0].numpy(),
        "asd": compute_average_surface_distance(p, g, include_background=False, symmetric=True, spacing=spacing)[0].numpy(),
    }


def test_volume_report_in_mm_per_zone_with_summary_and_slice_overlays(tmp_path):
    from monai.transforms import LoadImage

    label_file, image_file = PROSTATE_CASE / "t2_anatomy_reader1.nii.gz", PROSTATE_CASE / "t2.nii.gz"
    label = LoadImage(image_only=True, ensure_channel_first=True)(str(label_file))  # (1, H, W, D) MetaTensor
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(image_file))
    ids = label[0].numpy().astype(np.int64)
    shifts = [(3, 0), (0, -6)]  # two "predictions": the expert's zones moved by 3 and 6 voxels in-plane
    cases = []
    for shift in shifts:
        moved = np.roll(ids, shift, axis=(0, 1))
        cases.append({"image": image, "label": MetaTensor(_one_hot(ids, 3), meta=label.meta),
                      "pred": MetaTensor(_one_hot(moved, 3), meta=label.meta), "dataset": "Prostate158"})
    _run_report(cases, tmp_path, ["background", "central gland", "peripheral zone"])

    zooms = [float(z) for z in nib.load(label_file).header.get_zooms()]  # spacing from the header, not the affine
    expected = [_expected(c["pred"], c["label"], zooms) for c in cases]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_cases"] == 2 and metrics["hd95_unit"] == metrics["asd_unit"] == "mm"
    assert set(metrics["per_dataset"]) == {"Prostate158"}
    for c, zone in enumerate(["central gland", "peripheral zone"]):
        for key, name in (("dice", "mean_dice"), ("hd95", "hd95"), ("asd", "asd")):
            want = np.mean([e[key][c] for e in expected])
            assert metrics["per_class"][zone][name] == pytest.approx(want, rel=1e-4), (zone, key)
            assert metrics["per_dataset"]["Prostate158"]["per_class"][zone][name] == pytest.approx(want, rel=1e-4)
    # no boundary point moves further than the shift: 6 voxels x 0.40 mm, far below 6 (voxel units)
    assert 0 < expected[1]["hd95"].max() <= 6 * zooms[1] + 1e-4

    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    assert len(rows) == 2 and all(r["distance_unit"] == "mm" and r["dataset"] == "Prostate158" for r in rows)
    for row, want in zip(rows, expected):
        assert float(row["dice_peripheral zone"]) == pytest.approx(want["dice"][1], rel=1e-4)
        assert float(row["hd95_central gland"]) == pytest.approx(want["hd95"][0], rel=1e-4)

    summary = (tmp_path / "summary.md").read_text()
    median_pz = np.median([e["dice"][1] for e in expected])
    assert "| peripheral zone |" in summary and "millimetres" in summary
    assert f"**peripheral zone**: median Dice {median_pz:.2f} over 2 volumes" in summary

    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    # slices of the first case named by the file, of the second by its folder too (both are t2.nii.gz)
    assert overlays and all(p.name.startswith(("t2_slice", "020_t2_slice")) for p in overlays)
    largest = int((ids > 0).reshape(-1, ids.shape[-1]).sum(0).argmax())
    assert (tmp_path / "overlays" / f"t2_slice{largest:03d}.png").is_file()
    picture = np.asarray(Image.open(tmp_path / "overlays" / f"t2_slice{largest:03d}.png"))
    assert picture.shape == (ids.shape[1], ids.shape[0], 3)
    assert ((picture == [0, 255, 0]).all(-1)).any() and ((picture == [255, 0, 0]).all(-1)).any()


def test_2d_report_uses_datalist_spacing_else_pixels(tmp_path):
    masks = sorted((KVASIR / "masks").glob("*.png"))[:3]
    spacing = [0.5, 0.25]  # (row, col) mm per pixel: anisotropic, so rows and columns must not be swapped
    cases = []
    for index, path in enumerate(masks):
        ids = (np.asarray(Image.open(path).convert("L")) > 127).astype(np.int64)  # (H, W)
        moved = np.roll(ids, (4, 7), axis=(0, 1))
        meta = {"filename_or_obj": str(path)}
        case = {"image": MetaTensor(torch.zeros(1, *ids.shape), meta=meta),
                "label": MetaTensor(_one_hot(ids, 2), meta=meta), "pred": MetaTensor(_one_hot(moved, 2), meta=meta),
                "dataset": "with spacing" if index < 2 else "pixels only"}
        if index < 2:
            case["spacing"] = spacing
        cases.append(case)
    _run_report(cases, tmp_path, ["background", "lesion"])

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["hd95_unit"] == "mixed"
    assert metrics["per_dataset"]["with spacing"]["hd95_unit"] == "mm"
    assert metrics["per_dataset"]["pixels only"]["hd95_unit"] == "px"
    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    assert [r["distance_unit"] for r in rows] == ["mm", "mm", "px"]
    for row, case in zip(rows, cases):
        want = _expected(case["pred"], case["label"], case.get("spacing"))
        assert float(row["hd95"]) == pytest.approx(float(want["hd95"][0]), rel=1e-4)
        assert float(row["asd"]) == pytest.approx(float(want["asd"][0]), rel=1e-4)
    mm_hd95 = np.mean([float(r["hd95"]) for r in rows[:2]])
    assert metrics["per_dataset"]["with spacing"]["hd95"] == pytest.approx(mm_hd95, rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "overlays").glob("*.png")) == sorted(f"{p.stem}.png" for p in masks)
    summary = (tmp_path / "summary.md").read_text()
    assert "## with spacing (2 images, distances in millimetres)" in summary
    assert "## pixels only (1 image, distances in pixels of the original image)" in summary


def test_bad_datalist_spacing_is_named(tmp_path):
    path = sorted((KVASIR / "masks").glob("*.png"))[0]
    ids = (np.asarray(Image.open(path).convert("L")) > 127).astype(np.int64)
    meta = {"filename_or_obj": str(path)}
    case = {"image": MetaTensor(torch.zeros(1, *ids.shape), meta=meta), "label": MetaTensor(_one_hot(ids, 2), meta=meta),
            "pred": MetaTensor(_one_hot(ids, 2), meta=meta), "spacing": [0.5, 0.5, 0.5]}
    with pytest.raises(ValueError, match=r"'spacing' \[0.5, 0.5, 0.5\] must give 2 positive numbers"):
        _run_report([case], tmp_path, ["background", "lesion"])


def test_polyp_metrics_false_from_the_command_line_turns_them_off(tmp_path):
    """``--polyp_metrics false`` reaches the handler as the string "false", which bool() would take for true."""
    assert SegmentationReport(tmp_path, polyp_metrics="false").polyp_metrics is False
    assert SegmentationReport(tmp_path, polyp_metrics="true").polyp_metrics is True
    with pytest.raises(ValueError, match="polyp_metrics must be true or false"):
        SegmentationReport(tmp_path, polyp_metrics="maybe")
