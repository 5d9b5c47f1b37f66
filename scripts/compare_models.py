#!/usr/bin/env python
"""Train and evaluate TransFuse, its ablations, TransUNet and MedT with the same budget and data.

Every model goes through the bundle's own configs (train.json, evaluate.json) with a
``configs/networks/*.json`` overlay or ``network_def`` overrides, so losses, augmentation, data
and metrics are identical. Writes ``OUT/comparison.json`` and ``OUT/comparison.md`` with
parameters, batch-1 latency, Dice, IoU, HD95 and ASD (evaluated at the original resolution).

    python scripts/compare_models.py --dataset_dir DATALIST_OR_FOLDER --image_size 128 128 \\
        --epochs 5 --out runs/comparison
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from transfuse_bundle.benchmarking import forward_latency_ms, parameter_count  # noqa: E402

# name -> (config overlays, CLI overrides)
MODELS: dict[str, tuple[list[str], dict[str, str]]] = {
    "TransFuse-S": ([], {}),
    "TransFuse-S concat+res (E.5)": ([], {"network_def#fusion": "concat"}),
    "TransFuse-S sequential (E.3)": ([], {"network_def#composition": "sequential"}),
    "TransFuse-S no Hadamard": ([], {"network_def#fusion": "['spatial_attention','channel_attention']"}),
    "TransUNet": (["configs/networks/transunet.json"], {}),
    "MedT": (["configs/networks/medt.json"], {}),
}


def _config_list(files: list[str]) -> str:
    return "[" + ",".join(f"'{ROOT / f}'" for f in files) + "]"


def _bundle(run_id: str, files: list[str], overrides: dict[str, str], log: Path) -> float:
    """Runs ``python -m monai.bundle run RUN_ID`` and returns its wall time; the log goes to ``log``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", _config_list(files),
           "--bundle_root", str(ROOT)]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    start = time.time()
    with log.open("w") as stream:
        result = subprocess.run(cmd, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return time.time() - start


def compare(args) -> list[dict]:
    rows = []
    size = f"[{args.image_size[0]},{args.image_size[1]}]"
    for name in args.models:
        overlays, model_overrides = MODELS[name]
        work = args.out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        work.mkdir(parents=True, exist_ok=True)
        common = {"dataset_dir": str(args.dataset_dir), "image_size": size, "ckpt_dir": str(work / "models"),
                  "num_workers": str(args.num_workers), **model_overrides}
        train_overrides = {**common, "output_dir": str(work / "train"), "train#trainer#max_epochs": str(args.epochs),
                           "batch_size": str(args.batch_size), "val_interval": "1"}
        print(f"[{name}] training {args.epochs} epochs ...", flush=True)
        train_s = _bundle("training", ["configs/train.json", *overlays], train_overrides, work / "train.log")
        print(f"[{name}] evaluating ...", flush=True)
        _bundle("run", ["configs/train.json", "configs/evaluate.json", *overlays],
                {**common, "output_dir": str(work / "eval")}, work / "eval.log")
        metrics = json.loads((work / "eval" / "metrics.json").read_text())
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "train.json"), *[str(ROOT / f) for f in overlays]])
        parser["image_size"] = list(args.image_size)
        for key, value in model_overrides.items():
            parser[key] = parser_value(value)
        net = parser.get_parsed_content("network_def")
        x = torch.rand(1, 3, *args.image_size)
        rows.append({
            "model": name, "params": parameter_count(net),
            "latency_ms": round(forward_latency_ms(net, x, args.latency_iters, 2), 1),
            "train_s": round(train_s, 1),
            **{k: metrics.get(k) for k in ("mean_dice", "mean_iou", "hd95", "asd")},
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def parser_value(text: str):
    """CLI override text -> the value monai's CLI would pass (lists stay lists)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def write_table(rows: list[dict], args, path: Path) -> None:
    lines = [f"{args.epochs} epochs, batch {args.batch_size}, {args.image_size[0]}x{args.image_size[1]}, "
             f"data {args.dataset_dir}, {torch.get_num_threads()} CPU threads", "",
             "| model | parameters | latency (ms) | Dice | IoU | HD95 | ASD | training (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(f"| {r['model']} | {r['params']:,} | {r['latency_ms']} | {fmt(r['mean_dice'])} | "
                     f"{fmt(r['mean_iou'])} | {fmt(r['hd95'])} | {fmt(r['asd'])} | {r['train_s']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
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
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.out = args.out.resolve()
    args.dataset_dir = args.dataset_dir.resolve()
    rows = compare(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, args, args.out / "comparison.md")
    print((args.out / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
