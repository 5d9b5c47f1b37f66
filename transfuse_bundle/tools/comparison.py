"""Train and evaluate TransFuse, its ablations, TransUNet and MedT with the same budget and data.

Every model of :data:`COMPARED_MODELS` goes through the bundle's own configs (``train.json``, ``evaluate.json``)
with a ``configs/networks/*.json`` overlay or ``network_def`` overrides, run by MONAI's CLI
(``python -m monai.bundle run``; a model's training and evaluation in one new interpreter, each with its log), so
losses, augmentation, data and metrics are identical. Reported per
model: parameters, batch-1 latency, Dice, IoU, HD95 and ASD (evaluated at the original resolution) and
the training time. The command is ``transfuse-compare`` (:mod:`transfuse_bundle.tools.cli.compare_models`).

Example::

    from transfuse_bundle.tools.comparison import compare_models, write_table
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

from ..metrics.report import format_number
from .benchmarking import forward_latency_ms, parameter_count
from .bundle_folder import source_root
from ..data import find_image_mask_pairs, write_datalist
from .packaging import cli_arguments
from .tasks import config_file_option, config_parser

__all__ = ["COMPARED_MODELS", "RECIPES", "compare_models", "compare_recipes", "write_recipe_table", "write_table"]

REPORTED = ("mean_dice", "mean_iou", "hd95", "asd", "nsd")  # the evaluation report's keys in each row
#: the columns of each row after the metrics: test images with an empty prediction (their HD95 / ASD count at the
#: image diagonal, see metrics/empty.py), training wall time
COUNTED = ("empty_predictions", "train_s")

# name -> (config overlays relative to the repository, config overrides {id: value})
COMPARED_MODELS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "TransFuse-S": ([], {}),
    "TransFuse-S concat+res (E.5)": ([], {"network_def#fusion": "concat"}),
    "TransFuse-S sequential (E.3)": ([], {"network_def#composition": "sequential"}),
    "TransFuse-S no Hadamard": ([], {"network_def#fusion": ["spatial_attention", "channel_attention"]}),
    "TransUNet": (["configs/networks/transunet.json"], {}),
    "MedT": (["configs/networks/medt.json"], {}),
}


STEP_DONE = "transfuse-compare step seconds: "  # what the interpreter of _run_steps prints after each step


def _bundle_arguments(root: Path, run_id: str, config: str, task: str | None, overlays: Sequence[str],
                      overrides: Mapping[str, Any]) -> list[str]:
    """The arguments of ``python -m monai.bundle run RUN_ID`` on ``root``'s ``config`` chain of ``task`` with
    ``overlays`` and ``overrides``."""
    return ["run", run_id, "--config_file", config_file_option(config, task, root, overlays), "--bundle_root", str(root),
            *cli_arguments(overrides)]


def _run_steps(root: Path, steps: Sequence[tuple[list[str], Path]]) -> list[float]:
    """Runs ``python -m monai.bundle ARGS`` for each ``(ARGS, log)`` of ``steps``, one after the other in one new
    interpreter (:func:`run_steps_here`: a Python start with MONAI's imports takes ~10 s of a small CPU, once per model
    instead of once per step), each step's output in its own log. Returns each step's wall time; a failing step
    raises ``RuntimeError`` naming its command and log."""
    spec = json.dumps([[args, str(log)] for args, log in steps])
    result = subprocess.run([sys.executable, "-m", __name__, spec], cwd=root, stdout=subprocess.PIPE, text=True)
    seconds = [float(line.removeprefix(STEP_DONE)) for line in result.stdout.splitlines() if line.startswith(STEP_DONE)]
    if result.returncode != 0 or len(seconds) != len(steps):
        args, log = steps[min(len(seconds), len(steps) - 1)]
        raise RuntimeError(f"{sys.executable} -m monai.bundle {' '.join(args)} failed (exit {result.returncode}); see {log}")
    return seconds


def run_steps_here(steps: Sequence[tuple[list[str], str]]) -> int:
    """The interpreter of :func:`_run_steps`: each step as ``python -m monai.bundle ARGS`` would run it (MONAI's
    ``__main__``, its arguments read by python-fire), with this process's stdout and stderr (file descriptors 1 and 2,
    so that logging, progress bars and loader workers write there too) going to the step's log; an uncaught error
    goes through ``sys.excepthook`` into that log, as at the end of a command. Prints ``STEP_DONE`` and the wall time
    after each step; returns 1 at the first failing step, else 0."""
    import gc
    import runpy
    import traceback

    console = os.fdopen(os.dup(1), "w")
    for args, log in steps:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        failed, start = False, time.perf_counter()
        with open(log, "wb") as stream:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            sys.argv = ["monai.bundle", *args]
            try:
                runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                failed = stop.code not in (None, 0)
            except BaseException:
                failed = True
                try:
                    sys.excepthook(*sys.exc_info())
                except Exception:  # a broken hook must not hide the error
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
                os.close(saved_out)
                os.close(saved_err)
        if failed:
            return 1
        print(f"{STEP_DONE}{time.perf_counter() - start:.3f}", file=console, flush=True)
        gc.collect()  # the step's network and data before the next step builds its own
    return 0


def _runtime_overrides(num_workers: int | None, amp_dtype: str | None) -> dict[str, Any]:
    """The ``num_workers`` and ``amp_dtype`` overrides; ``None`` passes none, so the configs' own apply
    (``loader_workers``; ``"auto"``: bf16 where the CPU or GPU has it natively, which changes the numbers a little)."""
    return {key: value for key, value in (("num_workers", num_workers), ("amp_dtype", amp_dtype)) if value is not None}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _train_and_evaluate(root: Path, work: Path, dataset_dir: str | os.PathLike, task: str | None,
                        overlays: Sequence[str], overrides: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """Trains ``task``'s configs + ``overlays`` for ``epochs`` in ``work`` (``models/``, ``train/``, logs), evaluates
    its ``model.pt`` with ``evaluate.json`` at the original resolution (``work/eval``) and returns ``train_s``, the
    report's metrics of :data:`REPORTED` and ``empty_predictions``."""
    work.mkdir(parents=True, exist_ok=True)
    common = {"dataset_dir": str(Path(dataset_dir).resolve()), "ckpt_dir": str(work / "models"), **overrides}
    # overwrite: work/models is this tool's; it holds an earlier comparison's model only when --overwrite asked to
    # replace those results (a non-empty --out is refused otherwise)
    train_s, _ = _run_steps(root, [
        (_bundle_arguments(root, "training", "train.json", task, overlays,
                           {**common, "output_dir": str(work / "train"), "max_epochs": epochs, "overwrite": True}),
         work / "train.log"),
        (_bundle_arguments(root, "run", "evaluate.json", task, overlays, {**common, "output_dir": str(work / "eval")}),
         work / "eval.log")])
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    return {"train_s": round(train_s, 1), **{k: metrics.get(k) for k in REPORTED},
            "empty_predictions": metrics["empty_cases"]["prediction_empty"]}


