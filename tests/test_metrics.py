"""The report's metrics against values computed by hand: the empty-mask policy, NSD and HD95 in mm on an
anisotropic volume, sensitivity / specificity / thresholded Jaccard, and the polyp toolbox metrics
against PySODMetrics' own functions on the same maps.

The metric handlers are the ones ``configs/evaluate.json`` defines (parsed from it), attached to a plain
ignite ``Engine`` that hands over the cases as MONAI's evaluator does. Shapes are squares and plates
rather than discs so that every boundary distance can be counted by hand (the counts are in the
comments); Kvasir-SEG masks are read in place for the tests on real outlines.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.metrics import compute_hausdorff_distance
from PIL import Image

from conftest import KVASIR
from transfuse_bundle.metrics import SegmentationReport, toolbox_case, toolbox_summary
from transfuse_bundle.metrics.polyp import to_toolbox_image
from transfuse_bundle.tools.tasks import config_parser



def _one_hot(ids: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    """``(C, *spatial)`` float one-hot of a class-id array."""
    return torch.nn.functional.one_hot(torch.as_tensor(ids).long(), num_classes).movedim(-1, 0).float()


def _evaluate_handlers(**overrides) -> dict:
    """The evaluation's metric handlers, as train.json + evaluate.json define them."""
    parser = config_parser("evaluate.json", **overrides)
    return {**parser.get_parsed_content("validate#key_metric"), **parser.get_parsed_content("validate#additional_metrics")}


def _run_report(cases: list[dict], out: Path, nsd_tolerance: float = 2.0, **report_args) -> tuple[dict, list[dict]]:
    """Feeds ``cases`` one per iteration through evaluate.json's metric handlers and the report;
    returns metrics.json and the rows of per_case.csv."""
    keys = ("image", "label", "pred", "prob")
    engine = Engine(lambda engine, batch: [{k: case[k] for k in keys if k in case} for case in batch])
    for name, handler in _evaluate_handlers(nsd_tolerance=nsd_tolerance).items():
        handler.attach(engine, name)
    SegmentationReport(out, class_names=["background", "polyp"], num_overlays=0, nsd_tolerance=nsd_tolerance,
                       **report_args).attach(engine)
    engine.run([[case] for case in cases], max_epochs=1)
    return json.loads((out / "metrics.json").read_text()), list(csv.DictReader(open(out / "per_case.csv")))


def _case(truth: np.ndarray, pred: np.ndarray, name: str, **extra) -> dict:
    meta = {"filename_or_obj": name}
    return {"image": MetaTensor(torch.zeros(1, *truth.shape), meta=meta), "label": MetaTensor(_one_hot(truth), meta=meta),
            "pred": MetaTensor(_one_hot(pred), meta=meta), **extra}


def _square(shift: int = 0) -> np.ndarray:
    mask = np.zeros((64, 64), np.int64)
    mask[10:30, 10 + shift:30 + shift] = 1  # 20 x 20 = 400 pixels, boundary ring of 76 pixels
    return mask


