"""The polyp-literature metrics of the PraNet evaluation toolbox, through PySODMetrics (``py_sod_metrics``).

PraNet, Polyp-PVT and the successors of TransFuse's Table 1 report, per test set, mean Dice and mean
IoU, weighted F-measure (wFm), S-measure (Sm), mean and max E-measure (Em) and the mean absolute error
(MAE), computed by the PraNet MATLAB toolbox from the saved probability maps. PySODMetrics is the
maintained Python port of those functions; nothing is recomputed here. Per image:

* the probability map at the original resolution is min-max normalised and saved as 8 bits, as
  PraNet's ``test.py`` writes its PNGs (:func:`to_toolbox_image`); the mask is 0 / 255;
* ``mdice``, ``miou``: Dice and IoU of the map thresholded at each of 256 levels, averaged over the
  levels (the toolbox's meanDic / meanIoU; PySODMetrics ``FmeasureV2`` with ``DICEHandler`` /
  ``IOUHandler``, ``with_dynamic=True``);
* ``wfm`` (``WeightedFmeasure``), ``sm`` (``Smeasure``), ``mae`` (``MAE``);
* ``mean_em``: the E-measure averaged over the 256 levels (``Emeasure``'s curve).

Per dataset every number is the mean over images, except ``max_em``: the maximum over the levels of
the E-measure curve averaged over images, as the toolbox and ``Emeasure.get_results`` compute it. The
per-image ``max_em`` of per_case.csv is that image's own maximum.

An empty ground truth follows PySODMetrics: Sm = 1 - mean(map), wFm = 0, Dice 0 at the levels where the
map has foreground (1 where neither has).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["TOOLBOX_METRICS", "to_toolbox_image", "toolbox_case", "toolbox_summary", "require_pysodmetrics"]

#: per-image metric name -> what it is, in the order the reports list them.
TOOLBOX_METRICS = {
    "mdice": "mean Dice over 256 thresholds",
    "miou": "mean IoU over 256 thresholds",
    "wfm": "weighted F-measure",
    "sm": "S-measure",
    "mean_em": "mean E-measure",
    "max_em": "max E-measure",
    "mae": "mean absolute error",
}


def require_pysodmetrics() -> Any:
    """The ``py_sod_metrics`` module, or an ImportError that says how to install it or turn the metrics off."""
    try:
        import py_sod_metrics
    except ImportError as err:
        raise ImportError(
            "the polyp toolbox metrics need PySODMetrics: pip install --no-deps -r requirements-metrics.txt "
            "(or set polyp_metrics to false)"
        ) from err
    return py_sod_metrics


def to_toolbox_image(probability: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 map as PraNet's test script saves it: ``(p - min) / (max - min + 1e-8)`` x 255, rounded."""
    probability = np.asarray(probability, dtype=np.float64)
    if probability.ndim != 2:
        raise ValueError(f"the polyp toolbox metrics need a (H, W) probability map, got shape {probability.shape}")
    scaled = (probability - probability.min()) / (probability.max() - probability.min() + 1e-8)
    return np.round(scaled * 255).astype(np.uint8)


def toolbox_case(probability: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The toolbox metrics of one image: ``TOOLBOX_METRICS`` keys -> float, plus ``"em_curve"`` (256,).

    Args:
        probability: ``(H, W)`` foreground probability (any real values; see :func:`to_toolbox_image`).
        truth: ``(H, W)`` ground-truth mask (non-zero = foreground), same size.
    """
    psm = require_pysodmetrics()
    truth = np.asarray(truth)
    if truth.shape != np.shape(probability):
        raise ValueError(f"probability map {np.shape(probability)} and mask {truth.shape} differ in size")
    pred, gt = to_toolbox_image(probability), np.where(truth > 0, 255, 0).astype(np.uint8)
    overlap = psm.FmeasureV2(metric_handlers={
        "dice": psm.DICEHandler(with_dynamic=True, with_adaptive=False),
        "iou": psm.IOUHandler(with_dynamic=True, with_adaptive=False),
    })
    others = {"wfm": psm.WeightedFmeasure(), "sm": psm.Smeasure(), "em": psm.Emeasure(), "mae": psm.MAE()}
    for metric in (overlap, *others.values()):
        metric.step(pred=pred, gt=gt)
    curves = overlap.get_results()
    em_curve = np.asarray(others["em"].get_results()["em"]["curve"], dtype=np.float64)
    return {
        "mdice": float(np.mean(curves["dice"]["dynamic"])),
        "miou": float(np.mean(curves["iou"]["dynamic"])),
        "wfm": float(others["wfm"].get_results()["wfm"]),
        "sm": float(others["sm"].get_results()["sm"]),
        "mean_em": float(em_curve.mean()),
        "max_em": float(em_curve.max()),
        "mae": float(others["mae"].get_results()["mae"]),
        "em_curve": em_curve,
    }


def toolbox_summary(cases: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Dataset-level toolbox metrics of :func:`toolbox_case` results: means over images, and ``max_em``
    from the mean E-measure curve; ``None`` values (and ``num_cases`` 0) for no images."""
    summary: dict[str, float | int | None] = {"num_cases": len(cases)}
    if not cases:
        return {**summary, **{key: None for key in TOOLBOX_METRICS}}
    for key in TOOLBOX_METRICS:
        summary[key] = float(np.mean([case[key] for case in cases]))
    mean_curve = np.mean([case["em_curve"] for case in cases], axis=0)
    summary["mean_em"], summary["max_em"] = float(mean_curve.mean()), float(mean_curve.max())
    return summary
