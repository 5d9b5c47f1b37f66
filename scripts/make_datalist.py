"""Write an MSD-style datalist.json from a folder dataset (DIR/images + DIR/masks), optionally a subset.

Example (a Kvasir-SEG subset for a quick CPU run; the JSON holds absolute paths, the data stays put):

    python scripts/make_datalist.py --dataset_dir ../shared/data/kvasir_seg --output /tmp/kvasir/datalist.json \
        --num_training 300 --num_validation 60 --num_test 100
"""

from __future__ import annotations

import argparse

from transfuse_bundle.data import write_datalist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="folder with images/ and masks/")
    parser.add_argument("--output", required=True, help="where to write the datalist JSON")
    parser.add_argument("--num_training", type=int, default=None, help="training cases (default: all that are left)")
    parser.add_argument("--num_validation", type=int, default=0)
    parser.add_argument("--num_test", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lists = write_datalist(args.dataset_dir, args.output, args.num_training, args.num_validation, args.num_test, args.seed)
    print(f"{args.output}: " + ", ".join(f"{k} {len(v)}" for k, v in lists.items()))


if __name__ == "__main__":
    main()
