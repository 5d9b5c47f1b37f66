"""Train and evaluate networks, or training recipes, with the same budget and data.

Networks (TransFuse, its ablations, TransUNet, MedT) go through the bundle's own configs (see
transfuse_bundle.tools.comparison). Writes OUT/comparison.json and OUT/comparison.md with parameters, batch-1
latency, Dice, IoU, HD95 and ASD (evaluated at the original resolution) and the training time.

    transfuse-compare --dataset_dir DATALIST_OR_FOLDER --image_size 128 128 --epochs 5 --out runs/comparison

Recipes (--recipes default official): a test split is carved from the folder's pairs (--test_fraction,
--split_seed) and never used for training or checkpoint choice; each recipe trains once per --seeds on
the rest, with the task's configs underneath (--task), and every run is evaluated on the test split.
Writes OUT/recipes.json and OUT/recipes.md (per run, then mean and spread over seeds). The heading names
the training precision: amp_dtype "auto" trains in bf16 where the CPU or GPU has it natively (--amp_dtype
float32 to compare with fp32 runs).

    transfuse-compare --recipes default official --dataset_dir ../shared/data/kvasir_seg --image_size 192 256 --epochs 4 --seeds 0 1 --out runs/recipes
    python scripts/compare_models.py ...      # the same from a checkout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from . import int_at_least
from ..comparison import (COMPARED_MODELS, RECIPES, check_test_fraction, compare_models, compare_recipes, write_recipe_table,
                          write_table)
from ...devices import AMP_DTYPES, resolve_amp_dtype
from ...errors import UserInputError
from ...locking import lock_folders
from ..tasks import task_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", type=Path, required=True,
                        help="folder (images/ + masks/) or datalist.json (networks only)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--models", nargs="+", choices=list(COMPARED_MODELS), help="networks to compare (default: all)")
    what.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="training recipes to compare instead")
    parser.add_argument("--task", choices=task_names(), help="recipes: the task configs they overlay")
    parser.add_argument("--image_size", type=int_at_least(1), nargs=2, default=None,
                        help="networks: default 128 128 (multiples of 128 so MedT fits); recipes: default the task's")
    parser.add_argument("--epochs", type=int_at_least(1), default=5)
    parser.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1], help="recipes: one run per seed")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="recipes: the held-out share of the pairs")
    parser.add_argument("--split_seed", type=int_at_least(0), default=0, help="recipes: the draw of the test split")
    parser.add_argument("--batch_size", type=int_at_least(1), default=8, help="networks only (a recipe sets its own)")
    parser.add_argument("--num_workers", type=int_at_least(0), default=None,
                        help="data loader workers (default: the configs' own, none on a CPU of at most 4 cores)")
    parser.add_argument("--amp_dtype", choices=["auto", *AMP_DTYPES], default=None,
                        help="training precision (default: the configs' auto, bf16 where the CPU or GPU has it natively)")
    parser.add_argument("--latency_iters", type=int_at_least(1), default=20)
    parser.add_argument("--threads", type=int_at_least(1), default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/comparison"))
    parser.add_argument("--overwrite", action="store_true", help="replace the earlier results of a non-empty --out")
    args = parser.parse_args(argv)
    if args.task and not args.recipes:
        parser.error("--task applies to --recipes")
    if args.recipes:
        try:
            check_test_fraction(args.test_fraction)
        except ValueError as e:  # before the folder is locked and the split carved
            parser.error(f"--{e}")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # train.json's device
    try:  # the precision every run trains in, named in the table's heading (checked before any work)
        precision = str(resolve_amp_dtype(args.amp_dtype or "auto", device)).removeprefix("torch.")
    except ValueError as e:
        parser.error(f"--amp_dtype: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the training and evaluation processes too
    out = args.out.resolve()
    try:
        if not args.dataset_dir.exists():  # before --out is made and locked: a typo costs nothing
            raise UserInputError(f"--dataset_dir {args.dataset_dir}: does not exist (a folder with images/ + masks/, or a "
                                 f"datalist.json); nothing was done")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:  # hours of runs: never replaced unasked
            raise UserInputError(f"--out {out}: holds earlier results; give another folder, or --overwrite to replace them")
        lock_folders(out)  # one comparison per folder (its runs write into it for hours)
        if args.recipes:
            if not args.dataset_dir.is_dir():
                parser.error(f"--dataset_dir {args.dataset_dir}: recipes need a folder (images/ + masks/) to carve a test split from")
            rows = compare_recipes(args.dataset_dir, out, args.recipes, args.task, args.image_size, args.epochs,
                                   args.seeds, args.test_fraction, args.split_seed, args.num_workers, args.amp_dtype)
            name, write = "recipes", write_recipe_table
            size = "x".join(map(str, args.image_size)) if args.image_size else f"the {args.task or 'default'} task's size"
            heading = (f"{args.epochs} epochs, {size}, task {args.task or '(none)'}, seeds {args.seeds}, test split "
                       f"{args.test_fraction:g} of {args.dataset_dir.resolve()} (draw {args.split_seed}), "
                       f"{torch.get_num_threads()} CPU threads, training in {precision}")
        else:
            image_size = args.image_size or [128, 128]
            rows = compare_models(args.dataset_dir, out, args.models or list(COMPARED_MODELS), image_size, args.epochs,
                                  args.batch_size, args.num_workers, args.latency_iters, args.amp_dtype)
            name, write = "comparison", write_table
            heading = (f"{args.epochs} epochs, batch {args.batch_size}, {image_size[0]}x{image_size[1]}, "
                       f"data {args.dataset_dir.resolve()}, {torch.get_num_threads()} CPU threads, training in {precision}")
    except (RuntimeError, OSError, ValueError, UserInputError) as e:  # a failed bundle run (its log is named), bad data, no configs/
        print(f"error: {e}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    write(rows, out / f"{name}.md", heading)
    print((out / f"{name}.md").read_text())
    return 0
