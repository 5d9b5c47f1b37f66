"""The GPU check: one command that measures the bundle on one GPU in under 10 minutes and writes one report.

Three stages, each reusing the project's own code, each timed, the report rewritten after every stage (so a
run cut short still leaves what it measured):

1. **benchmark** (:func:`transfuse_bundle.tools.benchmarking.run_benchmark`): TransFuse-S (and official-S) at
   352x352, fp32, fp32-fast (BatchNorm folded, channels-last), bf16-fast (bf16 autocast), torch.compile and
   CUDA graphs; batch-1 latency, each path's best-throughput batch, training steps, and the roofline against
   the fp32 / bf16 matmul peak measured in the same run;
2. **training**: the polyp task (``configs/tasks/polyp``: multi-scale 0.75 / 1 / 1.25, batch 16) with
   ``amp_dtype`` bfloat16 on a Kvasir-SEG subset, through the bundle workflow (``monai.bundle``'s
   ``ConfigWorkflow``, as ``python -m monai.bundle run training`` runs it);
3. **evaluation**: the polyp task's ``evaluate.json`` on held-out Kvasir-SEG images at their original
   resolution, with the trained weights (metrics.json, per-case CSV, overlays);
4. **tensorrt**: the same evaluation served by ``configs/inference_trt.json`` (MONAI's ``trt_compile``, at the
   precision of ``amp_dtype``; the plan is built on the first image): its seconds per image and metrics against
   stage 3's. Where TensorRT cannot run (no CUDA, or no ``tensorrt`` / ``polygraphy``: the ``--tiny`` run on a
   CPU), the stage records the overlay's one-line refusal instead.

:data:`TINY` runs the same stages on the CPU in well under a minute (32x32 images, a few of them, one
epoch, ``amp_dtype`` auto: emulated bf16 on a CPU without native bf16 is many times slower; the bf16
training step is tested in tests/test_mixed_precision.py) so that the test suite keeps the check working;
the numbers it writes mean nothing.

Example::

    from transfuse_bundle.tools.gpu_check import run_gpu_check
    report = run_gpu_check("/tmp/gpu_check", "../shared/data/kvasir_seg")   # writes gpu_check.{json,md}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import find_user_error
from .benchmarking import add_roofline, machine_description, machine_peaks, markdown_lines, run_benchmark
from ..data import write_datalist
from .tasks import config_workflow

__all__ = ["CheckSettings", "FULL", "TINY", "run_gpu_check", "check_markdown", "REPORT_NAME"]

REPORT_NAME = "gpu_check"  # OUT/gpu_check.json and OUT/gpu_check.md
TASK = "polyp"


@dataclass(frozen=True)
class CheckSettings:
    """What each stage runs (see the module doc); :data:`FULL` for one GPU, :data:`TINY` for the test suite."""

    device: str = "cuda"
    # benchmark (transfuse_bundle.tools.benchmarking.run_benchmark)
    models: tuple[str, ...] = ("official-S", "S")
    bench_size: tuple[int, int] = (352, 352)
    iters: int = 50
    warmup: int = 10
    throughput_batch: int = 64  # the compiled paths' throughput batch (the eager paths sweep batch_sweep)
    throughput_iters: int = 10
    train_batch: int = 16
    train_iters: int = 10
    compile: bool = True
    batch_sweep: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256)
    peak_size: int | None = None
    # training and evaluation (the polyp task's bundle configs)
    num_training: int = 600
    num_validation: int = 50
    num_test: int = 100
    image_size: tuple[int, int] = (352, 352)
    batch_size: int = 16
    max_epochs: int = 10
    num_workers: int = 8
    amp_dtype: str = "bfloat16"
    overrides: dict[str, Any] = field(default_factory=dict)  # any other config override of both workflows


FULL = CheckSettings()
TINY = CheckSettings(device="cpu", models=("S",), bench_size=(32, 32), iters=1, warmup=1, throughput_batch=2,
                     throughput_iters=1, train_batch=2, train_iters=1, compile=False, batch_sweep=(1, 2), peak_size=256,
                     num_training=4, num_validation=1, num_test=2, image_size=(32, 32), batch_size=2, max_epochs=1,
                     num_workers=0, amp_dtype="auto", overrides={"multi_scale_multiple": 16, "num_overlays": 1})


def _benchmark(settings: CheckSettings) -> dict:
    peaks = machine_peaks(settings.device, settings.peak_size)
    rows = run_benchmark(list(settings.models), [settings.bench_size], settings.device, settings.iters,
                         settings.warmup, settings.throughput_batch, settings.throughput_iters, settings.train_batch,
                         settings.train_iters, settings.compile, settings.batch_sweep)
    add_roofline(rows, peaks)
    return {"peak_gflop_s": peaks, "results": rows}


def _training(settings: CheckSettings, datalist: Path, bundle: Path) -> dict:
    common = {"dataset_dir": str(datalist), "bundle_root": str(bundle), "image_size": list(settings.image_size),
              "num_workers": settings.num_workers, "device": f"$torch.device({settings.device!r})", **settings.overrides}
    workflow = config_workflow("train.json", TASK, **common, batch_size=settings.batch_size,
                               max_epochs=settings.max_epochs, val_interval=max(1, settings.max_epochs // 2),
                               amp_dtype=settings.amp_dtype)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    validator = workflow.parser.get_parsed_content("validate#evaluator")
    autocast = workflow.parser.get_parsed_content("autocast_dtype")
    return {"epochs": trainer.state.epoch, "training_images": settings.num_training,
            "autocast_dtype": str(autocast).removeprefix("torch."), "grad_scaler": trainer.scaler is not None,
            "last_epoch_s": round(trainer.state.times["EPOCH_COMPLETED"], 2),
            "last_validation_s": round(validator.state.times["COMPLETED"], 2),
            "val_mean_dice": round(float(validator.state.metrics["val_mean_dice"]), 4),
            "best_val_mean_dice": round(float(validator.state.best_metric), 4)}


def _evaluation(settings: CheckSettings, datalist: Path, bundle: Path, out: Path, overlays: tuple[str, ...] = ()) -> dict:
    workflow = config_workflow("evaluate.json", TASK, overlays, dataset_dir=str(datalist), bundle_root=str(bundle),
                               output_dir=str(out), num_workers=settings.num_workers,
                               device=f"$torch.device({settings.device!r})", image_size=list(settings.image_size),
                               **settings.overrides)
    workflow.initialize()
    start = time.perf_counter()
    workflow.run()
    workflow.finalize()
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"report": str(out), "num_cases": metrics["num_cases"], "s_per_image": round(seconds / metrics["num_cases"], 3),
            **{k: metrics[k] for k in ("mean_dice", "mean_iou", "hd95") if k in metrics}}


def _tensorrt(settings: CheckSettings, datalist: Path, bundle: Path, out: Path) -> dict:
    """Stage 4: the evaluation through ``configs/inference_trt.json``, or ``{"refused": its one-line message}``."""
    try:
        return _evaluation(settings, datalist, bundle, out, ("configs/inference_trt.json",))
    except Exception as error:  # MONAI's config parser wraps what the overlay's check raised
        refusal = find_user_error(error)
        if refusal is None:
            raise
        return {"refused": str(refusal)}


def check_markdown(report: dict) -> str:
    """The report as Markdown: the stages' wall times, the benchmark and roofline tables, training, evaluation."""
    stages = report["stages"]
    lines = [f"# GPU check ({report['mode']})", "", f"Machine: {report['machine']}", "",
             "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {name} | {stage['wall_s']} |" for name, stage in stages.items()]
    lines += [f"| total | {report.get('total_wall_s', '-')} |"]
    if "benchmark" in stages:
        bench = stages["benchmark"]
        lines += ["", "## Benchmark", ""] + markdown_lines(bench["results"], report["machine"], None, bench["peak_gflop_s"])
    for name in ("training", "evaluation", "tensorrt"):
        if name in stages:
            lines += ["", f"## {name.capitalize()}", "", "| | |", "|---|---|"]
            lines += [f"| {key} | {value} |" for key, value in stages[name].items() if key != "wall_s"]
    return "\n".join(lines) + "\n"


