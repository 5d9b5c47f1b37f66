"""Check a dataset before training, evaluating or segmenting it: one line per problem, naming the file.

DATASET is what --dataset_dir takes: a folder with images/ + masks/, a folder with datalist.json, the
JSON file itself, or a folder of images to segment. Checked: unreadable, truncated or empty files, images
without masks and masks without images, duplicate stems, image/mask size mismatches, mask values that
cannot be class ids, NaN/Inf in volumes, 2D files for a 3D config and the reverse, label volumes whose
geometry (orientation, spacing, origin) differs from their image's, EXIF-rotated pictures, datalist entries
that are not objects of file paths, animated pictures, and every other entry of a folder (files of other
types, broken symbolic links, link loops, subfolders): only hidden entries and this tool's own outputs
(.transfuse_outputs.jsonl) are left out.
Exit status: 0 and a one-line summary when there is no problem, 1 when there is any, 2 on bad arguments.

Examples (from a checkout, ``python scripts/validate_data.py`` does the same):
  transfuse-validate-data ../shared/data/kvasir_seg
  transfuse-validate-data /data/prostate_datalist.json --num-classes 3 --spatial-dims 3
"""

from __future__ import annotations

import argparse
import sys
import time

from . import int_at_least
from ...data.validate import validate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset folder or datalist.json (as --dataset_dir)")
    parser.add_argument("--num-classes", type=int, default=2,
                        help="classes including background, as the config's num_classes (default 2: binary)")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                        help="2 for PNG/JPEG/... images (default), 3 for NIfTI volumes")
    parser.add_argument("--in-channels", type=int_at_least(1), default=None,
                        help="the network's in_channels: volumes must have as many (e.g. 2 for MSD's T2 + ADC); "
                             "pictures are read as 1 (grey) or 3 (RGB), other values are refused (default: not checked)")
    args = parser.parse_args(argv)
    if args.num_classes < 2:
        parser.error(f"--num-classes counts the background too and must be >= 2, got {args.num_classes}")
    start = time.perf_counter()
    problems, num_cases = validate_dataset(args.dataset, args.num_classes, args.spatial_dims, args.in_channels)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {num_cases} case(s) checked in {time.perf_counter() - start:.1f} s, no problems")
    return 0
