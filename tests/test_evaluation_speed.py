"""The evaluation's speed-ups keep every value: MONAI's surface metrics on the window around both masks
equal them on the whole image (real Kvasir-SEG masks, masks touching the border, empty masks), and the
evaluation benchmark (``transfuse-benchmark --evaluation``) runs end to end on real images.

Real images are read in place from ``../shared/data/kvasir_seg``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from PIL import Image

from conftest import KVASIR, untrained_weights
from transfuse_bundle.tools.benchmarking import EVALUATION_STAGES
from transfuse_bundle.tools.cli.benchmark import main as benchmark_main
from transfuse_bundle.data import write_datalist
from transfuse_bundle.metrics.distances import (_HausdorffDistanceMetric, _SurfaceDiceMetric, _SurfaceDistanceMetric,
                                                union_window)



def _kvasir_mask(index: int = 0) -> np.ndarray:
    assert (KVASIR / "masks").is_dir(), f"the real-data check needs Kvasir-SEG at {KVASIR}"
    path = sorted((KVASIR / "masks").glob("*.png"))[index]
    return np.asarray(Image.open(path).convert("L")) > 127


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """``(1, 2, H, W)`` one-hot, transposed as the evaluation's postprocessing leaves it."""
    fg = torch.as_tensor(mask.T.copy()).float()[None]
    return torch.cat([1 - fg, fg])[None]


def _cases():
    truth = _kvasir_mask()
    shifted = np.roll(truth, (17, -23), (0, 1))
    border = truth.copy()
    border[:, :5] = True  # touches the left border, and the top and bottom ones
    corner = np.zeros_like(truth)
    corner[-40:, -60:] = True  # only the bottom-right corner
    return {"shifted": (shifted, truth), "border": (border, truth), "corner": (corner, truth),
            "corner_both": (corner, np.roll(corner, (-3, -5), (0, 1))),
            "prediction_empty": (np.zeros_like(truth), truth), "truth_empty": (shifted, np.zeros_like(truth)),
            "both_empty": (np.zeros_like(truth), np.zeros_like(truth))}


@pytest.mark.parametrize("name", list(_cases()))
def test_window_keeps_monai_surface_metrics(name):
    pred_mask, truth_mask = _cases()[name]
    pred, truth = _one_hot(pred_mask), _one_hot(truth_mask)
    spacing = [0.7, 1.3]  # anisotropic, as a hip X-ray's
    pairs = [(_HausdorffDistanceMetric(percentile=95), HausdorffDistanceMetric(percentile=95)),
             (_SurfaceDistanceMetric(symmetric=True), SurfaceDistanceMetric(symmetric=True)),
             (_SurfaceDiceMetric(2.0), SurfaceDiceMetric(class_thresholds=[2.0]))]
    for ours, monai in pairs:
        with pytest.warns() if "empty" in name else _no_warning():
            expected = monai(pred, truth, spacing=spacing)
        got = ours(pred, truth, spacing=spacing)
        if "empty" not in name:  # the policy replaces MONAI's NaN / inf there (tests/test_metrics.py)
            assert torch.equal(got, expected), (name, type(ours).__name__, got, expected)
        else:
            assert torch.isfinite(got).all(), (name, got)
    window = union_window(pred, truth, first=1)
    if name == "both_empty":
        assert window is None
    elif name in ("corner", "corner_both"):
        assert window[2].stop == pred.shape[2] and window[3].stop == pred.shape[3]  # clipped at the border
        assert window[2].start > 0 and window[3].start > 0


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_window_is_the_union_box_with_one_pixel(tmp_path):
    truth = np.zeros((50, 60), bool)
    truth[10:20, 30:40] = True
    pred = np.zeros_like(truth)
    pred[15:25, 5:8] = True
    window = union_window(_one_hot(pred), _one_hot(truth), first=1)  # transposed: (W, H)
    assert window[2:] == (slice(4, 41), slice(9, 26))


