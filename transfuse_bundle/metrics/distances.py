"""Boundary distances (HD95, ASD) and normalised surface Dice (NSD) in millimetres when the spacing is known.

MONAI's ``HausdorffDistance`` and ``SurfaceDistance`` handlers call their metric without ``spacing``, so
their distances are in pixels of whatever grid the evaluator compares. The handlers here measure each case
with its own spacing (see :func:`case_spacing`), MONAI's edge distances reduced as MONAI's metrics reduce
them (computed once per case for HD95, ASD and NSD: :class:`_CaseDistances`):

* a ``"spacing"`` entry of the datalist (``[row, col]`` mm per pixel of the original 2D image, e.g.
  hip X-rays written by ``scripts/prepare_data.py --layout hip``) -> mm;
* an image read from a file format that stores its geometry (NIfTI, NRRD, MetaImage, DICOM) -> the
  voxel size of the label's affine, in mm;
* otherwise (PNG, JPEG...) -> pixels of the original image.

The label's affine also accounts for resizing: a label resized to the network size (validation during
training) gets its affine scaled by MONAI, so its distances are still in original pixels or in mm.

Empty masks follow :mod:`~transfuse_bundle.metrics.empty`: where MONAI gives NaN or inf (a class empty in
the prediction or in the ground truth), these handlers store the policy's value (0 / the image diagonal
for distances, 1 / 0 for NSD), so their means count every case.
"""

from __future__ import annotations

import collections
import threading
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.handlers import from_engine
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from monai.metrics.hausdorff_distance import _compute_percentile_hausdorff_distance
from monai.metrics.utils import get_edge_surface_distance, prepare_spacing
from monai.utils import MetricReduction

from .empty import DISTANCE, OVERLAP, apply_empty_policy, empty_masks, max_distance

__all__ = ["GEOMETRY_EXTENSIONS", "case_spacing", "engine_cases", "union_window", "HausdorffDistanceMM",
           "SurfaceDistanceMM", "SurfaceDiceMM", "DEFAULT_NSD_TOLERANCE"]

#: NSD tolerance in the report's unit (mm when the spacing is known, else pixels of the original image).
DEFAULT_NSD_TOLERANCE = 2.0

#: files whose header gives the voxel size in mm.
GEOMETRY_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _grid_scale(tensor: Any, spatial_dims: int) -> np.ndarray:
    """Length of each spatial axis' step in the affine of ``tensor`` (ones when it has no affine)."""
    if not isinstance(tensor, MetaTensor):
        return np.ones(spatial_dims)
    affine = np.asarray(torch.as_tensor(tensor.affine).detach().cpu(), dtype=np.float64)
    if affine.ndim == 3:  # a batched affine
        affine = affine[0]
    scale = np.linalg.norm(affine[:-1, :spatial_dims], axis=0)
    return np.where(scale > 0, scale, 1.0)


def _floats(raw: Any) -> list[float]:
    """A datalist ``spacing`` as floats, whether a number, a list, a tensor or a collated list of tensors."""
    if isinstance(raw, (torch.Tensor, np.ndarray)):
        return [float(v) for v in np.ravel(np.asarray(raw))]
    if isinstance(raw, (int, float)):
        return [float(raw)]
    return [float(v) for v in raw]


def case_spacing(case: Mapping[str, Any], key: str = "label") -> tuple[list[float], str]:
    """``(spacing per spatial axis, unit)`` of one case of :func:`engine_cases`; unit is ``"mm"`` or ``"px"``.

    ``case[key]`` is the ``(C, *spatial)`` label the distances are measured on. See the module
    docstring for where the spacing comes from.
    """
    label = case[key]
    spatial_dims = label.ndim - 1
    scale = _grid_scale(label, spatial_dims)
    if case.get("spacing") is not None:
        given = np.asarray(_floats(case["spacing"]), dtype=np.float64)
        if given.size == 1:
            given = np.repeat(given, spatial_dims)
        if given.size != spatial_dims or not (np.isfinite(given) & (given > 0)).all():
            raise ValueError(f"datalist 'spacing' {case['spacing']!r} must give {spatial_dims} positive numbers (mm per pixel)")
        return (given * scale).tolist(), "mm"
    source = ""
    for name in (key, "image"):
        meta = getattr(case.get(name), "meta", None) or {}
        source = str(meta.get("filename_or_obj", "")) or source
    if source.lower().endswith(GEOMETRY_EXTENSIONS):
        return scale.tolist(), "mm"
    return scale.tolist(), "px"