def test_hand_computed_values_and_empty_mask_policy(tmp_path):
    """Five 64x64 cases in pixels: perfect, a 20x20 square shifted by 4 columns, empty prediction,
    empty truth, both empty. No spacing: distances in pixels, the maximum is the diagonal 64 * sqrt(2)."""
    empty = np.zeros((64, 64), np.int64)
    cases = [_case(_square(), _square(), "perfect.png"), _case(_square(), _square(4), "shifted.png"),
             _case(_square(), empty, "empty_prediction.png"), _case(empty, _square(), "empty_truth.png"),
             _case(empty, empty, "both_empty.png")]
    metrics, rows = _run_report(cases, tmp_path, polyp_metrics=False)
    diagonal = 64 * math.sqrt(2)
    # Shifted square, boundary distances from each ring to the other (both directions alike): 32 pixels at
    # 0 (top and bottom rows over the overlap), 4 each at 1, 2, 3 (corners), 32 at 4 -> HD95 4 (the 95th
    # percentile falls among the 4s), ASD (4 + 8 + 12 + 128) / 76 = 2, NSD at 2 px (32 + 4 + 4) / 76.
    # Overlap 20 x 16 = 320: Dice 640 / 800, IoU 320 / 480 >= 0.65, so the thresholded Jaccard keeps it;
    # 80 false positives among 4096 - 400 background pixels.
    expected = {
        "perfect.png": dict(dice=1, iou=1, sensitivity=1, specificity=1, thresholded_jaccard=1, hd95=0, asd=0, nsd=1,
                            empty="none"),
        "shifted.png": dict(dice=0.8, iou=2 / 3, sensitivity=0.8, specificity=1 - 80 / 3696, thresholded_jaccard=2 / 3,
                            hd95=4, asd=2, nsd=40 / 76, empty="none"),
        "empty_prediction.png": dict(dice=0, iou=0, sensitivity=0, specificity=1, thresholded_jaccard=0, hd95=diagonal,
                                     asd=diagonal, nsd=0, empty="prediction_empty"),
        "empty_truth.png": dict(dice=0, iou=0, sensitivity=0, specificity=1 - 400 / 4096, thresholded_jaccard=0,
                                hd95=diagonal, asd=diagonal, nsd=0, empty="truth_empty"),
        "both_empty.png": dict(dice=1, iou=1, sensitivity=1, specificity=1, thresholded_jaccard=1, hd95=0, asd=0, nsd=1,
                               empty="both_empty"),
    }
    assert [r["filename"] for r in rows] == list(expected)
    for row in rows:
        want = expected[row["filename"]]
        assert row["empty"] == want.pop("empty")
        for key, value in want.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), (row["filename"], key)  # 6 digits
        assert all(cell not in ("", "nan", "inf") for cell in row.values()), row
    for key, name in (("dice", "mean_dice"), ("iou", "mean_iou"), ("hd95", "hd95"), ("nsd", "nsd"),
                      ("sensitivity", "sensitivity"), ("thresholded_jaccard", "thresholded_jaccard")):
        mean = np.mean([float(r[key]) for r in rows])
        assert metrics[name] == pytest.approx(mean, rel=1e-5) and metrics["per_class"]["polyp"][name] == pytest.approx(mean, rel=1e-5)
    counts = {"both_empty": 1, "prediction_empty": 1, "truth_empty": 1}
    assert metrics["empty_cases"] == metrics["per_class"]["polyp"]["empty_cases"] == counts
    assert metrics["per_dataset"]["all"]["per_class"]["polyp"]["empty_cases"] == counts
    assert metrics["nsd_tolerance"] == 2.0 and metrics["units"]["nsd_tolerance"] == "px"
    assert set(metrics["empty_policy"]) >= {"both_empty", "prediction_empty", "truth_empty"}
    assert "polyp_toolbox" not in metrics and "mdice" not in rows[0]  # polyp_metrics=False turns them off
    summary = (tmp_path / "summary.md").read_text()
    assert "Empty masks are counted, never skipped" in summary and "| 1 / 1 / 1 | 5 |" in summary