def test_evaluation_benchmark_on_kvasir(tmp_path):
    bundle = tmp_path / "bundle"
    untrained_weights(bundle, image_size=(64, 64))
    datalist = tmp_path / "datalist.json"
    write_datalist(KVASIR, datalist, num_training=1, num_test=3, seed=0)
    out = tmp_path / "eval"
    assert benchmark_main(["--evaluation", str(datalist), "--bundle-root", str(bundle), "--sizes", "64",
                           "--iters", "2", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["num_cases"] == 3 and result["size"] == "64x64"
    assert set(result["per_case_ms"]) == set(EVALUATION_STAGES) == set(result["stage_ratio"])
    assert result["wall_s"] > 0 and result["forward_ms"] > 0
    for stage in ("start", "loading", "inference", "metrics", "report_metrics", "pictures"):
        assert result["per_case_ms"][stage] > 0, stage
    # the stages cover the child's wall time (up to rounding), and the ratio is their sum over the forward
    assert sum(result["per_case_ms"].values()) * 3 / 1000 == pytest.approx(result["wall_s"], rel=0.02)
    assert sum(result["stage_ratio"].values()) == pytest.approx(result["ratio"], rel=0.02)
    report = json.loads((tmp_path / "eval_report" / "metrics.json").read_text())
    assert report["num_cases"] == 3 and 0 <= report["mean_dice"] <= 1
    assert len(list((tmp_path / "eval_report" / "overlays").glob("*.png"))) == 3


def test_evaluation_benchmark_with_missing_weights_says_why_in_one_line(tmp_path, capfd):
    datalist = tmp_path / "datalist.json"
    write_datalist(KVASIR, datalist, num_training=1, num_test=2, seed=0)
    out = tmp_path / "eval"
    assert benchmark_main(["--evaluation", str(datalist), "--bundle-root", str(tmp_path / "nothing"), "--sizes", "64",
                           "--iters", "2", "--threads", "1", "--out", str(out)]) == 1
    said = capfd.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(said)
    assert said[-1].startswith("error: ") and str(tmp_path / "nothing" / "models" / "model.pt") in said[-1]
    assert not out.with_suffix(".json").exists()


def test_shared_edge_distances_never_mix_up_cases():
    """HD95, ASD and NSD share MONAI's edge distances per case; masks of equal size and area (rolled copies) and
    several classes, metric after metric and case after case, each still give MONAI's own values."""
    truth = _kvasir_mask()
    rolled = [np.roll(truth, (dy, dx), (0, 1)) for dy, dx in ((9, 0), (0, 9), (-9, 4))]  # same area, same shape
    three_classes = np.zeros(truth.shape, np.int64)
    three_classes[truth] = 1
    three_classes[np.roll(truth, (40, 40), (0, 1)) & ~truth] = 2

    def classes(ids):
        return torch.as_tensor(np.stack([ids == c for c in range(3)]))[None].float()

    cases = [(_one_hot(p), _one_hot(truth)) for p in rolled] + [(_one_hot(truth), _one_hot(rolled[0]))]
    cases.append((classes(np.roll(three_classes, (5, -7), (0, 1))), classes(three_classes)))
    ours = [_HausdorffDistanceMetric(percentile=95), _SurfaceDistanceMetric(symmetric=True), _SurfaceDiceMetric(2.0)]
    for pred, truth_one_hot in cases + cases[::-1]:
        monai = [HausdorffDistanceMetric(percentile=95), SurfaceDistanceMetric(symmetric=True),
                 SurfaceDiceMetric(class_thresholds=[2.0] * (pred.shape[1] - 1))]
        for metric, reference in zip(ours, monai):
            expected = reference(pred, truth_one_hot, spacing=[0.7, 1.3])
            assert torch.equal(metric(pred, truth_one_hot, spacing=[0.7, 1.3]), expected), type(metric).__name__
