"""Quantize a trained bundle to INT8 for the CPU engine, behind an accuracy gate.

    transfuse-quantize --bundle_root B --dataset_dir D [--task T] [--image_size H W]
    python scripts/quantize.py ...           # the same from a checkout

Calibrates NNCF's post-training quantization on images of D, evaluates the fp32 CPU engine and INT8 on a held-out
part of D (a datalist's test list, else a seeded fifth of a folder's pairs) with every metric of the evaluation
report, and writes B/models/model.int8.xml/.bin/.json (served by configs/inference_int8.json) when the held-out
mean Dice of INT8 is within --max-dice-drop (0.01) of fp32's; otherwise it writes nothing into B/models/, says by
how much the gate was missed and exits 1 (--force writes the model anyway). The report: OUT/quantization.md and
.json, and the two evaluations in OUT/fp32 and OUT/int8 (OUT: --output_dir, default B/eval/int8).
Needs the cpu extra: pip install -e ".[cpu]".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import int_at_least
from ...errors import find_user_error


def main(argv: list[str] | None = None) -> int:
    from ..tasks import task_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", required=True, type=Path, help="holds models/model.pt (a bundle root or a packaged bundle folder)")
    parser.add_argument("--dataset_dir", required=True, type=Path, help="labelled images: a folder of pairs or a datalist.json")
    parser.add_argument("--task", choices=task_names(), default=None, help="the repository task whose configs apply")
    parser.add_argument("--image_size", nargs=2, type=int_at_least(16), metavar=("H", "W"), default=None,
                        help="network input (default: the config's); the size the weights were trained at")
    parser.add_argument("--output_dir", type=Path, default=None, help="report folder (default: BUNDLE_ROOT/eval/int8)")
    parser.add_argument("--calibration-size", type=int_at_least(1), default=300, help="calibration samples (images or slices)")
    parser.add_argument("--held-out-fraction", type=float, default=0.2, help="held-out share of a folder of pairs")
    parser.add_argument("--seed", type=int, default=0, help="draw of the split and of the calibration images")
    parser.add_argument("--max-dice-drop", type=float, default=0.01, help="the gate: INT8 mean Dice at most this below fp32's")
    parser.add_argument("--force", action="store_true", help="write the INT8 model even when the gate is missed")
    parser.add_argument("--overwrite", action="store_true", help="replace output files this tool did not write")
    args = parser.parse_args(argv)
    from ..quantize import quantize

    try:
        result = quantize(args.bundle_root, args.dataset_dir, args.task, args.image_size, args.output_dir,
                          args.calibration_size, args.held_out_fraction, args.seed, args.max_dice_drop, args.force,
                          args.overwrite)
    except Exception as error:  # a refusal, also from inside the evaluations (MONAI's config parser wraps it)
        refusal = find_user_error(error)
        if refusal is None:
            raise
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    print(json.dumps({"gate": result["gate"], "int8_model": result["int8_model"]}))
    return 0