def engine_cases(engine: Any) -> list[dict[str, Any]]:
    """Each case of the engine's last iteration as one dict: its (decollated) batch entry with the
    output on top. Datalist keys such as ``"spacing"`` and ``"dataset"`` stay in ``engine.state.batch``
    (MONAI puts only image, label and pred into the output), so both are needed."""
    outputs, batch = engine.state.output, engine.state.batch
    outputs = outputs if isinstance(outputs, list) else [outputs]
    batch = batch if isinstance(batch, list) and len(batch) == len(outputs) else [{}] * len(outputs)
    return [{**(b if isinstance(b, Mapping) else {}), **o} for b, o in zip(batch, outputs)]


def union_window(y_pred: torch.Tensor, y: torch.Tensor, first: int = 0, margin: int = 1) -> tuple[slice, ...] | None:
    """Index of ``(B, C, *spatial)`` tensors that keeps every non-zero voxel of ``y_pred[:, first:]`` and
    ``y[:, first:]`` (all cases, all those classes) and ``margin`` voxels around them, clipped to the
    image; None when there are none.

    MONAI's surface metrics crop each class to the bounding box of ``pred | truth`` plus one voxel
    (``get_mask_edges(crop=True)``, zero-padded where the box leaves the image) before their erosions,
    convolutions and distances, so computing them on this window gives the very same numbers: the window
    holds that box with its margin, or reaches the image border exactly where the box does. What it
    saves is MONAI's work on the full image (type conversions, the foreground search, one copy per class
    and metric), which at 1920x1072 costs more than the distances themselves.
    """
    nonzero = (y_pred[:, first:] != 0) | (y[:, first:] != 0)
    spatial = nonzero.flatten(0, 1).any(0) if nonzero.shape[1] else nonzero.new_zeros(y.shape[2:])
    if not spatial.any():
        return None
    window = [slice(None), slice(None)]
    for axis, size in enumerate(spatial.shape):
        others = tuple(a for a in range(spatial.ndim) if a != axis)
        present = torch.nonzero(spatial.any(others) if others else spatial).flatten()
        window.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)))
    return tuple(window)


