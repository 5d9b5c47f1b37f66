"""Evaluation reports: metrics.json, per-case CSV, summary.md and overlay pictures; distances and NSD in mm;
the empty-mask policy; the polyp toolbox metrics (PySODMetrics) and the PraNet test-set benchmark."""

from .distances import (DEFAULT_NSD_TOLERANCE, HausdorffDistanceMM, SurfaceDiceMM, SurfaceDistanceMM, case_spacing,
                        engine_cases)
from .empty import EMPTY_KINDS, EMPTY_POLICY, apply_empty_policy, empty_kind, empty_masks, max_distance
from .polyp import TOOLBOX_METRICS, toolbox_case, toolbox_summary
from .report import DEFAULT_METRIC_NAMES, REPORT_FILES, SegmentationReport, overlay_contours, report_files, volume_slices_to_show

__all__ = ["DEFAULT_METRIC_NAMES", "REPORT_FILES", "report_files", "SegmentationReport", "overlay_contours", "volume_slices_to_show",
           "HausdorffDistanceMM", "SurfaceDistanceMM", "SurfaceDiceMM", "DEFAULT_NSD_TOLERANCE", "case_spacing",
           "engine_cases", "EMPTY_KINDS", "EMPTY_POLICY", "apply_empty_policy", "empty_kind", "empty_masks",
           "max_distance", "TOOLBOX_METRICS", "toolbox_case", "toolbox_summary"]
