"""The paper's Table 1 on PraNet's five polyp test sets, with the polyp toolbox metrics.

    transfuse-polyp-benchmark TESTDATASET_DIR --bundle_root B --output_dir OUT [--image_size H W]
    python scripts/polyp_benchmark.py TESTDATASET_DIR --bundle_root B --output_dir OUT

``TESTDATASET_DIR`` is PraNet's ``TestDataset`` folder: ``{Kvasir,CVC-ClinicDB,CVC-ColonDB,CVC-300,
ETIS-LaribPolypDB}/{images,masks}``. Sets that are not there are reported as missing. The bundle's own
evaluation (``configs/train.json`` + ``configs/evaluate.json`` of the bundle root, the weights
``B/models/model.pt``) runs once over every image found, at the original resolution, with each case
tagged with its set; its report goes to ``OUT/eval`` (metrics.json, per_case.csv, summary.md, overlays)
and this command writes from it:

* ``OUT/polyp_benchmark.md``: Table 1's layout (mDice and mIoU per test set, seen and unseen sets) and
  the toolbox metrics per set (mDice, mIoU, wFm, Sm, mean Em, max Em, MAE; Dice and IoU of the mask
  thresholded at 0.5 beside them);
* ``OUT/polyp_benchmark.json``: the same numbers, ``missing`` sets and the configs used.

mDice and mIoU are the PraNet toolbox's (mean over 256 thresholds of the probability map, see
:mod:`~transfuse_bundle.metrics.polyp`), the numbers TransFuse's Table 1 and its successors report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..data.datalist import DatasetError
from ..data.prepare import PRANET_SEEN_SETS, PRANET_TEST_SETS, pranet_test_cases
from .polyp import TOOLBOX_METRICS

__all__ = ["benchmark_table", "benchmark_markdown", "run_benchmark", "main"]

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


def run_benchmark(test_dir: str | os.PathLike, bundle_root: str | os.PathLike, output_dir: str | os.PathLike,
                  config_files: Sequence[str | os.PathLike] | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluates the bundle's model on every PraNet test set found in ``test_dir`` and writes
    ``polyp_benchmark.{md,json}`` to ``output_dir`` (the evaluation report to ``output_dir/eval``).

    Args:
        test_dir: PraNet's ``TestDataset`` folder.
        bundle_root: the bundle folder (``configs/``, ``models/model.pt``).
        output_dir: where to write.
        config_files: the evaluation configs; default ``B/configs/train.json`` + ``B/configs/evaluate.json``.
        overrides: config overrides by id, e.g. ``image_size=[352, 352]``, ``ckpt_path=...``.
    Returns:
        the JSON written (see :func:`benchmark_table`).
    """
    from monai.bundle import run as bundle_run

    bundle_root, output_dir = Path(bundle_root), Path(output_dir)
    cases, missing = pranet_test_cases(test_dir)
    if config_files is None:
        config_files = [bundle_root / "configs" / "train.json", bundle_root / "configs" / "evaluate.json"]
    config_files = [str(f) for f in config_files]
    for file in config_files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"config file {file!r} does not exist (pass --config_file)")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "datalist.json").write_text(json.dumps({"test": cases}, indent=2))
    logger.info("evaluating %d images of %s; missing: %s", len(cases), ", ".join(dict.fromkeys(c["dataset"] for c in cases)),
                ", ".join(missing) or "none")
    evaluation = output_dir / "eval"
    bundle_run("evaluating", config_file=config_files, bundle_root=str(bundle_root), output_dir=str(evaluation),
               polyp_metrics=True, **{"validate#dataset#data": cases}, **overrides)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    table = {**benchmark_table(metrics, missing), "test_dir": str(Path(test_dir).resolve()),
             "config_files": config_files, "overrides": {k: v for k, v in overrides.items()},
             "evaluation_report": str(evaluation)}
    (output_dir / "polyp_benchmark.json").write_text(json.dumps(table, indent=2))
    (output_dir / "polyp_benchmark.md").write_text(benchmark_markdown(table))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parses arguments and calls :func:`run_benchmark`; errors are one line on stderr."""
    parser = argparse.ArgumentParser(prog="polyp_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_dir", help="PraNet's TestDataset folder: <set>/{images,masks}")
    parser.add_argument("--bundle_root", default=".", help="bundle folder with configs/ and models/model.pt")
    parser.add_argument("--output_dir", required=True, help="where to write polyp_benchmark.{md,json} and eval/")
    parser.add_argument("--config_file", nargs="+", help="evaluation configs (default: the bundle's train.json "
                        "and evaluate.json)")
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), help="network input size")
    parser.add_argument("--ckpt_path", help="weights (default: BUNDLE_ROOT/models/model.pt)")
    parser.add_argument("--num_workers", type=int, help="data loader workers")
    parser.add_argument("--set", action="append", default=[], metavar="ID=VALUE",
                        help="any other config override, value as JSON (repeatable), e.g. --set variant='\"L\"'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set needs ID=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for key in ("image_size", "ckpt_path", "num_workers"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        table = run_benchmark(args.test_dir, args.bundle_root, args.output_dir, args.config_file, **overrides)
    except (DatasetError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(benchmark_markdown(table))
    return 0