class _CaseDistances:
    """MONAI's edge-to-edge distances of the last few cases, computed once for HD95, ASD and NSD.

    The three metrics of one case reduce the very same edges and distances (MONAI's
    ``get_edge_surface_distance``, ~40 ms for a Kvasir mask, most of each metric's cost), and their handlers
    run one after the other on the same case: the second and the third take the first one's result. A
    result is reused only for tensors equal to those it was computed from, with the same spacing,
    distance metric and background handling.
    """

    def __init__(self, size: int = 4) -> None:
        self._entries: collections.deque[tuple] = collections.deque(maxlen=size)  # (key, y_pred, y, result)
        self._lock = threading.Lock()

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor, first: int, spacings: Sequence[Any],
                 distance_metric: str) -> tuple[list[list[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor, torch.Tensor]:
        """For one-hot float ``(B, C, *spatial)`` tensors: the ``(prediction -> truth, truth -> prediction)``
        distances of each case and class from ``first`` on (``[b][c - first]``), and :func:`~.empty.empty_masks`."""
        key = (tuple(y.shape), first, distance_metric,
               tuple(None if s is None else tuple(np.ravel(s).tolist()) for s in spacings))
        with self._lock:
            for old_key, old_pred, old_y, result in self._entries:
                if old_key == key and torch.equal(old_pred, y_pred) and torch.equal(old_y, y):
                    return result
        window = union_window(y_pred, y, first)  # MONAI's values, without its work on the full image
        pred, truth = (y_pred[window], y[window]) if window is not None else (y_pred, y)
        with warnings.catch_warnings():  # MONAI 1.6's get_mask_edges warns of its own deprecated argument
            warnings.filterwarnings("ignore", message=r".*always_return_as_numpy", category=FutureWarning)
            distances = [[get_edge_surface_distance(pred[b, c], truth[b, c], distance_metric=distance_metric,
                                                    spacing=spacings[b], symmetric=True, warn_empty=False)[1]
                          for c in range(first, y.shape[1])] for b in range(y.shape[0])]
        result = (distances, *empty_masks(pred[:, first:], truth[:, first:]))  # the window holds every voxel > 0.5
        with self._lock:
            self._entries.append((key, y_pred.clone(), y.clone(), result))
        return result


_CASE_DISTANCES = _CaseDistances()


class _EmptyPolicy:
    """Mixin for a MONAI surface metric: MONAI's values, then :func:`~.empty.apply_empty_policy`.

    ``_compute_tensor(y_pred, y, spacing=...)`` takes one-hot ``(B, C, *spatial)`` tensors and returns
    ``(B, C')`` values, ``C' = C - 1`` without the background. Each class of each case is reduced by the
    metric's :meth:`_reduce` as MONAI's ``compute_*`` function reduces them, from MONAI's edge distances
    (:class:`_CaseDistances`, shared by the three metrics, computed on :func:`union_window`: the same values);
    the policy's maximum distance is the full image's. ``spacing`` as MONAI takes it (None, a number, one value
    per axis, or one of those per case).
    """

    family = DISTANCE
    empty_distance: str | float = "diagonal"

    def _reduce(self, distances: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The metric of one class of one case from its ``(prediction -> truth, truth -> prediction)`` distances."""
        raise NotImplementedError

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if y_pred.ndim < 3 or y_pred.shape != y.shape:
            raise ValueError(f"y_pred and y must be one-hot (B, C, *spatial) of one shape, got {y_pred.shape} and {y.shape}")
        first = 0 if self.include_background else 1  # type: ignore[attr-defined]
        spatial = tuple(y.shape[2:])
        # plain float tensors, as MONAI's compute_* take them: slicing a MetaTensor would also rewrite its affine
        y_pred, y = ((t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)).float() for t in (y_pred, y))
        spacings = prepare_spacing(spacing=kwargs.get("spacing"), batch_size=y.shape[0], img_dim=len(spatial))
        distances, pred_empty, truth_empty = _CASE_DISTANCES(y_pred, y, first, spacings,
                                                             self.distance_metric)  # type: ignore[attr-defined]
        values = torch.tensor([[float(self._reduce(d)) for d in case] for case in distances],
                              dtype=torch.float).reshape(y.shape[0], y.shape[1] - first)
        maximum = [max_distance(spatial, s, self.empty_distance) for s in spacings]
        return apply_empty_policy(values, pred_empty, truth_empty, self.family, maximum)


class _HausdorffDistanceMetric(_EmptyPolicy, HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` with the empty-mask policy."""

    def _reduce(self, distances: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # compute_hausdorff_distance: the percentile of each direction (NaN when empty), the larger one
        directions = distances[:1] if self.directed else distances
        return torch.max(torch.stack([_compute_percentile_hausdorff_distance(d, self.percentile) for d in directions]))


class _SurfaceDistanceMetric(_EmptyPolicy, SurfaceDistanceMetric):
    """MONAI's ``SurfaceDistanceMetric`` with the empty-mask policy."""

    def _reduce(self, distances: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # compute_average_surface_distance: the mean over both directions' distances (one when not symmetric)
        surface = torch.cat(distances if self.symmetric else distances[:1])
        return surface.mean() if surface.numel() else torch.tensor(float("nan"))


class _SurfaceDiceMetric(_EmptyPolicy, SurfaceDiceMetric):
    """MONAI's ``SurfaceDiceMetric`` with one tolerance for every class and the empty-mask policy."""

    family = OVERLAP

    def __init__(self, tolerance: float, include_background: bool = False,
                 reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"NSD tolerance must be a finite number >= 0, got {tolerance!r}")
        super().__init__(class_thresholds=[], include_background=include_background, reduction=reduction)
        self.tolerance = float(tolerance)

    def _reduce(self, distances: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # compute_surface_dice without subvoxels: the share of both edges within the tolerance of the other
        complete = sum(len(d) for d in distances)
        if complete == 0:
            return torch.tensor(float("nan"))
        return sum(torch.sum(d <= self.tolerance) for d in distances) / complete


class _SpacedDistance(IgniteMetricHandler):
    """A MONAI distance metric handler that measures each case with its own spacing (:func:`case_spacing`).

    ``output_transform`` gives ``(preds, labels)`` as for MONAI's handlers: lists of one-hot
    ``(C, *spatial)`` tensors, one per case of the iteration. ``empty_distance`` (distance metrics only) is
    the empty-mask policy's maximum, checked here so that a bad value fails before the first case.
    """

    def __init__(self, metric_fn: Any, output_transform: Callable, save_details: bool,
                 empty_distance: str | float | None = None) -> None:
        if empty_distance is not None:
            max_distance((1,), None, empty_distance)
            metric_fn.empty_distance = empty_distance
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    def iteration_completed(self, engine: Any) -> None:
        self._spacings = [case_spacing(case)[0] for case in engine_cases(engine)]
        super().iteration_completed(engine)

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        spacings = getattr(self, "_spacings", None) or [None] * len(preds)
        if len(spacings) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(spacings)} cases in the engine's batch")
        # one call per case: MONAI applies one spacing argument to every case of a call
        for pred, label, spacing in zip(preds, labels, spacings):
            self.metric_fn([pred], [label], spacing=spacing)


class _BoundaryDistance(_SpacedDistance):
    """A boundary-distance handler of ``metric_class`` with each case's spacing and the empty-mask policy
    (``empty_distance``: ``"diagonal"`` or a number in the report's unit); ``metric_kwargs`` go to the metric."""

    metric_class: type

    def __init__(self, include_background: bool = False, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = from_engine(["pred", "label"]), save_details: bool = True,
                 empty_distance: str | float = "diagonal", **metric_kwargs: Any) -> None:
        metric_fn = self.metric_class(include_background=include_background, reduction=reduction, **metric_kwargs)
        super().__init__(metric_fn, output_transform, save_details, empty_distance)


class HausdorffDistanceMM(_BoundaryDistance):
    """MONAI's ``HausdorffDistance`` handler (95th percentile by default) with each case's spacing and the
    empty-mask policy; the other arguments as for :class:`_BoundaryDistance`."""

    metric_class = _HausdorffDistanceMetric

    def __init__(self, percentile: float | None = 95, **kwargs: Any) -> None:
        super().__init__(percentile=percentile, **kwargs)


class SurfaceDistanceMM(_BoundaryDistance):
    """MONAI's ``SurfaceDistance`` handler (symmetric by default: the ASD) with each case's spacing and the
    empty-mask policy; the other arguments as for :class:`_BoundaryDistance`."""

    metric_class = _SurfaceDistanceMetric

    def __init__(self, symmetric: bool = True, **kwargs: Any) -> None:
        super().__init__(symmetric=symmetric, **kwargs)


class SurfaceDiceMM(_SpacedDistance):
    """Normalised surface Dice (NSD) through MONAI's ``SurfaceDiceMetric`` (``compute_surface_dice``), with
    each case's spacing and the empty-mask policy (1 when both masks are empty, 0 when one is).

    NSD is the fraction of both boundaries that lies within ``tolerance`` of the other boundary, in the
    report's unit: mm when the spacing is known (see :func:`case_spacing`), else pixels of the original
    image. One tolerance applies to every class.
    """

    def __init__(self, tolerance: float = DEFAULT_NSD_TOLERANCE, include_background: bool = False,
                 reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = from_engine(["pred", "label"]), save_details: bool = True) -> None:
        metric_fn = _SurfaceDiceMetric(tolerance, include_background=include_background, reduction=reduction)
        super().__init__(metric_fn, output_transform, save_details)
