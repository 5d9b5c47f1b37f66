"""Evaluation report: ``metrics.json``, ``per_case.csv``, ``summary.md`` and overlay pictures.

The Dice, IoU, HD95, ASD and NSD values are not recomputed here: the evaluator's MONAI metric handlers
(``MeanDice``, ``MeanIoUHandler``, and for distances :class:`~transfuse_bundle.metrics.HausdorffDistanceMM`
/ :class:`~transfuse_bundle.metrics.SurfaceDistanceMM` / :class:`~transfuse_bundle.metrics.SurfaceDiceMM`,
or MONAI's own ``HausdorffDistance`` / ``SurfaceDistance``) are created with ``save_details=True`` and
leave a ``(num_cases, num_foreground_classes)`` table per metric in ``engine.state.metric_details``. This
handler adds what MONAI's handlers do not give per case: pixel accuracy, sensitivity and specificity
(MONAI's ``get_confusion_matrix`` / ``compute_confusion_matrix_metric``), the ISIC 2017 thresholded
Jaccard (an image's IoU, or 0 when it is below 0.65), and for binary 2D tasks the polyp toolbox metrics
of :mod:`~transfuse_bundle.metrics.polyp` (PySODMetrics) from the probability map ``prob``. It applies
the empty-mask policy of :mod:`~transfuse_bundle.metrics.empty` to every table (so MONAI's NaN for an
empty mask never reaches a mean, whatever handlers the config uses), collects file names, datasets
and distance units, and writes:

* ``metrics.json``: ``mean_dice, mean_iou, accuracy, sensitivity, specificity, thresholded_jaccard,
  hd95, asd, nsd`` overall, the same per class under ``per_class``, per dataset under ``per_dataset``
  (datalist entries' ``"dataset"`` key), the number of cases, ``empty_cases`` (how many case-class pairs
  had both masks empty, only the prediction, only the ground truth; per class too), the policy
  (``empty_policy``), the NSD tolerance, the distance unit (``hd95_unit``, ``asd_unit``, ``units``:
  ``"mm"`` when every case's spacing is known, ``"px"`` of the original image otherwise, ``"mixed"``
  when cases differ; see :func:`~transfuse_bundle.metrics.distances.case_spacing`), and
  ``polyp_toolbox`` (mDice, mIoU, wFm, Sm, mean/max Em, MAE) for binary 2D tasks;
* ``per_case.csv``: one row per case with the file name, every metric (per class when > 1 class),
  the kind of empty mask (``empty``: ``none``, ``both_empty``, ``prediction_empty``, ``truth_empty``),
  the toolbox metrics, the dataset and the distance unit; no cell is NaN or inf;
* ``summary.md``: a short table per dataset and class (median and mean Dice, IoU, sensitivity,
  specificity, thresholded Jaccard, HD95, ASD with units, NSD, empty cases, number of cases), the
  toolbox table, the empty-mask policy and one plain sentence per class;
* ``overlays/``: for the first ``num_overlays`` cases, the original image with the ground truth
  contour in green and the prediction contour in red: ``<stem>.png`` for a 2D image, and for a
  volume ``<stem>_slice<k>.png`` for up to three axial slices (the one with the largest ground-truth
  area and the two at a quarter and three quarters of the ground truth's extent).

Expected engine output per case (after postprocessing): ``pred`` and ``label`` one-hot
``(num_classes, H, W)`` or ``(num_classes, H, W, D)`` at the original image resolution and orientation
(rows = image rows, or the volume's voxel grid), and an ``image`` MetaTensor whose
``meta["filename_or_obj"]`` names the source file; for the toolbox metrics also ``prob``, the
``(1, H, W)`` sigmoid or ``(2, H, W)`` softmax probabilities on the same grid (``keep_probability`` in
``configs/evaluate.json``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix
from monai.transforms import LoadImage
from PIL import Image
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from ..data.datalist import file_stem
from ..outputs import record
from ..checks import flag
from .distances import DEFAULT_NSD_TOLERANCE, GEOMETRY_EXTENSIONS, case_spacing, engine_cases
from .empty import DISTANCE, EMPTY_KINDS, EMPTY_POLICY, OVERLAP, apply_empty_policy, empty_kind, empty_masks, max_distance
from .polyp import TOOLBOX_METRICS, require_pysodmetrics, toolbox_case, toolbox_summary

__all__ = ["SegmentationReport", "overlay_contours", "DEFAULT_METRIC_NAMES", "volume_slices_to_show", "REPORT_FILES",
           "report_files", "format_number"]

logger = logging.getLogger(__name__)

#: report key -> the metric name the bundle configs give the MONAI handler.
DEFAULT_METRIC_NAMES = {"dice": "val_mean_dice", "iou": "val_mean_iou", "hd95": "val_hd95", "asd": "val_asd",
                        "nsd": "val_nsd"}
#: the policy's family of each metric table (see :mod:`.empty`).
METRIC_FAMILIES = {"dice": OVERLAP, "iou": OVERLAP, "nsd": OVERLAP, "sensitivity": OVERLAP,
                   "hd95": DISTANCE, "asd": DISTANCE}
#: ISIC 2017 challenge: an image's Jaccard below this counts as 0 in the thresholded Jaccard.
ISIC_JACCARD_THRESHOLD = 0.65
#: per-class metrics of metrics.json / per_case.csv, in order (the summary key is ``mean_<k>`` for dice, iou).
CLASS_METRICS = ("dice", "iou", "accuracy", "sensitivity", "specificity", "thresholded_jaccard", "hd95", "asd", "nsd")

#: what :class:`SegmentationReport` writes into its ``output_dir`` (paths and glob patterns).
REPORT_FILES = ("metrics.json", "per_case.csv", "summary.md", "overlays/*.png")

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)


def report_files(*metric_groups: Mapping[str, object]) -> list[str]:
    """Every file an evaluation writes into its ``output_dir``: :data:`REPORT_FILES`, and MONAI
    ``MetricsSaver``'s ``metrics.csv``, ``<metric>_raw.csv`` and ``<metric>_summary.csv`` for each metric
    named in ``metric_groups`` (the evaluator's ``key_val_metric`` and ``additional_metrics`` dicts)."""
    names = [name for group in metric_groups for name in group]
    return [*REPORT_FILES, "metrics.csv", *(f"{name}_{kind}.csv" for name in names for kind in ("raw", "summary"))]


def overlay_contours(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 image with the contours of ``gt`` (green) and ``pred`` (red) drawn on it.

    ``gt`` and ``pred`` are ``(H, W)`` class-id maps; every class boundary is drawn, about 1/300 of the
    image side thick so that contours stay visible on large images.
    """
    if image.shape[:2] != gt.shape or gt.shape != pred.shape:
        raise ValueError(f"overlay needs matching sizes, got image {image.shape}, gt {gt.shape}, pred {pred.shape}")
    out = image.copy()
    footprint = disk(max(1, round(min(gt.shape) / 300)))
    for labels, colour in ((gt, GT_COLOUR), (pred, PRED_COLOUR)):
        edges = dilation(find_boundaries(labels, mode="inner") & (labels > 0), footprint)
        out[edges] = colour
    return out


def volume_slices_to_show(gt: np.ndarray, pred: np.ndarray, max_slices: int = 3) -> list[int]:
    """Indices along the last axis of an ``(H, W, D)`` class-id volume worth looking at.

    The slice with the largest ground-truth area, then those at a quarter and three quarters of the
    ground truth's extent; the prediction's when the ground truth is empty; the middle slice when both are.
    """
    areas = (gt > 0).reshape(-1, gt.shape[-1]).sum(0)
    if not areas.any():
        areas = (pred > 0).reshape(-1, pred.shape[-1]).sum(0)
    if not areas.any():
        return [gt.shape[-1] // 2]
    present = np.flatnonzero(areas)
    chosen = [int(areas.argmax())]
    for fraction in (0.25, 0.75):
        index = int(present[round(fraction * (len(present) - 1))])
        if index not in chosen:
            chosen.append(index)
    return sorted(chosen[:max_slices])


def _to_uint8_rgb(slice_2d: np.ndarray) -> np.ndarray:
    """A grey-level slice windowed to its 1st-99th percentile, as ``(H, W, 3)`` uint8."""
    low, high = np.percentile(slice_2d, [1, 99])
    scaled = np.clip((slice_2d - low) / max(high - low, 1e-6), 0, 1) * 255
    return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)


def _plain(tensor) -> torch.Tensor:
    """A contiguous CPU ``torch.Tensor`` of an engine output (MetaTensor or not; the evaluation's are
    transposed views): full-image reductions over it are several times faster, and as they count 0 / 1
    values, exactly the same."""
    tensor = torch.as_tensor(tensor).detach().cpu()
    return (tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor).contiguous()


def _nan_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _nan_median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _common_unit(units: Sequence[str]) -> str:
    kinds = set(units)
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "px")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_number(value: Any, missing: str = "n/a") -> str:
    """A number as the reports' tables show it: three decimals below 10 (scores), one from 10 up (distances,
    seconds), integers with thousands separators, ``missing`` for None."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _class_sentence(name: str, dice: np.ndarray, asd: float | None, hd95: float | None, missed: int, noun: str,
                    unit: str) -> str:
    """One class in words: its median Dice (and range), its median distances, the cases it was missed on."""
    finite = dice[np.isfinite(dice)]
    if finite.size == 0:
        return f"- **{name}**: no {noun} to measure."
    sentence = f"- **{name}**: median Dice {np.median(finite):.2f} over {_count(finite.size, noun)}"
    if finite.size > 1:
        sentence += f" (from {finite.min():.2f} to {finite.max():.2f})"
    if asd is not None and hd95 is not None:
        sentence += (f"; the predicted outline is on average {asd:.1f} {unit} from the expert's, "
                     f"and 95% of it within {hd95:.1f} {unit} (medians)")
    if missed:
        sentence += f"; nothing predicted on {_count(missed, noun)} that hold this class"
    return sentence + "."