def _write(report: dict, out: Path) -> None:
    (out / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{REPORT_NAME}.md").write_text(check_markdown(report))


def run_gpu_check(out: str | os.PathLike, data: str | os.PathLike, settings: CheckSettings = FULL,
                  tiny: bool = False) -> dict:
    """Runs the four stages (see the module doc) and writes ``out/gpu_check.{json,md}`` after each.

    Args:
        out: a folder that does not exist yet, or an empty one (nothing in it is overwritten).
        data: a Kvasir-SEG folder (``images/`` + ``masks/``) with at least
            ``num_training + num_validation + num_test`` pairs.
        settings: :data:`FULL` (one GPU, < 10 minutes) or :data:`TINY`.
        tiny: names the report's mode (``settings`` decides what runs).
    Raises:
        ValueError, FileExistsError, DatasetError: before anything runs (CUDA missing, ``out`` not empty,
        too few images).
    Returns:
        the report (also written as JSON).
    """
    out = Path(out)
    if torch.device(settings.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {settings.device!r}: CUDA is not available here (--tiny runs on the CPU)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new folder for the GPU check's report")
    out.mkdir(parents=True, exist_ok=True)
    datalist = out / "datalist.json"
    write_datalist(data, datalist, settings.num_training, settings.num_validation, settings.num_test, seed=0)
    report: dict[str, Any] = {"mode": "tiny" if tiny else "full", "machine": machine_description(settings.device),
                              "data": str(Path(data).resolve()),
                              "settings": {k: v for k, v in asdict(settings).items()}, "stages": {}}
    stages = [("benchmark", lambda: _benchmark(settings)),
              ("training", lambda: _training(settings, datalist, out / "bundle")),
              ("evaluation", lambda: _evaluation(settings, datalist, out / "bundle", out / "eval")),
              ("tensorrt", lambda: _tensorrt(settings, datalist, out / "bundle", out / "eval_trt"))]
    begin = time.perf_counter()
    for name, stage in stages:
        start = time.perf_counter()
        result = stage()
        report["stages"][name] = {**result, "wall_s": round(time.perf_counter() - start, 1)}
        report["total_wall_s"] = round(time.perf_counter() - begin, 1)
        _write(report, out)
        print(f"{name}: {json.dumps(report['stages'][name])[:2000]}", flush=True)
    return report


def settings_for(tiny: bool, **changes: Any) -> CheckSettings:
    """:data:`TINY` or :data:`FULL` with ``changes`` (``None`` values keep the default)."""
    return replace(TINY if tiny else FULL, **{k: v for k, v in changes.items() if v is not None})
