"""The paper's Table 1 on PraNet's five polyp test sets, with the polyp toolbox metrics.

The command is ``transfuse-polyp-benchmark`` (:mod:`transfuse_bundle.tools.cli.polyp_benchmark`).
``test_dir`` is PraNet's ``TestDataset`` folder: ``{Kvasir,CVC-ClinicDB,CVC-ColonDB,CVC-300,
ETIS-LaribPolypDB}/{images,masks}``. Sets that are not there are reported as missing. The bundle's own
evaluation (the polyp task's evaluate config of the bundle root, see :func:`default_config_files`, with
the weights ``B/models/model.pt``) runs once over every image found, at the original resolution, with
each case tagged with its set; its report goes to ``OUT/eval`` (metrics.json, per_case.csv, summary.md,
overlays) and :func:`run_polyp_benchmark` writes from it:

* ``OUT/polyp_benchmark.md``: Table 1's layout (mDice and mIoU per test set, seen and unseen sets) and
  the toolbox metrics per set (mDice, mIoU, wFm, Sm, mean Em, max Em, MAE; Dice and IoU of the mask
  thresholded at 0.5 beside them);
* ``OUT/polyp_benchmark.json``: the same numbers, ``missing`` sets and the configs used.

mDice and mIoU are the PraNet toolbox's (mean over 256 thresholds of the probability map, see
:mod:`~transfuse_bundle.metrics.polyp`), the numbers TransFuse's Table 1 and its successors report.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from .prepare import PRANET_SEEN_SETS, PRANET_TEST_SETS, pranet_test_cases
from ..outputs import claim, record
from .tasks import config_files, is_repository
from ..metrics.polyp import TOOLBOX_METRICS

__all__ = ["benchmark_table", "benchmark_markdown", "default_config_files", "run_polyp_benchmark"]

#: the task whose evaluation the benchmark runs by default (352x352, as the paper).
POLYP_TASK = "polyp"

logger = logging.getLogger(__name__)

#: toolbox key -> column title, in Table 1's notation.
TITLES = {"mdice": "mDice", "miou": "mIoU", "wfm": "wFm", "sm": "Sm", "mean_em": "mean Em", "max_em": "max Em",
          "mae": "MAE"}


def benchmark_table(metrics: dict[str, Any], missing: Sequence[str]) -> dict[str, Any]:
    """Table 1's numbers from an evaluation ``metrics.json`` (as :class:`SegmentationReport` writes it, with
    ``per_dataset`` keyed by test set): ``{"test_sets": {set: {...}}, "missing": [...]}``.

    Each present set gets ``group`` (``"seen"`` / ``"unseen"``), ``num_images``, the toolbox metrics and
    ``dice_at_0.5`` / ``iou_at_0.5``; a missing set gets ``{"group": ..., "status": "missing"}``.
    """
    rows: dict[str, Any] = {}
    for name in PRANET_TEST_SETS:
        group = "seen" if name in PRANET_SEEN_SETS else "unseen"
        part = metrics.get("per_dataset", {}).get(name)
        if name in missing or part is None:
            rows[name] = {"group": group, "status": "missing"}
            continue
        toolbox = part.get("polyp_toolbox")
        if toolbox is None:
            raise ValueError(f"metrics.json has no polyp_toolbox for {name}: evaluate with polyp_metrics true")
        rows[name] = {"group": group, "status": "evaluated", "num_images": part["num_cases"],
                      **{key: toolbox[key] for key in TOOLBOX_METRICS},
                      "dice_at_0.5": part["mean_dice"], "iou_at_0.5": part["mean_iou"]}
    return {"test_sets": rows, "missing": [name for name in PRANET_TEST_SETS if rows[name]["status"] == "missing"]}


def _cell(row: dict[str, Any], key: str) -> str:
    return "missing" if row["status"] == "missing" else f"{row[key]:.3f}"


def benchmark_markdown(table: dict[str, Any], model: str = "TransFuse (this bundle)") -> str:
    """Markdown of :func:`benchmark_table`: Table 1's layout, then the toolbox metrics per set."""
    sets = table["test_sets"]
    names = list(sets)
    lines = [
        "# Polyp benchmark: PraNet test sets",
        "",
        "Table 1's layout: mDice and mIoU of the PraNet evaluation toolbox (mean over 256 thresholds of the "
        "probability map at the original resolution), per test set. Seen: from the collections of PraNet's "
        "training set; unseen: never trained on.",
        "",
        "| method | " + " | ".join(f"{n} ({sets[n]['group']}) mDice | {n} mIoU" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
        f"| {model} | " + " | ".join(f"{_cell(sets[n], 'mdice')} | {_cell(sets[n], 'miou')}" for n in names) + " |",
        "",
        "Toolbox metrics per test set (PySODMetrics); Dice and IoU at 0.5 are those of the thresholded mask "
        "(the evaluation report's mean_dice / mean_iou):",
        "",
        "| test set | group | images | " + " | ".join(TITLES.values()) + " | Dice at 0.5 | IoU at 0.5 |",
        "|---|---|---|" + "---|" * (len(TITLES) + 2),
    ]
    for name, row in sets.items():
        if row["status"] == "missing":
            lines.append(f"| {name} | {row['group']} | missing |" + " |" * (len(TITLES) + 2))
            continue
        values = " | ".join(_cell(row, key) for key in [*TOOLBOX_METRICS, "dice_at_0.5", "iou_at_0.5"])
        lines.append(f"| {name} | {row['group']} | {row['num_images']} | {values} |")
    if table["missing"]:
        lines += ["", f"Missing from the test folder: {', '.join(table['missing'])}."]
    return "\n".join(lines) + "\n"


def default_config_files(bundle_root: str | os.PathLike, task: str = POLYP_TASK) -> list[Path]:
    """The evaluation chain of ``task`` in ``bundle_root`` when it is a checkout, else that of the bundle folder
    (its ``configs/train.json`` + ``configs/evaluate.json``)."""
    return config_files("evaluate.json", task if is_repository(bundle_root) else None, bundle_root)


def run_polyp_benchmark(test_dir: str | os.PathLike, bundle_root: str | os.PathLike, output_dir: str | os.PathLike,
                  configs: Sequence[str | os.PathLike] | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluates the bundle's model on every PraNet test set found in ``test_dir`` and writes
    ``polyp_benchmark.{md,json}`` to ``output_dir`` (the evaluation report to ``output_dir/eval``).

    Args:
        test_dir: PraNet's ``TestDataset`` folder.
        bundle_root: the bundle folder (``configs/``, ``models/model.pt``).
        output_dir: where to write.
        configs: the evaluation chain's files; default :func:`default_config_files`.
        overrides: config overrides by id, e.g. ``image_size=[352, 352]``, ``ckpt_path=...``.
    Returns:
        the JSON written (see :func:`benchmark_table`).
    """
    from monai.bundle import run as bundle_run

    bundle_root, output_dir = Path(bundle_root), Path(output_dir)
    cases, missing = pranet_test_cases(test_dir)
    files = [str(f) for f in (configs or default_config_files(bundle_root))]
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"config file {file!r} does not exist (pass --config_file)")
    written = [output_dir / name for name in ("datalist.json", "polyp_benchmark.json", "polyp_benchmark.md")]
    claim(output_dir, written, overwrite=overrides.get("overwrite", False))  # the evaluation checks eval/ itself
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "datalist.json").write_text(json.dumps({"test": cases}, indent=2))
    record(output_dir, written[:1])
    logger.info("evaluating %d images of %s; missing: %s", len(cases), ", ".join(dict.fromkeys(c["dataset"] for c in cases)),
                ", ".join(missing) or "none")
    evaluation = output_dir / "eval"
    bundle_run("evaluating", config_file=files, bundle_root=str(bundle_root), output_dir=str(evaluation),
               polyp_metrics=True, **{"validate#dataset#data": cases}, **overrides)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    table = {**benchmark_table(metrics, missing), "test_dir": str(Path(test_dir).resolve()),
             "config_files": files, "overrides": {k: v for k, v in overrides.items()},
             "evaluation_report": str(evaluation)}
    (output_dir / "polyp_benchmark.json").write_text(json.dumps(table, indent=2))
    (output_dir / "polyp_benchmark.md").write_text(benchmark_markdown(table))
    record(output_dir, written[1:])
    return table

