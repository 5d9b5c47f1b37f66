"""Evaluation reports: metrics.json, per-case CSV, summary.md and overlay pictures; distances in mm."""

from .distances import HausdorffDistanceMM, SurfaceDistanceMM, case_spacing, engine_cases
from .report import DEFAULT_METRIC_NAMES, SegmentationReport, overlay_contours, volume_slices_to_show

__all__ = ["DEFAULT_METRIC_NAMES", "SegmentationReport", "overlay_contours", "volume_slices_to_show",
           "HausdorffDistanceMM", "SurfaceDistanceMM", "case_spacing", "engine_cases"]
