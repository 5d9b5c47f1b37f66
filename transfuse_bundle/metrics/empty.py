"""The empty-mask policy: what every metric of this package says when a mask is empty.

MONAI's metrics return NaN (or inf) when the prediction or the ground truth of a class is empty, and a
mean that skips those cases rewards a model that predicts nothing on its hardest images. Every report
of this package (the evaluation report, its handlers, the polyp benchmark) applies instead, per case
and class:

=====================================  =========================  ==========================================
case                                   Dice, IoU, NSD,            HD95, ASD
                                       sensitivity
=====================================  =========================  ==========================================
both empty (``both_empty``)            1 (nothing to find)        0
prediction empty, truth not            0                          the maximum distance (below)
(``prediction_empty``)
truth empty, prediction not            0                          the maximum distance
(``truth_empty``)
=====================================  =========================  ==========================================

The maximum distance is, by default (``empty_distance="diagonal"``), the diagonal of the image or volume
in the report's unit: ``sqrt(sum((size_i * spacing_i) ** 2))`` over the spatial axes, in mm when the
spacing is known and in pixels of the original image otherwise; no boundary distance inside the image can
exceed it. A number instead of ``"diagonal"`` gives a fixed maximum in the report's unit.

Specificity, TN / (TN + FP), is defined whenever the image has background; it is 1 in the rare case
where the ground truth covers the whole image (no background to get wrong).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["EMPTY_KINDS", "EMPTY_POLICY", "OVERLAP", "DISTANCE", "empty_masks", "empty_kind", "max_distance",
           "apply_empty_policy"]

#: the three kinds of empty case, as they are named in metrics.json, per_case.csv and summary.md.
EMPTY_KINDS = ("both_empty", "prediction_empty", "truth_empty")
#: the metric families of the policy.
OVERLAP, DISTANCE = "overlap", "distance"
#: the policy in words, written into every metrics.json.
EMPTY_POLICY = {
    "both_empty": "Dice, IoU, NSD, sensitivity 1; HD95 and ASD 0",
    "prediction_empty": "Dice, IoU, NSD, sensitivity 0; HD95 and ASD = the maximum distance",
    "truth_empty": "Dice, IoU, NSD, sensitivity 0; HD95 and ASD = the maximum distance",
    "maximum_distance": "the image (volume) diagonal in the report's unit: mm when the spacing is known, "
                        "else pixels of the original image, unless empty_distance gives a number",
    "specificity": "TN / (TN + FP); 1 when the ground truth covers the whole image",
}


def empty_masks(pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction_empty, truth_empty)``: boolean ``(B, C)`` arrays for one-hot ``(B, C, *spatial)`` masks."""
    pred, label = torch.as_tensor(pred), torch.as_tensor(label)
    if pred.shape != label.shape or pred.ndim < 3:
        raise ValueError(f"empty_masks needs one-hot (B, C, *spatial) pred and label of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(label.shape)}")
    dims = tuple(range(2, pred.ndim))
    return ((pred > 0.5).sum(dims) == 0).cpu().numpy(), ((label > 0.5).sum(dims) == 0).cpu().numpy()


def empty_kind(prediction_empty: bool, truth_empty: bool) -> str:
    """``"both_empty"``, ``"prediction_empty"``, ``"truth_empty"`` or ``""`` (neither is empty)."""
    if prediction_empty and truth_empty:
        return "both_empty"
    if prediction_empty:
        return "prediction_empty"
    return "truth_empty" if truth_empty else ""


def max_distance(spatial_shape: Sequence[int], spacing: Sequence[float] | float | None = None,
                 empty_distance: str | float = "diagonal") -> float:
    """The distance given to a case with one empty mask: the diagonal of a grid of ``spatial_shape``
    with ``spacing`` per axis (ones when None), or the number ``empty_distance``."""
    if empty_distance != "diagonal":
        value = float(empty_distance)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"empty_distance must be 'diagonal' or a finite number >= 0, got {empty_distance!r}")
        return value
    shape = np.asarray(spatial_shape, dtype=np.float64)
    steps = np.ones_like(shape) if spacing is None else np.broadcast_to(np.asarray(spacing, np.float64).ravel(), shape.shape)
    return float(np.linalg.norm(shape * steps))


def apply_empty_policy(values: torch.Tensor | np.ndarray, prediction_empty: np.ndarray, truth_empty: np.ndarray,
                       family: str, maximum: float | Sequence[float] = 0.0) -> Any:
    """``values`` ``(B, C)`` with the policy's numbers where a mask is empty (same type as ``values``).

    Args:
        values: the metric per case and class as MONAI computed it (NaN/inf where a mask is empty).
        prediction_empty, truth_empty: boolean ``(B, C)`` arrays from :func:`empty_masks`.
        family: :data:`OVERLAP` (Dice, IoU, NSD...: 1 when both empty, else 0) or :data:`DISTANCE`
            (0 when both empty, else ``maximum``).
        maximum: the maximum distance, one number or one per case (see :func:`max_distance`).
    """
    if family not in (OVERLAP, DISTANCE):
        raise ValueError(f"family must be {OVERLAP!r} or {DISTANCE!r}, got {family!r}")
    both = prediction_empty & truth_empty
    one = prediction_empty ^ truth_empty
    if family == OVERLAP:
        fill_both, fill_one = np.ones(both.shape), np.zeros(both.shape)
    else:
        fill_both = np.zeros(both.shape)
        fill_one = np.broadcast_to(np.asarray(maximum, np.float64).reshape(-1, 1), both.shape)
    filled = np.where(both, fill_both, np.where(one, fill_one, np.nan))
    if isinstance(values, torch.Tensor):
        mask = torch.as_tensor(both | one, device=values.device)
        return torch.where(mask, torch.as_tensor(filled, dtype=values.dtype, device=values.device), values)
    values = np.asarray(values, dtype=np.float64)
    return np.where(both | one, filled, values)
