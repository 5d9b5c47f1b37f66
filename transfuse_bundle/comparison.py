"""Train and evaluate TransFuse, its ablations, TransUNet and MedT with the same budget and data.

Every model of :data:`MODELS` goes through the bundle's own configs (``train.json``, ``evaluate.json``)
with a ``configs/networks/*.json`` overlay or ``network_def`` overrides, run by MONAI's CLI
(``python -m monai.bundle run``), so losses, augmentation, data and metrics are identical. Reported per
model: parameters, batch-1 latency, Dice, IoU, HD95 and ASD (evaluated at the original resolution) and
the training time. The command is ``transfuse-compare`` (:mod:`transfuse_bundle.cli.compare_models`).

Example::

    from transfuse_bundle.comparison import compare_models, write_table
    rows = compare_models("datalist.json", "runs/comparison", ["TransFuse-S", "MedT"], epochs=1)
    write_table(rows, "runs/comparison/comparison.md", "1 epoch, batch 8, 128x128")
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .benchmarking import forward_latency_ms, parameter_count
from .bundle_folder import source_root
from .packaging import cli_arguments

__all__ = ["MODELS", "compare_models", "write_table"]

# name -> (config overlays relative to the repository, config overrides {id: value})
MODELS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "TransFuse-S": ([], {}),
    "TransFuse-S concat+res (E.5)": ([], {"network_def#fusion": "concat"}),
    "TransFuse-S sequential (E.3)": ([], {"network_def#composition": "sequential"}),
    "TransFuse-S no Hadamard": ([], {"network_def#fusion": ["spatial_attention", "channel_attention"]}),
    "TransUNet": (["configs/networks/transunet.json"], {}),
    "MedT": (["configs/networks/medt.json"], {}),
}


def _run_bundle(root: Path, run_id: str, files: Sequence[str], overrides: Mapping[str, Any], log: Path) -> float:
    """Runs ``python -m monai.bundle run RUN_ID`` on ``root``'s config ``files`` and returns its wall time;
    the output goes to ``log``, which a failure names."""
    config_list = "[" + ",".join(f"'{root / f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_list, "--bundle_root", str(root),
           *cli_arguments(overrides)]
    start = time.time()
    with log.open("w") as stream:
        result = subprocess.run(cmd, cwd=root, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return time.time() - start


def compare_models(dataset_dir: str | os.PathLike, out: str | os.PathLike, models: Sequence[str] = tuple(MODELS),
                   image_size: Sequence[int] = (128, 128), epochs: int = 5, batch_size: int = 8, num_workers: int = 2,
                   latency_iters: int = 20, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Trains and evaluates each of ``models`` (names of :data:`MODELS`) in ``out/<slug of the name>/``.

    Args:
        dataset_dir: a folder (``images/`` + ``masks/``) or a ``datalist.json``, as ``--dataset_dir``.
        out: the working folder; each model's training and evaluation outputs and logs go below it.
        models: names of :data:`MODELS`, in the order of the rows.
        image_size: ``(H, W)`` network input (multiples of 128 so that MedT fits).
        epochs, batch_size, num_workers: the training budget, the same for every model.
        latency_iters: timed batch-1 forwards for the median latency.
        root: the repository with ``configs/`` (default :func:`~transfuse_bundle.bundle_folder.source_root`).

    Returns one row per model: ``model``, ``params``, ``latency_ms``, ``train_s``, ``mean_dice``,
    ``mean_iou``, ``hd95``, ``asd``. A failing bundle run raises ``RuntimeError`` naming its log.
    """
    from monai.bundle import ConfigParser

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    root, out = source_root(root).resolve(), Path(out).resolve()
    rows = []
    for name in models:
        overlays, model_overrides = MODELS[name]
        work = out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        work.mkdir(parents=True, exist_ok=True)
        common = {"dataset_dir": str(Path(dataset_dir).resolve()), "image_size": list(image_size),
                  "ckpt_dir": str(work / "models"), "num_workers": num_workers, **model_overrides}
        train_overrides = {**common, "output_dir": str(work / "train"), "train#trainer#max_epochs": epochs,
                           "batch_size": batch_size, "val_interval": 1}
        print(f"[{name}] training {epochs} epochs ...", flush=True)
        train_s = _run_bundle(root, "training", ["configs/train.json", *overlays], train_overrides, work / "train.log")
        print(f"[{name}] evaluating ...", flush=True)
        _run_bundle(root, "run", ["configs/train.json", "configs/evaluate.json", *overlays],
                    {**common, "output_dir": str(work / "eval")}, work / "eval.log")
        metrics = json.loads((work / "eval" / "metrics.json").read_text())
        parser = ConfigParser()
        parser.read_config([str(root / "configs" / "train.json"), *[str(root / f) for f in overlays]])
        parser["image_size"] = list(image_size)
        for key, value in model_overrides.items():
            parser[key] = value
        net = parser.get_parsed_content("network_def")
        x = torch.rand(1, 3, *image_size)
        rows.append({
            "model": name, "params": parameter_count(net),
            "latency_ms": round(forward_latency_ms(net, x, latency_iters, 2), 1),
            "train_s": round(train_s, 1),
            **{k: metrics.get(k) for k in ("mean_dice", "mean_iou", "hd95", "asd")},
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def write_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, heading: str) -> None:
    """The rows of :func:`compare_models` as a Markdown table under the line ``heading`` (the budget and data)."""
    lines = [heading, "",
             "| model | parameters | latency (ms) | Dice | IoU | HD95 | ASD | training (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['latency_ms']} | {_fmt(r['mean_dice'])} | "
                     f"{_fmt(r['mean_iou'])} | {_fmt(r['hd95'])} | {_fmt(r['asd'])} | {r['train_s']} |")
    Path(path).write_text("\n".join(lines) + "\n")
