"""Evaluation reports: metrics.json, per-case CSV and overlay pictures."""

from .report import DEFAULT_METRIC_NAMES, SegmentationReport, overlay_contours

__all__ = ["DEFAULT_METRIC_NAMES", "SegmentationReport", "overlay_contours"]