def compare_models(dataset_dir: str | os.PathLike, out: str | os.PathLike, models: Sequence[str] = tuple(COMPARED_MODELS),
                   image_size: Sequence[int] = (128, 128), epochs: int = 5, batch_size: int = 8,
                   num_workers: int | None = None, latency_iters: int = 20, amp_dtype: str | None = None,
                   root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Trains and evaluates each of ``models`` (names of :data:`COMPARED_MODELS`) in ``out/<slug of the name>/``.

    Args:
        dataset_dir: a folder (``images/`` + ``masks/``) or a ``datalist.json``, as ``--dataset_dir``.
        out: the working folder; each model's training and evaluation outputs and logs go below it.
        models: names of :data:`COMPARED_MODELS`, in the order of the rows.
        image_size: ``(H, W)`` network input (multiples of 128 so that MedT fits).
        epochs, batch_size: the training budget, the same for every model.
        num_workers: data loader workers; ``None`` keeps the configs' own (none on a CPU of at most 4 cores).
        latency_iters: timed batch-1 forwards for the median latency.
        amp_dtype: the training precision (``amp_dtype`` of train.json); ``None`` keeps the configs' ``"auto"``.
        root: the repository with ``configs/`` (default :func:`~transfuse_bundle.tools.bundle_folder.source_root`).

    Returns one row per model: ``model``, ``params``, ``latency_ms`` and the keys of :data:`REPORTED` and
    :data:`COUNTED`. A failing bundle run raises ``RuntimeError`` naming its log.
    """
    unknown = [m for m in models if m not in COMPARED_MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(COMPARED_MODELS)}")
    root, out = source_root(root).resolve(), Path(out).resolve()
    rows = []
    for name in models:
        overlays, model_overrides = COMPARED_MODELS[name]
        work = out / _slug(name)
        print(f"[{name}] training {epochs} epochs, then evaluating ...", flush=True)
        result = _train_and_evaluate(root, work, dataset_dir, None, overlays, {
            "image_size": list(image_size), **_runtime_overrides(num_workers, amp_dtype), "batch_size": batch_size,
            **model_overrides}, epochs)
        net = config_parser("train.json", overlays=overlays, source=root, image_size=list(image_size),
                            **model_overrides).get_parsed_content("network_def")
        x = torch.rand(1, 3, *image_size)
        rows.append({"model": name, "params": parameter_count(net),
                     "latency_ms": round(forward_latency_ms(net, x, latency_iters, 2), 1), **result})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# name -> config overlays (relative to the repository) on top of the task's training chain
RECIPES: dict[str, list[str]] = {
    "default": [],  # configs/train.json (and the task's overlays) as they are
    "official": ["configs/recipes/official.json"],  # the official code's loss, augmentation, batch, constant LR, all images, last epoch
}


def check_test_fraction(test_fraction: float) -> float:
    """Returns ``test_fraction`` if it is a share strictly between 0 and 1, else raises ``ValueError``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return test_fraction


def carve_test_split(dataset_dir: str | os.PathLike, output: str | os.PathLike, test_fraction: float = 0.1,
                     seed: int = 0) -> dict[str, list]:
    """Writes a datalist whose ``test`` list is ``test_fraction`` of the folder's image/mask pairs, drawn by
    ``seed`` and never used for training or checkpoint selection; every other pair is ``training`` (each
    recipe carves its own validation from it, or trains on all of it). Returns the lists."""
    check_test_fraction(test_fraction)
    num_pairs = len(find_image_mask_pairs(dataset_dir))
    return write_datalist(dataset_dir, output, num_validation=0, num_test=max(1, round(test_fraction * num_pairs)), seed=seed)


def compare_recipes(dataset_dir: str | os.PathLike, out: str | os.PathLike, recipes: Sequence[str] = tuple(RECIPES),
                    task: str | None = None, image_size: Sequence[int] | None = None, epochs: int = 4,
                    seeds: Sequence[int] = (0, 1), test_fraction: float = 0.1, split_seed: int = 0,
                    num_workers: int | None = None, amp_dtype: str | None = None,
                    root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Trains each recipe of ``recipes`` (names of :data:`RECIPES`) once per seed on the same images and evaluates
    every run on the same carved test split (:func:`carve_test_split`, ``out/datalist.json``).

    Args:
        dataset_dir: a folder with ``images/`` + ``masks/`` (the test split is carved from it).
        out: the working folder: ``out/<recipe>-seed<seed>/`` holds each run's models, logs and evaluation.
        task: a task of ``configs/tasks/`` whose configs the recipes overlay (``None``: ``configs/train.json``).
        image_size: ``(H, W)`` network input; ``None`` keeps the task's.
        epochs: the training budget, the same for every run.
        seeds: the ``seed`` of each run (weights, augmentation, batch order); the splits stay fixed.
        test_fraction, split_seed: the held-out share of the pairs and its draw.
        num_workers: data loader workers; ``None`` keeps the configs' own (none on a CPU of at most 4 cores).
        amp_dtype: the training precision of every run (``amp_dtype`` of train.json); ``None`` keeps the configs'.

    Returns one row per run: ``recipe``, ``seed`` and the keys of :data:`REPORTED` and :data:`COUNTED`.
    """
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    root, out = source_root(root).resolve(), Path(out).resolve()
    datalist = out / "datalist.json"
    carve_test_split(dataset_dir, datalist, test_fraction, split_seed)
    overrides = {**_runtime_overrides(num_workers, amp_dtype), **({"image_size": list(image_size)} if image_size else {})}
    rows = []
    for seed in seeds:  # seed-major: an interrupted comparison still has every recipe of its first seeds
        for recipe in recipes:
            print(f"[{recipe}, seed {seed}] training {epochs} epochs, then evaluating ...", flush=True)
            result = _train_and_evaluate(root, out / f"{recipe}-seed{seed}", datalist, task, RECIPES[recipe],
                                         {**overrides, "seed": seed}, epochs)
            rows.append({"recipe": recipe, "seed": seed, **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def write_recipe_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, heading: str) -> None:
    """The rows of :func:`compare_recipes` as Markdown under ``heading``: one line per run, then per recipe the mean
    over seeds and the spread (max - min) in brackets."""
    lines = [heading, "", "| recipe | seed | Dice | IoU | HD95 | ASD | NSD | empty predictions | training (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seed']} | " + " | ".join(format_number(r[k], "-") for k in (*REPORTED, *COUNTED)) + " |")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        runs = [r for r in rows if r["recipe"] == recipe]
        cells = []
        for key in (*REPORTED, *COUNTED):
            values = [r[key] for r in runs if r[key] is not None]
            cells.append(f"{format_number(sum(values) / len(values), '-')} ({format_number(max(values) - min(values), '-')})" if values else "-")
        lines.append(f"| **{recipe}**, mean (spread) | {len(runs)} seeds | " + " | ".join(cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n")


def write_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, heading: str) -> None:
    """The rows of :func:`compare_models` as a Markdown table under the line ``heading`` (the budget and data)."""
    lines = [heading, "",
             "| model | parameters | latency (ms) | Dice | IoU | HD95 | ASD | NSD | empty predictions | training (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['latency_ms']} | "
                     + " | ".join(format_number(r[k], "-") for k in (*REPORTED, *COUNTED)) + " |")
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":  # the interpreter of _run_steps: one argument, the JSON list of [ARGS, log] steps
    sys.exit(run_steps_here(json.loads(sys.argv[1])))
