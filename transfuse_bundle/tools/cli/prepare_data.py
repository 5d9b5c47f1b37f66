"""Turn a public dataset layout into the bundle's datalist.json.

Layouts (detected, or named with --layout):
  polyp-pranet  TrainDataset/{image,mask} + TestDataset/{Kvasir,CVC-ClinicDB,CVC-ColonDB,CVC-300,ETIS-LaribPolypDB}/{images,masks}
  folder        images/ + masks/ (Kvasir-SEG, CVC-ClinicDB, PH2): deterministic train/validation/test split
  isic2017      ISIC-2017_{Training,Validation,Test_v2}_Data/*.jpg + ..._Part1_GroundTruth/*_segmentation.png
  msd-prostate  MSD Task05: dataset.json, imagesTr/*.nii.gz (T2 + ADC), labelsTr/ (1 = PZ, 2 = TZ)
  prostate158   <case>/t2.nii.gz + <case>/t2_anatomy_reader1.nii.gz (1 = central gland, 2 = PZ)
  hip           images/ + masks/ with integer labels, and --spacing ROW_MM COL_MM

Examples (from a checkout, ``python scripts/prepare_data.py`` does the same):
  transfuse-prepare-data /data/Kvasir-SEG --output /data/kvasir_datalist.json
  transfuse-prepare-data ../shared/data/kvasir_seg --output /tmp/kvasir/datalist.json --subset 200 40 100
  python -m monai.bundle run training --config_file configs/train.json --dataset_dir /data/kvasir_datalist.json
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import int_at_least
from ...data import write_datalist
from ...checks import flag
from ...errors import UserInputError
from ..prepare import LAYOUTS, prepare


def _yes_no(text: str) -> bool:
    try:
        return flag(text, "--overwrite")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the dataset's top folder")
    parser.add_argument("--output", required=True, help="datalist.json to write")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="default: detected from the folder")
    parser.add_argument("--val-fraction", type=float, help="share of training cases kept for validation")
    parser.add_argument("--test-fraction", type=float, help="share of cases kept for testing (split layouts)")
    parser.add_argument("--seed", type=int_at_least(0), help="seed of the split (default 0)")
    parser.add_argument("--spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"), help="pixel spacing (hip)")
    parser.add_argument("--subset", type=int, nargs=3, metavar=("N_TRAIN", "N_VAL", "N_TEST"),
                        help="folder layout only: a shuffled subset of these sizes (e.g. for a quick CPU run)")
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=_yes_no, metavar="true|false",
                        help="replace an existing --output datalist that this command did not write, or that was "
                             "edited since (without it, such a file is left as it is and nothing is written)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.subset is not None:
        ignored = [f"--{name.replace('_', '-')}" for name in ("layout", "val_fraction", "test_fraction", "spacing")
                   if getattr(args, name) is not None]
        if ignored:
            parser.error(f"--subset splits a folder layout by counts: {', '.join(ignored)} would be ignored")
        try:
            lists = write_datalist(args.root, args.output, *args.subset, seed=args.seed or 0, overwrite=args.overwrite)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.output}: " + ", ".join(f"{k} {len(v)}" for k, v in lists.items()))
        return 0
    options = {name: getattr(args, name) for name in ("seed", "val_fraction", "test_fraction", "spacing")
               if getattr(args, name) is not None}  # a layout refuses the options it does not take
    try:
        prepare(args.root, args.output, args.layout, overwrite=args.overwrite, **options)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
