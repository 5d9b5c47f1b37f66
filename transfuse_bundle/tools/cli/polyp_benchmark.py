"""The paper's Table 1 on PraNet's polyp test sets (mDice and mIoU per set, seen and unseen) plus the
PraNet toolbox metrics, from one evaluation of the bundle's model at the original resolution. Writes
OUT/polyp_benchmark.md and .json, and the evaluation report to OUT/eval; sets missing from
TESTDATASET_DIR are reported as missing (what each number is: transfuse_bundle.tools.polyp_benchmark).

    transfuse-polyp-benchmark TESTDATASET_DIR --bundle_root B --output_dir OUT [--image_size H W]
    python scripts/polyp_benchmark.py TESTDATASET_DIR --bundle_root B --output_dir OUT   # from a checkout
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import int_at_least
from ...data.datalist import DatasetError
from ..polyp_benchmark import benchmark_markdown, run_polyp_benchmark
from ..tasks import TaskError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_dir", metavar="TESTDATASET_DIR", help="PraNet's TestDataset folder: <set>/{images,masks}")
    parser.add_argument("--bundle_root", default=".", help="bundle folder with configs/ and models/model.pt")
    parser.add_argument("--output_dir", required=True, help="where to write polyp_benchmark.{md,json} and eval/")
    parser.add_argument("--config_file", nargs="+", help="evaluation configs (default: the polyp task's "
                        "evaluate chain of the bundle root, else its train.json + evaluate.json)")
    parser.add_argument("--image_size", type=int_at_least(1), nargs=2, metavar=("H", "W"), help="network input size")
    parser.add_argument("--ckpt_path", help="weights (default: BUNDLE_ROOT/models/model.pt)")
    parser.add_argument("--num_workers", type=int_at_least(0), help="data loader workers")
    parser.add_argument("--set", action="append", default=[], metavar="ID=VALUE",
                        help="any other config override, the value as JSON (repeatable), e.g. --set variant='\"L\"'")
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
        table = run_polyp_benchmark(args.test_dir, args.bundle_root, args.output_dir, args.config_file, **overrides)
    except (DatasetError, TaskError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError,
            ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(benchmark_markdown(table))
    return 0
