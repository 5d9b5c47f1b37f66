"""Real data: a short CPU training on a Kvasir-SEG subset, then the evaluate command on held-out images.

The data is read in place from ``../shared/data/kvasir_seg`` (never copied into the repository); a
datalist of a subset is written to tmp_path. Pass criteria are the two trivial constant predictions,
scored on the same held-out masks with the same per-image definitions: "background everywhere" (Dice
and IoU 0 on images that all hold a polyp) and "polyp everywhere" (the best constant for Dice and
IoU). The network must beat both clearly on Dice and IoU. A 5-epoch network trained from scratch at
64x64 still over-segments, so its pixel accuracy is checked against "polyp everywhere" only, not
against "background everywhere" (about 0.87 on Kvasir, which it does not beat).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import KVASIR, check_binary_report, run_workflow
from transfuse_bundle.data import write_datalist



def _constant_prediction_scores(masks: list[np.ndarray], polyp: bool) -> dict[str, float]:
    """Per-image Dice, IoU and pixel accuracy of predicting the same class everywhere, averaged over
    images as the evaluation does (an image whose Dice is undefined, 0/0, is left out as MONAI does)."""
    dice, iou, accuracy = [], [], []
    for mask in masks:
        pred = np.full(mask.shape, polyp)
        inter, total, union = (pred & mask).sum(), pred.sum() + mask.sum(), (pred | mask).sum()
        if total > 0:
            dice.append(2 * inter / total)
            iou.append(inter / union)
        accuracy.append((pred == mask).mean())
    return {"mean_dice": float(np.mean(dice)), "mean_iou": float(np.mean(iou)), "accuracy": float(np.mean(accuracy))}


@pytest.mark.slow
def test_kvasir_short_training_beats_trivial_baselines(tmp_path):
    assert (KVASIR / "images").is_dir(), f"the real-data check needs Kvasir-SEG at {KVASIR}"
    lists = write_datalist(KVASIR, tmp_path / "datalist.json", num_training=96, num_validation=16, num_test=24, seed=0)
    common = {"dataset_dir": str(tmp_path / "datalist.json"), "bundle_root": str(tmp_path / "bundle"),
              "image_size": [64, 64], "num_workers": 0}
    run_workflow("train.json", **common, batch_size=8, max_epochs=5, val_interval=5, checkpoint_interval=5)
    out = tmp_path / "eval"
    run_workflow("evaluate.json", **common, output_dir=str(out))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 24
    masks = [np.asarray(Image.open(case["label"]).convert("L")) > 127 for case in lists["test"]]
    all_polyp = _constant_prediction_scores(masks, polyp=True)
    all_background = _constant_prediction_scores(masks, polyp=False)
    print(f"Kvasir subset: {metrics}\n  all polyp: {all_polyp}\n  all background: {all_background}")
    for key, margin in (("mean_dice", 0.1), ("mean_iou", 0.05)):
        assert metrics[key] > max(all_polyp[key], all_background[key]) + margin, key
    assert metrics["accuracy"] > all_polyp["accuracy"] + 0.3
    assert metrics["hd95"] is not None and metrics["hd95"] > 0
    assert len(list((out / "overlays").glob("*.png"))) == 8
    check_binary_report(metrics, out, num_cases=24)

