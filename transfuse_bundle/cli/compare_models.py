"""Train and evaluate TransFuse, its ablations, TransUNet and MedT with the same budget and data.

Every model goes through the bundle's own configs (see transfuse_bundle.comparison). Writes
OUT/comparison.json and OUT/comparison.md with parameters, batch-1 latency, Dice, IoU, HD95 and ASD
(evaluated at the original resolution) and the training time.

    transfuse-compare --dataset_dir DATALIST_OR_FOLDER --image_size 128 128 --epochs 5 --out runs/comparison
    python scripts/compare_models.py ...      # the same from a checkout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..comparison import MODELS, compare_models, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", type=Path, required=True, help="folder (images/ + masks/) or datalist.json")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--image_size", type=int, nargs=2, default=[128, 128], help="multiples of 128 so MedT fits")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--latency_iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/comparison"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the training and evaluation processes too
    out = args.out.resolve()
    try:
        rows = compare_models(args.dataset_dir, out, args.models, args.image_size, args.epochs, args.batch_size,
                              args.num_workers, args.latency_iters)
    except (RuntimeError, OSError) as e:  # a failed bundle run (its log is named), a missing configs/ folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, out / "comparison.md",
                f"{args.epochs} epochs, batch {args.batch_size}, {args.image_size[0]}x{args.image_size[1]}, "
                f"data {args.dataset_dir.resolve()}, {torch.get_num_threads()} CPU threads")
    print((out / "comparison.md").read_text())
    return 0