def test_anisotropic_volume_hd95_and_nsd_in_mm(tmp_path):
    """A 1-voxel-thick 16x16 plate at slice 3 of a 32x32x8 volume with 0.5 x 0.5 x 3 mm voxels, predicted
    one slice higher and 2 columns over. Every predicted voxel over the truth is 3 mm from it (one
    slice); the 2 x 16 voxels beyond it are sqrt(3^2 + 0.5^2) and sqrt(3^2 + 1^2) mm away. 224 distances
    of 3, 16 of sqrt(9.25), 16 of sqrt(10), both ways: HD95 sqrt(10) (the 95th percentile lands in the last
    16), ASD their mean, NSD 0 at 2 mm and 240 / 256 at 3.05 mm. In voxels the same case would give 1."""
    truth = np.zeros((32, 32, 8), np.int64)
    truth[8:24, 8:24, 3] = 1
    pred = np.zeros_like(truth)
    pred[8:24, 10:26, 4] = 1
    spacing = [0.5, 0.5, 3.0]
    asd = (224 * 3 + 16 * math.sqrt(9.25) + 16 * math.sqrt(10)) / 256
    for tolerance, nsd in ((2.0, 0.0), (3.05, 240 / 256)):
        out = tmp_path / str(tolerance)
        cases = [_case(truth, pred, "plate.nii.gz", spacing=spacing),
                 _case(truth, np.zeros_like(truth), "missed.nii.gz", spacing=spacing)]
        metrics, rows = _run_report(cases, out, nsd_tolerance=tolerance)
        assert [r["distance_unit"] for r in rows] == ["mm", "mm"] and metrics["hd95_unit"] == "mm"
        assert float(rows[0]["hd95"]) == pytest.approx(math.sqrt(10), rel=1e-5)
        assert float(rows[0]["asd"]) == pytest.approx(asd, rel=1e-5)
        assert float(rows[0]["nsd"]) == pytest.approx(nsd, abs=1e-6)
        diagonal = math.sqrt((32 * 0.5) ** 2 + (32 * 0.5) ** 2 + (8 * 3.0) ** 2)  # the volume's, in mm
        assert float(rows[1]["hd95"]) == pytest.approx(diagonal, rel=1e-5) and rows[1]["empty"] == "prediction_empty"
        assert metrics["hd95"] == pytest.approx((math.sqrt(10) + diagonal) / 2, rel=1e-5)
        assert "polyp_toolbox" not in metrics  # volumes: no toolbox metrics


def test_a_model_that_predicts_nothing_no_longer_gets_a_better_hd95(tmp_path):
    """Real Kvasir outlines. Model A tries everywhere: 5 px off on the easy images, 60 px off on the
    hard ones. Model B is as good on the easy images and predicts nothing on the hard ones. MONAI's mean
    skips B's NaNs and ranks B better; the report ranks A better and says how many masks were empty."""
    masks = [(np.asarray(Image.open(p).convert("L")) > 127).astype(np.int64) for p in sorted((KVASIR / "masks").glob("*.png"))[:4]]
    hard = [False, True, False, True]
    models = {
        "A": [np.roll(m, 60 if h else 5, axis=1) for m, h in zip(masks, hard)],
        "B": [np.zeros_like(m) if h else np.roll(m, 5, axis=1) for m, h in zip(masks, hard)],
    }
    monai_mean, report = {}, {}
    for name, preds in models.items():
        hd = [float(compute_hausdorff_distance(_one_hot(p)[None], _one_hot(m)[None], percentile=95)[0, 0])
              for p, m in zip(preds, masks)]
        monai_mean[name] = np.nanmean(hd)
        cases = [_case(m, p, f"{name}_{i}.png") for i, (m, p) in enumerate(zip(masks, preds))]
        report[name], rows = _run_report(cases, tmp_path / name, polyp_metrics=False)
        assert all(r["hd95"] not in ("", "nan", "inf") for r in rows)
    assert monai_mean["B"] < monai_mean["A"]  # the flaw: predicting nothing paid off
    assert report["B"]["hd95"] > report["A"]["hd95"]
    assert report["B"]["empty_cases"]["prediction_empty"] == 2 and report["A"]["empty_cases"]["prediction_empty"] == 0
    diagonals = [math.hypot(*m.shape) for m, h in zip(masks, hard) if h]
    b_rows = list(csv.DictReader(open(tmp_path / "B" / "per_case.csv")))
    assert [float(r["hd95"]) for r, h in zip(b_rows, hard) if h] == pytest.approx(diagonals, rel=1e-5)


