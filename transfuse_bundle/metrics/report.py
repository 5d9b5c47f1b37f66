"""Evaluation report: ``metrics.json``, ``per_case.csv`` and overlay pictures, from a MONAI evaluator.

The Dice, IoU, HD95 and ASD values are not recomputed here: the evaluator's MONAI metric handlers
(``MeanDice``, ``MeanIoUHandler``, ``HausdorffDistance(percentile=95)``,
``SurfaceDistance(symmetric=True)``) are created with ``save_details=True`` and leave a
``(num_cases, num_foreground_classes)`` table per metric in ``engine.state.metric_details``. This
handler adds pixel accuracy (MONAI has no pixel-accuracy metric), collects file names, and writes:

* ``metrics.json``: ``mean_dice, mean_iou, accuracy, hd95, asd`` overall, the same per class under
  ``per_class``, the number of cases, and for HD95/ASD how many cases had no value (empty
  prediction or ground truth give NaN in MONAI);
* ``per_case.csv``: one row per case with the file name and every metric (per class when > 1 class);
* ``overlays/<stem>.png`` for the first ``num_overlays`` cases: the original image with the ground
  truth contour in green and the prediction contour in red.

Expected engine output per case (after postprocessing): ``pred`` and ``label`` one-hot
``(num_classes, H, W)`` at the original image resolution and orientation (rows = image rows), and an
``image`` MetaTensor whose ``meta["filename_or_obj"]`` names the source file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

__all__ = ["SegmentationReport", "overlay_contours", "DEFAULT_METRIC_NAMES"]

logger = logging.getLogger(__name__)

#: report key -> the metric name the bundle configs give the MONAI handler.
DEFAULT_METRIC_NAMES = {"dice": "val_mean_dice", "iou": "val_mean_iou", "hd95": "val_hd95", "asd": "val_asd"}

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)


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


def _nan_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


class SegmentationReport:
    """Ignite handler writing ``metrics.json``, ``per_case.csv`` and overlays to ``output_dir`` at the end.

    Args:
        output_dir: where to write (created if needed).
        class_names: names of all classes including background, e.g. ``["background", "polyp"]``;
            the report uses the foreground ones.
        metric_names: report key -> name of the MONAI metric handler with ``save_details=True``.
        num_overlays: how many cases (the first ones) get an overlay picture.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] = ("background", "foreground"),
        metric_names: Mapping[str, str] | None = None,
        num_overlays: int = 8,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.metric_names = dict(metric_names or DEFAULT_METRIC_NAMES)
        self.num_overlays = int(num_overlays)
        self._files: list[str] = []
        self._accuracy: list[list[float]] = []  # per case: [overall, class 1, class 2, ...]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._files, self._accuracy = [], []

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for case in outputs:
            pred, label = torch.as_tensor(case["pred"]).detach().cpu(), torch.as_tensor(case["label"]).detach().cpu()
            if pred.shape != label.shape or pred.ndim != 3:
                raise ValueError(f"report needs one-hot (C, H, W) pred and label of one shape, got {pred.shape} and {label.shape}")
            pred_ids, label_ids = pred.argmax(0).numpy(), label.argmax(0).numpy()
            per_class = [float(((pred[c] > 0.5) == (label[c] > 0.5)).float().mean()) for c in range(1, pred.shape[0])]
            self._accuracy.append([float((pred_ids == label_ids).mean()), *per_class])
            source = str(case["image"].meta.get("filename_or_obj", f"case_{len(self._files)}"))
            self._files.append(source)
            if len(self._files) <= self.num_overlays:
                self._save_overlay(source, label_ids, pred_ids)

    def _save_overlay(self, source: str, gt: np.ndarray, pred: np.ndarray) -> None:
        folder = self.output_dir / "overlays"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            image = np.asarray(Image.open(source).convert("RGB"))
        except OSError as err:
            logger.warning("no overlay for %s: cannot read it as an image (%s)", source, err)
            return
        if image.shape[:2] != gt.shape:
            logger.warning("no overlay for %s: image %s and prediction %s differ in size", source, image.shape[:2], gt.shape)
            return
        Image.fromarray(overlay_contours(image, gt, pred)).save(folder / f"{Path(source).stem}.png")

    def _class_names(self, num_foreground: int) -> list[str]:
        names = self.class_names[1:]
        return names if len(names) == num_foreground else [f"class_{c}" for c in range(1, num_foreground + 1)]

    def _write(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", None) or {}
        tables: dict[str, np.ndarray] = {}
        for key, name in self.metric_names.items():
            if name not in details:
                raise KeyError(f"metric {name!r} has no per-case details; create its handler with save_details=True")
            table = torch.as_tensor(details[name]).float().cpu().numpy().reshape(len(details[name]), -1)
            if table.shape[0] != len(self._files):
                raise ValueError(f"metric {name!r} has {table.shape[0]} cases but {len(self._files)} were seen")
            tables[key] = table
        accuracy = np.asarray(self._accuracy, dtype=np.float64).reshape(len(self._files), -1)
        num_foreground = accuracy.shape[1] - 1
        names = self._class_names(num_foreground)

        summary: dict = {"num_cases": len(self._files)}
        for key, label in (("dice", "mean_dice"), ("iou", "mean_iou")):
            summary[label] = _nan_mean(tables[key])
        summary["accuracy"] = _nan_mean(accuracy[:, 0])
        for key in ("hd95", "asd"):
            summary[key] = _nan_mean(tables[key])
            summary[f"{key}_undefined_cases"] = int((~np.isfinite(tables[key])).any(axis=1).sum())
        summary["per_class"] = {
            name: {
                "mean_dice": _nan_mean(tables["dice"][:, c]),
                "mean_iou": _nan_mean(tables["iou"][:, c]),
                "accuracy": _nan_mean(accuracy[:, c + 1]),
                "hd95": _nan_mean(tables["hd95"][:, c]),
                "asd": _nan_mean(tables["asd"][:, c]),
            }
            for c, name in enumerate(names)
        }
        summary["units"] = {"hd95": "pixels", "asd": "pixels"}

        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(summary, indent=4))
        self._write_csv(tables, accuracy, names)
        logger.info("evaluation report for %d cases written to %s: mean_dice %s", len(self._files), self.output_dir, summary["mean_dice"])

    def _write_csv(self, tables: dict[str, np.ndarray], accuracy: np.ndarray, names: list[str]) -> None:
        metrics = ["dice", "iou", "accuracy", "hd95", "asd"]
        columns = metrics if len(names) == 1 else [f"{m}_{n}" for n in names for m in metrics]
        with open(self.output_dir / "per_case.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "pixel_accuracy", *columns])
            for row in range(len(self._files)):
                values = []
                for c in range(len(names)):
                    per_metric = {key: tables[key][row, c] for key in ("dice", "iou", "hd95", "asd")}
                    per_metric["accuracy"] = accuracy[row, c + 1]
                    values += [per_metric[m] for m in metrics]
                cells = ["" if not math.isfinite(v) else f"{v:.6g}" for v in [accuracy[row, 0], *values]]
                writer.writerow([self._files[row], *cells])
