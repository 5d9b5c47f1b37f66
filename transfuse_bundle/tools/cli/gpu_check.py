"""Check the bundle on one GPU in under 10 minutes: benchmark (fp32, bf16, channels-last, torch.compile, CUDA
graphs, roofline), a short polyp training (multi-scale, bf16) and an evaluation on Kvasir-SEG; writes
OUT/gpu_check.json and OUT/gpu_check.md (what each stage runs: transfuse_bundle.tools.gpu_check).

    transfuse-gpu-check --out /tmp/gpu_check                          # one GPU, < 10 minutes
    transfuse-gpu-check --out /tmp/gpu_check --data DIR --epochs 5    # another Kvasir-SEG copy, fewer epochs
    transfuse-gpu-check --tiny --out /tmp/gpu_tiny                    # CPU, seconds: what the test suite runs
    python scripts/gpu_check.py --tiny --out /tmp/gpu_tiny            # the same from a checkout
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import int_at_least
from ..bundle_folder import source_root
from ...data import DatasetError
from ..gpu_check import REPORT_NAME, run_gpu_check, settings_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder for the report and outputs")
    parser.add_argument("--data", type=Path, default=source_root().parent / "shared" / "data" / "kvasir_seg",
                        help="Kvasir-SEG folder with images/ and masks/ (default: ../shared/data/kvasir_seg)")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny sizes, 1 epoch, few images (the test suite's run)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--epochs", type=int_at_least(1), default=None, help="training epochs (default 10; tiny 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile and CUDA-graph paths")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_for(args.tiny, device=args.device, max_epochs=args.epochs,
                            compile=False if args.no_compile else None)
    try:
        run_gpu_check(args.out, args.data, settings, tiny=args.tiny)
    except (DatasetError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / (REPORT_NAME + '.json')} and {args.out / (REPORT_NAME + '.md')}")
    return 0