def _probability_maps(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Imperfect soft maps of real masks: shifted, blurred by a box filter, with noise."""
    rng = np.random.default_rng(0)
    maps = []
    for i, mask in enumerate(masks):
        soft = np.roll(mask.astype(np.float64), 8 * (i + 1), axis=0)
        kernel = np.ones(9) / 9
        soft = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, soft)
        maps.append(np.clip(0.8 * soft + 0.2 * rng.random(mask.shape), 0, 1))
    return maps


def test_toolbox_metrics_agree_with_pysodmetrics(tmp_path):
    """Per-dataset toolbox numbers equal PySODMetrics' own evaluators run over the same maps (as its README
    and the PraNet toolbox use them), and a perfect map scores as the definitions say."""
    import py_sod_metrics as psm

    masks = [np.asarray(Image.open(p).convert("L")) > 127 for p in sorted((KVASIR / "masks").glob("*.png"))[4:7]]
    maps = _probability_maps(masks)
    ours = toolbox_summary([toolbox_case(p, m) for p, m in zip(maps, masks)])

    overlap = psm.FmeasureV2(metric_handlers={"dice": psm.DICEHandler(with_dynamic=True, with_adaptive=False),
                                              "iou": psm.IOUHandler(with_dynamic=True, with_adaptive=False)})
    sm, em, wfm, mae = psm.Smeasure(), psm.Emeasure(), psm.WeightedFmeasure(), psm.MAE()
    for p, m in zip(maps, masks):
        for metric in (overlap, sm, em, wfm, mae):
            metric.step(pred=to_toolbox_image(p), gt=(m * 255).astype(np.uint8))
    curves, em_curve = overlap.get_results(), em.get_results()["em"]["curve"]
    theirs = {"mdice": curves["dice"]["dynamic"].mean(), "miou": curves["iou"]["dynamic"].mean(),
              "wfm": wfm.get_results()["wfm"], "sm": sm.get_results()["sm"], "mean_em": em_curve.mean(),
              "max_em": em_curve.max(), "mae": mae.get_results()["mae"]}
    assert ours["num_cases"] == 3
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(float(value), rel=1e-9), key
    assert 0 < ours["mdice"] < 1 and 0 < ours["sm"] < 1 and 0 < ours["mae"] < 1

    perfect = toolbox_case(masks[0].astype(np.float64), masks[0])
    assert perfect["sm"] == pytest.approx(1.0) and perfect["mae"] == 0.0
    # PySODMetrics' eps terms put these at 1 +- ~3e-6
    assert perfect["max_em"] == pytest.approx(1.0, abs=1e-5) and perfect["wfm"] == pytest.approx(1.0, abs=1e-5)
    # a 0/255 map is foreground at 255 of the 256 levels (Dice 1) and everywhere at level 0 (Dice 2F / (F + N))
    fg, n = masks[0].sum(), masks[0].size
    assert perfect["mdice"] == pytest.approx((255 + 2 * fg / (fg + n)) / 256)

    # through the report: the 'prob' map of the evaluator's output, per image and per dataset
    cases = [_case(m.astype(np.int64), (p > 0.5).astype(np.int64), f"k{i}.png", prob=torch.as_tensor(p)[None].float(),
                   dataset="Kvasir") for i, (p, m) in enumerate(zip(maps, masks))]
    metrics, rows = _run_report(cases, tmp_path)
    for key in ("mdice", "miou", "wfm", "sm", "mae"):
        assert metrics["per_dataset"]["Kvasir"]["polyp_toolbox"][key] == pytest.approx(ours[key], rel=1e-5), key
        assert float(rows[0][key]) == pytest.approx(toolbox_case(maps[0], masks[0])[key], rel=1e-4), key
    assert "| mDice | mIoU | wFm | Sm | mean Em | max Em | MAE |" in (tmp_path / "summary.md").read_text()
