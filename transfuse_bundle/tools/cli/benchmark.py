"""Benchmark TransFuse S / L / L* against the official computation ("official-S") and MONAI's networks.

One process, one thread setting: parameters, GMACs, batch-1 latency, throughput, a training step and peak
memory per model and size, TransFuse also in its fast inference modes, our S's speed-ups against
official-S, and the roofline: each path's GFLOP/s against the machine's fp32 / bf16 matmul peak measured
in the same run (what each figure means: transfuse_bundle.tools.benchmarking). Writes OUT.json and OUT.md.

    transfuse-benchmark --threads 2 --out docs/benchmark
    transfuse-benchmark --models S --official-code ../official_transfuse --engine --threads 2 --out /tmp/cpu
    transfuse-benchmark --tiny --out /tmp/bench      # seconds; what the test suite runs
    transfuse-benchmark --models --threads 2 --data-dir DATA --training-loop single-scale multi-scale --out /tmp/loop
    transfuse-benchmark --evaluation DATALIST --bundle-root B --out /tmp/eval   # evaluate.json's cost per stage
    transfuse-benchmark --models S --sizes 352 --compile --batch-sweep 1 8 16 32 64 128 --out /tmp/gpu  # CUDA
    python scripts/benchmark.py --tiny --out /tmp/bench   # the same from a checkout
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch

from . import int_at_least
from .. import REPOSITORY
from ...errors import UserInputError
from ..benchmarking import (BENCHMARKED_NETWORKS, benchmark_report, evaluation_benchmark, machine_description,
                            training_loop_datalist)


def parse_size(text: str) -> tuple[int, int]:
    """``"192x256"`` -> ``(192, 256)``; ``"352"`` -> ``(352, 352)``."""
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW or a single size, e.g. 192x256 or 352, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(BENCHMARKED_NETWORKS),
                        choices=["official", *BENCHMARKED_NETWORKS], metavar="MODEL",
                        help=f"benchmark names (default: all of {', '.join(BENCHMARKED_NETWORKS)}; none: only --data-dir's measurements)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(192, 256), (352, 352)])
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int_at_least(1), default=20, help="timed batch-1 forwards (median)")
    parser.add_argument("--warmup", type=int_at_least(0), default=3)
    parser.add_argument("--throughput-batch", type=int_at_least(1), default=16)
    parser.add_argument("--throughput-iters", type=int_at_least(1), default=3)
    parser.add_argument("--train-batch", type=int_at_least(1), default=8)
    parser.add_argument("--train-iters", type=int_at_least(1), default=3)
    parser.add_argument("--compile", action="store_true",
                        help="CUDA: also the torch.compile and CUDA-graph paths (minutes of compilation)")
    parser.add_argument("--batch-sweep", type=int_at_least(1), nargs="+", default=[], metavar="BATCH",
                        help="batch sizes to try for each path's best throughput, e.g. 1 8 16 32 64 128")
    parser.add_argument("--peak-size", type=int_at_least(1), default=None,
                        help="side of the square matmuls that measure the peak (default 8192 on CUDA, 2048 on CPU)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="also measure the training data pipeline on this dataset (folder or datalist.json)")
    parser.add_argument("--data-steps", type=int_at_least(1), default=6)
    parser.add_argument("--num-workers", type=int_at_least(0), default=2)
    parser.add_argument("--training-loop", nargs="+", default=[], choices=["single-scale", "multi-scale"],
                        help="also measure the bundle's own training loop on --data-dir at each size against the bare "
                             "training step (multi-scale: the polyp task's MultiScaleIteration); see training_loop")
    parser.add_argument("--loop-iterations", type=int_at_least(1), default=4, help="training-loop iterations per epoch")
    parser.add_argument("--loop-epochs", type=int_at_least(2), default=2, help="training-loop epochs (the first warms up)")
    parser.add_argument("--tiny", action="store_true", help="one small size, few iterations, three models")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark"), help="writes OUT.json and OUT.md")
    parser.add_argument("--evaluation", type=Path, default=None, metavar="DATASET",
                        help="instead: the cost of evaluate.json on DATASET (a folder, or a datalist's test list) at its "
                             "original resolution, per stage, against the forward passes; writes OUT.json")
    parser.add_argument("--bundle-root", type=Path, default=Path("."), help="--evaluation: holds models/model.pt")
    parser.add_argument("--official-code", type=Path, default=None, metavar="DIR",
                        help="a checkout of github.com/Rayicer/TransFuse: adds the model 'official' (the real code, "
                             "imported from DIR at run time) and makes it the reference of S's speed-ups")
    parser.add_argument("--official-reference", type=Path, default=REPOSITORY.parent / "shared" / "reference", metavar="DIR",
                        help="the official reference state dict and outputs that prove --official-code is the official "
                             "model (default: ../shared/reference beside the repository)")
    parser.add_argument("--engine", action="store_true",
                        help="CPU: also the CPU engine's paths (OpenVINO fp32 / bf16, INT8; the cpu extra) and their "
                             "outputs against PyTorch's")
    parser.add_argument("--weights", type=Path, default=None, help="a state dict for S (used at the sizes it fits)")
    parser.add_argument("--agreement-data", type=Path, default=None, metavar="DATASET",
                        help="--engine: compare the outputs on up to 8 evaluation images of DATASET, INT8 calibrated on 8 of its training images (else random inputs)")
    args = parser.parse_args(argv)
    if args.evaluation is not None:
        return _evaluation(args)
    if args.training_loop:  # checked before any measurement, not after minutes of them
        if args.data_dir is None:
            parser.error("--training-loop needs --data-dir (a dataset with at least train-batch x loop-iterations training cases)")
        try:
            training_loop_datalist(args.data_dir, args.train_batch, args.loop_iterations)
        except ValueError as error:
            parser.error(f"{error} (--train-batch x --loop-iterations)")
    if args.official_code is not None:
        if "official" not in args.models:
            args.models = ["official", *[m for m in args.models if m != "official-S"]]
        try:  # refused before any measurement
            from ..official import load_official_module

            load_official_module(args.official_code)
        except UserInputError as error:
            parser.error(str(error))
    if args.engine:
        try:
            from ...cpu_engine import require_engine

            require_engine()
        except UserInputError as error:
            parser.error(str(error))
    if args.tiny:
        args.models = ["official-S", "S", "unet"]
        args.sizes, args.iters, args.warmup = [(32, 32)], 2, 1
        args.throughput_batch, args.throughput_iters, args.train_batch, args.train_iters = 2, 1, 2, 1
        args.peak_size = 256
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmark_report(args.out, args.models, args.sizes, args.device, args.iters, args.warmup, args.throughput_batch,
                     args.throughput_iters, args.train_batch, args.train_iters, args.compile, args.batch_sweep,
                     args.peak_size, args.data_dir, args.data_steps, args.num_workers, args.training_loop,
                     args.loop_iterations, args.loop_epochs, args.official_code,
                     args.official_reference if args.official_reference.is_dir() else None, args.engine, args.weights,
                     args.agreement_data)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


def _evaluation(args: argparse.Namespace) -> int:
    """``--evaluation``: :func:`~transfuse_bundle.tools.benchmarking.evaluation_benchmark` at the first size; the
    evaluation's report goes to OUT_report/, the result to OUT.json and standard output."""
    try:
        result = evaluation_benchmark(args.evaluation, args.bundle_root, args.out.with_name(args.out.name + "_report"),
                                      args.sizes[0], args.iters, args.threads)
    except subprocess.CalledProcessError as failed:  # the evaluation has said why in one line: no traceback on top
        return failed.returncode
    result["machine"] = machine_description("cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return 0