class SegmentationReport:
    """Ignite handler writing ``metrics.json``, ``per_case.csv``, ``summary.md`` and overlays to ``output_dir``.

    Args:
        output_dir: where to write (created if needed).
        class_names: names of all classes including background, e.g. ``["background", "polyp"]``;
            the report uses the foreground ones.
        metric_names: report key -> name of the MONAI metric handler with ``save_details=True``
            (keys ``dice, iou, hd95, asd, nsd``).
        num_overlays: how many cases (the first ones) get overlay pictures.
        polyp_metrics: compute the polyp toolbox metrics (PySODMetrics) for binary 2D tasks whose engine
            output has a ``prob`` map; ``False`` turns them off.
        empty_distance: the distance given when only one mask is empty: ``"diagonal"`` (the image's, in the
            report's unit) or a number in the report's unit (:mod:`.empty`).
        nsd_tolerance: the tolerance of the NSD handler, written into the report (mm or pixels, as distances).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] = ("background", "foreground"),
        metric_names: Mapping[str, str] | None = None,
        num_overlays: int = 8,
        polyp_metrics: bool = True,
        empty_distance: str | float = "diagonal",
        nsd_tolerance: float = DEFAULT_NSD_TOLERANCE,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.metric_names = dict(metric_names or DEFAULT_METRIC_NAMES)
        self.num_overlays = int(num_overlays)
        self.polyp_metrics = flag(polyp_metrics, "polyp_metrics")  # "--polyp_metrics false" is a string
        max_distance((1,), None, empty_distance)  # a bad value fails when the config is parsed
        self.empty_distance = empty_distance
        self.nsd_tolerance = float(nsd_tolerance)
        if self.polyp_metrics and len(self.class_names) == 2:
            require_pysodmetrics()  # fails before the evaluation runs, not after it
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._overlays)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine | None) -> None:
        self._files: list[str] = []
        self._datasets: list[str] = []
        self._units: list[str] = []
        self._accuracy: list[list[float]] = []  # per case: [overall, class 1, class 2, ...]
        self._sensitivity: list[np.ndarray] = []  # per case: (num_foreground,)
        self._specificity: list[np.ndarray] = []
        self._prediction_empty: list[np.ndarray] = []  # per case: (num_foreground,) bool
        self._truth_empty: list[np.ndarray] = []
        self._max_distance: list[float] = []
        self._toolbox: list[dict | None] = []
        self._warned_no_prob = False
        self._volumes = False
        self._overlay_names: set[str] = set()
        self._pending_overlays: list[tuple[str, np.ndarray, np.ndarray]] = []  # (source, gt ids, pred ids)

    def _collect(self, engine: Engine) -> None:
        for case in engine_cases(engine):
            pred, label = (_plain(case[key]) for key in ("pred", "label"))
            if pred.shape != label.shape or pred.ndim not in (3, 4):
                raise ValueError(
                    "report needs one-hot (C, H, W) or (C, H, W, D) pred and label of one shape, "
                    f"got {tuple(pred.shape)} and {tuple(label.shape)}"
                )
            self._volumes = pred.ndim == 4
            # numpy's argmax over the class axis (the same ids, first maximum) is ~10x faster than torch's
            pred_ids, label_ids = np.argmax(pred.numpy(), 0), np.argmax(label.numpy(), 0)
            per_class = [float(((pred[c] > 0.5) == (label[c] > 0.5)).float().mean()) for c in range(1, pred.shape[0])]
            self._accuracy.append([float((pred_ids == label_ids).mean()), *per_class])
            pred_empty, truth_empty = empty_masks(pred[None, 1:], label[None, 1:])
            self._prediction_empty.append(pred_empty[0])
            self._truth_empty.append(truth_empty[0])
            confusion = get_confusion_matrix(pred[None], label[None], include_background=False)  # (1, C-1, 4)
            sensitivity = compute_confusion_matrix_metric("sensitivity", confusion).numpy()  # NaN when truth empty
            specificity = compute_confusion_matrix_metric("specificity", confusion).numpy()  # NaN without background
            self._sensitivity.append(apply_empty_policy(sensitivity, pred_empty, truth_empty, OVERLAP)[0])
            self._specificity.append(np.nan_to_num(specificity, nan=1.0)[0])
            source = str(case["image"].meta.get("filename_or_obj", f"case_{len(self._files)}"))
            self._files.append(source)
            self._datasets.append(str(case.get("dataset") or "all"))
            spacing, unit = case_spacing(case)
            self._units.append(unit)
            self._max_distance.append(max_distance(label.shape[1:], spacing, self.empty_distance))
            self._toolbox.append(self._toolbox_case(case, label))
            if len(self._files) <= self.num_overlays:
                self._pending_overlays.append((source, label_ids, pred_ids))

    def _overlays(self, engine: Engine) -> None:
        """The overlay pictures of the cases :meth:`_collect` just kept for them (a handler of its own, so
        that a profiler tells the pictures' time from the metrics')."""
        for source, gt, pred in self._pending_overlays:
            self._save_overlays(source, gt, pred)
        self._pending_overlays = []

    def _toolbox_case(self, case: Mapping, label: torch.Tensor) -> dict | None:
        """The polyp toolbox metrics of one case (None when off, not binary 2D, or without ``prob``)."""
        if not self.polyp_metrics or label.shape[0] != 2 or label.ndim != 3:
            return None
        if case.get("prob") is None:
            if not self._warned_no_prob:
                logger.warning("no polyp toolbox metrics: the engine output has no 'prob' map (see keep_probability "
                               "in configs/evaluate.json)")
                self._warned_no_prob = True
            return None
        prob = torch.as_tensor(case["prob"]).detach().float().cpu()
        if prob.ndim != 3 or prob.shape[0] not in (1, 2) or prob.shape[1:] != label.shape[1:]:
            raise ValueError(f"'prob' must be (1 or 2, H, W) like the label {tuple(label.shape)}, got {tuple(prob.shape)}")
        return toolbox_case(prob[-1].numpy(), label[1].numpy())

    def _overlay_stem(self, source: str) -> str:
        """The file stem, prefixed with its folder when another case already used it (``020/t2.nii.gz``)."""
        stem = file_stem(Path(source).name, GEOMETRY_EXTENSIONS) or Path(source).stem
        if stem in self._overlay_names:
            stem = f"{Path(source).parent.name}_{stem}"
        self._overlay_names.add(stem)
        return stem

    def _save_overlays(self, source: str, gt: np.ndarray, pred: np.ndarray) -> None:
        folder = self.output_dir / "overlays"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if gt.ndim == 2:
                image = np.asarray(Image.open(source).convert("RGB"))
            else:
                image = np.asarray(LoadImage(image_only=True)(source))
                image = image[..., 0] if image.ndim == 4 else image  # first channel of a multi-channel volume
        except Exception as err:  # any unreadable file: the report goes on without this picture
            logger.warning("no overlay for %s: cannot read it as an image (%s)", source, err)
            return
        if image.shape[: gt.ndim] != gt.shape:
            logger.warning("no overlay for %s: image %s and prediction %s differ in size", source, image.shape, gt.shape)
            return
        stem = self._overlay_stem(source)
        if gt.ndim == 2:
            self._save_picture(overlay_contours(image, gt, pred), folder / f"{stem}.png")
            return
        for k in volume_slices_to_show(gt, pred):
            # shown with the second voxel axis as rows, as nibabel / ITK-SNAP show an axial slice
            picture = overlay_contours(_to_uint8_rgb(image[..., k].T), gt[..., k].T, pred[..., k].T)
            self._save_picture(picture, folder / f"{stem}_slice{k:03d}.png")

    def _save_picture(self, picture: np.ndarray, path: Path) -> None:
        """Writes an ``(H, W, 3)`` uint8 picture and records it as this package's (see :mod:`transfuse_bundle.outputs`)."""
        Image.fromarray(picture).save(path)
        record(self.output_dir, [path])

    def _class_names(self, num_foreground: int) -> list[str]:
        names = self.class_names[1:]
        return names if len(names) == num_foreground else [f"class_{c}" for c in range(1, num_foreground + 1)]

    def _tables(self, engine: Engine) -> dict[str, np.ndarray]:
        details = getattr(engine.state, "metric_details", None) or {}
        tables: dict[str, np.ndarray] = {}
        for key, name in self.metric_names.items():
            if name not in details:
                raise KeyError(f"metric {name!r} has no per-case details; create its handler with save_details=True")
            table = torch.as_tensor(details[name]).float().cpu().numpy().reshape(len(details[name]), -1)
            if table.shape[0] != len(self._files):
                raise ValueError(f"metric {name!r} has {table.shape[0]} cases but {len(self._files)} were seen")
            tables[key] = table
        n = len(self._files)
        pred_empty = np.asarray(self._prediction_empty, dtype=bool).reshape(n, -1)
        truth_empty = np.asarray(self._truth_empty, dtype=bool).reshape(n, -1)
        tables["sensitivity"] = np.asarray(self._sensitivity, dtype=np.float64).reshape(n, -1)
        tables["specificity"] = np.asarray(self._specificity, dtype=np.float64).reshape(n, -1)
        for key, family in METRIC_FAMILIES.items():
            if tables[key].shape != pred_empty.shape:
                raise ValueError(f"metric {key!r} has {tables[key].shape[1]} classes per case, expected "
                                 f"{pred_empty.shape[1]} (create its handler with include_background=False)")
            tables[key] = apply_empty_policy(tables[key], pred_empty, truth_empty, family, self._max_distance)
        tables["thresholded_jaccard"] = np.where(tables["iou"] >= ISIC_JACCARD_THRESHOLD, tables["iou"], 0.0)
        tables["accuracy"] = np.asarray(self._accuracy, dtype=np.float64).reshape(n, -1)
        tables["empty"] = np.vectorize(empty_kind, otypes=[object])(pred_empty, truth_empty)
        return tables

    @staticmethod
    def _class_means(part: dict[str, np.ndarray], c: int | None) -> dict:
        """Means of every :data:`CLASS_METRICS` over the rows of ``part``: of class column ``c``, or of
        all classes when ``c`` is None (pixel accuracy is then the overall one)."""
        columns = slice(None) if c is None else c
        means = {}
        for key in CLASS_METRICS:
            name = f"mean_{key}" if key in ("dice", "iou") else key
            if key == "accuracy":
                means[name] = _nan_mean(part["accuracy"][:, 0 if c is None else c + 1])
            else:
                means[name] = _nan_mean(part[key][:, columns])
        return means

    @staticmethod
    def _empty_counts(kinds: np.ndarray) -> dict[str, int]:
        return {kind: int((kinds == kind).sum()) for kind in EMPTY_KINDS}

    def _summarise(self, tables: dict[str, np.ndarray], rows: np.ndarray, names: list[str], units: list[str]) -> dict:
        """Means over the cases ``rows`` (a boolean mask), overall and per class, and the empty-mask counts."""
        unit = _common_unit(units)
        part = {key: table[rows] for key, table in tables.items()}
        summary: dict = {"num_cases": int(rows.sum()), **self._class_means(part, None)}
        summary["empty_cases"] = self._empty_counts(part["empty"])
        summary["per_class"] = {
            name: {**self._class_means(part, c), "empty_cases": self._empty_counts(part["empty"][:, c])}
            for c, name in enumerate(names)
        }
        summary["hd95_unit"] = summary["asd_unit"] = unit
        summary["nsd_tolerance"] = self.nsd_tolerance
        summary["units"] = {"hd95": unit, "asd": unit, "nsd_tolerance": unit}
        toolbox = [t for t, keep in zip(self._toolbox, rows) if keep and t is not None]
        if toolbox:
            summary["polyp_toolbox"] = toolbox_summary(toolbox)
        return summary

    def _write(self, engine: Engine) -> None:
        tables = self._tables(engine)
        names = self._class_names(tables["accuracy"].shape[1] - 1)
        everything = np.ones(len(self._files), dtype=bool)
        summary = self._summarise(tables, everything, names, self._units)
        summary["empty_policy"] = {**EMPTY_POLICY, "empty_distance": self.empty_distance}
        datasets = np.asarray(self._datasets)
        summary["per_dataset"] = {
            name: self._summarise(tables, datasets == name, names, [u for u, d in zip(self._units, self._datasets) if d == name])
            for name in dict.fromkeys(self._datasets)
        }

        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(summary, indent=4))
        self._write_csv(tables, names)
        (self.output_dir / "summary.md").write_text(self._summary_markdown(tables, names, summary))
        record(self.output_dir, [self.output_dir / name for name in ("metrics.json", "per_case.csv", "summary.md")])
        logger.info("evaluation report for %d cases written to %s: mean_dice %s", len(self._files), self.output_dir, summary["mean_dice"])

    def _write_csv(self, tables: dict[str, np.ndarray], names: list[str]) -> None:
        metrics = [*CLASS_METRICS, "empty"]
        columns = metrics if len(names) == 1 else [f"{m}_{n}" for n in names for m in metrics]
        toolbox = list(TOOLBOX_METRICS) if any(t is not None for t in self._toolbox) else []
        accuracy = tables["accuracy"]

        def cell(value) -> str:
            if isinstance(value, str):
                return value or "none"
            return "" if value is None or not math.isfinite(value) else f"{value:.6g}"

        with open(self.output_dir / "per_case.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "pixel_accuracy", *columns, *toolbox, "dataset", "distance_unit"])
            for row in range(len(self._files)):
                values = []
                for c in range(len(names)):
                    per_metric = {key: tables[key][row, c] for key in CLASS_METRICS if key != "accuracy"}
                    per_metric["accuracy"] = accuracy[row, c + 1]
                    per_metric["empty"] = tables["empty"][row, c]
                    values += [per_metric[m] for m in metrics]
                case_toolbox = self._toolbox[row] or {}
                values += [case_toolbox.get(key) for key in toolbox]
                writer.writerow([self._files[row], *[cell(v) for v in [accuracy[row, 0], *values]],
                                 self._datasets[row], self._units[row]])

    def _summary_markdown(self, tables: dict[str, np.ndarray], names: list[str], summary: dict) -> str:
        """A table per dataset and class, the toolbox table, and one sentence per class, for readers who
        skip the numbers."""
        noun = "volume" if self._volumes else "image"
        lines = self._summary_intro(noun)
        datasets = np.asarray(self._datasets)
        for dataset, part in summary["per_dataset"].items():
            lines += self._dataset_section(dataset, part, datasets == dataset, tables, names, noun)
        return "\n".join(lines) + "\n"

    def _summary_intro(self, noun: str) -> list[str]:
        """What the metrics mean and how empty masks count, in words."""
        maximum = ("the image diagonal" if self.empty_distance == "diagonal"
                   else f"{float(self.empty_distance):g} (empty_distance)")
        return [
            "# Evaluation summary",
            "",
            f"{_count(len(self._files), noun)}, measured at each case's original resolution. Dice and IoU: 1 = the "
            "prediction covers exactly the expert's outline, 0 = no overlap. HD95: 95% of the boundary points of "
            "one outline lie within this distance of the other's; ASD: the average distance between the two "
            "outlines. Lower distances are better. NSD (normalised surface Dice): the share of both outlines "
            f"within {self.nsd_tolerance:g} (mm or pixels, as the distances) of the other. Sensitivity and "
            f"specificity: shares of foreground and background pixels found; thresholded Jaccard (ISIC 2017): "
            f"an {noun}'s IoU, counted as 0 below {ISIC_JACCARD_THRESHOLD}.",
            "",
            f"Empty masks are counted, never skipped: when both the prediction and the ground truth of a class are "
            f"empty (\"both empty\") Dice, IoU, NSD and sensitivity are 1 and distances 0; when only one is "
            f"(\"prediction empty\", \"truth empty\") they are 0 and distances are {maximum}, in the "
            "distances' unit. The empty columns count such cases (both / prediction / truth).",
        ]

    def _dataset_section(self, dataset: str, part: dict, rows: np.ndarray, tables: dict[str, np.ndarray],
                         names: list[str], noun: str) -> list[str]:
        """One dataset's table (a row per class), its toolbox table and a sentence per class; ``rows`` selects its
        cases in ``tables``."""
        unit_words = {"mm": "millimetres", "px": "pixels of the original image", "mixed": "mm or pixels (see per_case.csv)"}
        unit = part["hd95_unit"]
        lines = [
            "",
            f"## {dataset} ({_count(part['num_cases'], noun)}, distances in {unit_words.get(unit, unit)})",
            "",
            f"| class | median Dice | mean Dice | mean IoU | sensitivity | specificity | thresholded Jaccard "
            f"| mean HD95 ({unit}) | mean ASD ({unit}) | NSD ({self.nsd_tolerance:g} {unit}) "
            f"| empty: both / prediction / truth | {noun}s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        sentences = []
        for c, name in enumerate(names):
            values = part["per_class"][name]
            empty = values["empty_cases"]
            lines.append(f"| {name} | " + " | ".join(format_number(v) for v in (
                _nan_median(tables["dice"][rows, c]), values["mean_dice"], values["mean_iou"], values["sensitivity"],
                values["specificity"], values["thresholded_jaccard"], values["hd95"], values["asd"], values["nsd"]))
                + f" | {' / '.join(str(empty[k]) for k in EMPTY_KINDS)} | {part['num_cases']} |")
            sentences.append(_class_sentence(name, tables["dice"][rows, c], _nan_median(tables["asd"][rows, c]),
                                             _nan_median(tables["hd95"][rows, c]), empty["prediction_empty"], noun, unit))
        if "polyp_toolbox" in part:
            toolbox = part["polyp_toolbox"]
            lines += [
                "",
                f"Polyp toolbox metrics (PraNet evaluation toolbox, via PySODMetrics, from the probability maps; "
                f"{_count(toolbox['num_cases'], noun)}):",
                "",
                "| mDice | mIoU | wFm | Sm | mean Em | max Em | MAE |",
                "|---|---|---|---|---|---|---|",
                "| " + " | ".join(format_number(toolbox[key]) for key in TOOLBOX_METRICS) + " |",
            ]
        return lines + ["", *sentences]
