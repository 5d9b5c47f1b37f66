"""INT8 post-training quantization of a trained bundle for the CPU engine, behind an accuracy gate.

:func:`quantize` (the command ``transfuse-quantize``) takes a bundle's weights (``BUNDLE/models/model.pt``) and a
labelled dataset D:

1. it splits D into calibration images and a held-out part (:func:`quantization_split`): a datalist's ``test``
   list is held out (else its ``validation`` list) and its other lists calibrate; a folder's pairs are split by
   a seeded draw (``held_out_fraction``);
2. it converts the network to OpenVINO (:func:`~transfuse_bundle.cpu_engine.engine_model`) and quantizes it
   with NNCF's post-training quantization (``nncf.quantize``, transformer model type, mixed preset: symmetric
   weights, asymmetric activations) on up to ``calibration_size`` images preprocessed as the bundle preprocesses
   them (a volume gives its axial slices);
3. it evaluates the fp32 CPU engine and the INT8 model on the held-out part with the bundle's own evaluation
   (``evaluate.json`` with ``configs/inference_cpu.json`` / ``inference_int8.json``: every metric of the report,
   each in its folder ``OUT/fp32`` and ``OUT/int8``) and writes ``OUT/quantization.json`` and ``.md`` (every metric
   of ``metrics.json``, fp32 against INT8, and the gate);
4. the gate: the held-out mean Dice of INT8 may be at most ``max_dice_drop`` (0.01) below fp32's. Passed (or
   ``force``): ``BUNDLE/models/model.int8.xml``, ``.bin`` and ``.json`` are written (the record names the
   weights' SHA-256, the input shape and the gate's numbers, which the CPU engine checks before serving).
   Missed: nothing is written into ``models/`` and :class:`QuantizationGateError` says by how much.

Every check (the engine installed, the weights and their fit, the dataset, the output files) runs before any
work. Output files that exist and were not written by this tool are refused unless ``overwrite``; the
``models/`` and report folders are locked for the run (a training into the same ``models/`` is refused).
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..cpu_engine import EngineError, engine_model, quantized_files, require_engine, weights_digest
from ..errors import ConfigValueError, UserInputError
from ..files import sha256, write_text_atomically
from ..locking import locked_folders
from ..metrics.report import format_number
from ..outputs import OutputConflictError, claim, record
from ..weights import load_weights, raise_misfit
from .tasks import config_parser, config_workflow, is_repository

__all__ = ["QuantizationGateError", "MAX_DICE_DROP", "quantization_split", "calibration_samples", "quantize",
           "compare_metrics"]

logger = logging.getLogger(__name__)

#: the gate: INT8 held-out mean Dice at most this far below fp32's
MAX_DICE_DROP = 0.01
REPORT_FILES = ("quantization.json", "quantization.md")


class QuantizationGateError(UserInputError):
    """INT8 missed the accuracy gate; the message says by how much and where the report is."""


def require_nncf() -> str:
    """NNCF's version, or :class:`~transfuse_bundle.cpu_engine.EngineError` naming the extra to install."""
    require_engine()
    try:
        import nncf
    except ImportError:
        raise EngineError('transfuse-quantize needs NNCF, which is not installed: pip install -e ".[cpu]" in a '
                          'checkout of transfuse-bundle (the `cpu` extra: openvino, nncf)') from None
    return nncf.__version__


def quantization_split(dataset_dir: str | os.PathLike, held_out_fraction: float = 0.2,
                       seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(calibration, held_out)`` entries of ``dataset_dir``: a datalist's ``test`` list (else ``validation``)
    is held out and its other lists calibrate; a folder's image/mask pairs are split by a draw of ``seed``."""
    from ..data import load_datalist

    if not 0.0 < held_out_fraction < 1.0:
        raise ConfigValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    lists = load_datalist(dataset_dir, val_fraction=held_out_fraction, seed=seed)
    if lists.get("test"):
        held_out, calibration = lists["test"], lists["training"] + lists.get("validation", [])
    else:
        held_out, calibration = lists.get("validation", []), lists["training"]
    if not held_out or not calibration:
        raise ConfigValueError(f"{dataset_dir}: {len(calibration)} calibration and {len(held_out)} held-out cases; "
                               f"quantization needs both (a datalist with a test list, or a folder of pairs)")
    return calibration, held_out


def calibration_samples(entries: Sequence[Mapping[str, Any]], preprocessing: Any, size: int, seed: int = 0,
                        slices_per_volume: int = 8) -> list[np.ndarray]:
    """Up to ``size`` network inputs ``(C, H, W)`` float32 from ``entries`` (a seeded draw), each preprocessed
    by the bundle's ``preprocessing``; a volume ``(C, H, W, D)`` gives up to ``slices_per_volume`` evenly
    spaced axial slices."""
    order = list(entries)
    random.Random(seed).shuffle(order)
    samples: list[np.ndarray] = []
    for entry in order:
        image = torch.as_tensor(preprocessing({"image": entry["image"]})["image"]).float()
        if image.ndim == 4:
            depth = image.shape[-1]
            picks = sorted(set(np.linspace(0, depth - 1, min(depth, slices_per_volume)).round().astype(int)))
            samples += [image[..., k].numpy() for k in picks]
        else:
            samples.append(image.numpy())
        if len(samples) >= size:
            break
    return samples[:size]


def _flat_numbers(content: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a ``metrics.json`` (nested keys joined by ``/``), counts and settings included."""
    if isinstance(content, bool):
        return {}
    if isinstance(content, (int, float)):
        return {prefix: float(content)}
    if isinstance(content, Mapping):
        found: dict[str, float] = {}
        for key, value in content.items():
            found.update(_flat_numbers(value, f"{prefix}/{key}" if prefix else str(key)))
        return found
    return {}


def compare_metrics(fp32: Mapping[str, Any], int8: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per number of the two ``metrics.json``: ``{"metric", "fp32", "int8", "difference"}``."""
    a, b = _flat_numbers(fp32), _flat_numbers(int8)
    return [{"metric": key, "fp32": a[key], "int8": b.get(key),
             "difference": None if b.get(key) is None else b[key] - a[key]} for key in a]


def _markdown(result: Mapping[str, Any]) -> str:
    gate = result["gate"]
    lines = [f"# INT8 against fp32 on {result['num_held_out']} held-out cases", "",
             f"Weights {result['ckpt_path']} (sha256 {result['ckpt_sha256'][:12]}...), input {result['input_shape']}, "
             f"{result['num_calibration_samples']} calibration samples from {result['num_calibration_cases']} cases, "
             f"OpenVINO {result['openvino']}, NNCF {result['nncf']}; INT8 runs at {result['int8_dtype']}.", "",
             f"**Gate** (INT8 mean Dice at most {gate['max_dice_drop']} below fp32's): fp32 {gate['fp32_dice']:.4f}, "
             f"INT8 {gate['int8_dice']:.4f}, drop {gate['dice_drop']:.4f}: **{'passed' if gate['passed'] else 'missed'}**"
             f"{'' if gate['passed'] else ' (written anyway: --force)' if result['written'] else ' (not written)'}.",
             "", "| metric | fp32 | INT8 | INT8 - fp32 |", "|---|---|---|---|"]
    for row in result["metrics"]:
        lines.append(f"| {row['metric']} | {format_number(row['fp32'])} | {format_number(row['int8'])} | "
                     f"{format_number(row['difference'])} |")
    return "\n".join(lines) + "\n"


def quantize(bundle_root: str | os.PathLike, dataset_dir: str | os.PathLike, task: str | None = None,
             image_size: Sequence[int] | None = None, output_dir: str | os.PathLike | None = None,
             calibration_size: int = 300, held_out_fraction: float = 0.2, seed: int = 0,
             max_dice_drop: float = MAX_DICE_DROP, force: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Quantizes ``bundle_root``'s weights to INT8, evaluates fp32 against INT8, applies the gate (module doc).

    Args:
        bundle_root: holds ``models/model.pt``; a packaged bundle folder (its own ``configs/``) or any folder used
            as ``--bundle_root`` with the repository's configs.
        dataset_dir: labelled data: a folder of pairs, or a datalist (``test`` held out).
        task: the repository task whose configs apply (None: the repository's own, or the bundle folder's).
        image_size: ``(H, W)`` network input (default: the config's); the weights must have been trained at it.
        output_dir: the report folder (default ``bundle_root/eval/int8``).
        calibration_size: calibration samples (images, or slices of volumes).
        held_out_fraction, seed: the held-out share of a folder and the draws of the split and the calibration.
        max_dice_drop: the gate.
        force: write the INT8 model even when the gate is missed.
        overwrite: replace output files that this tool did not write.

    Returns the report (also written as ``output_dir/quantization.json``); raises
    :class:`QuantizationGateError` after writing the report when the gate is missed without ``force``.
    """
    nncf_version = require_nncf()
    bundle_root = Path(bundle_root).resolve()
    source = bundle_root if not is_repository(bundle_root) and (bundle_root / "configs" / "train.json").is_file() else None
    if source is not None and task is not None:
        raise ConfigValueError(f"{bundle_root} is a bundle folder with its own configs: leave --task out")
    overrides: dict[str, Any] = {"bundle_root": str(bundle_root), "dataset_dir": str(dataset_dir),
                                 "device": "$torch.device('cpu')", "num_workers": 0}
    if image_size is not None:
        overrides["image_size"] = [int(s) for s in image_size]
    parser = config_parser("evaluate.json", task, source=source, **overrides)
    ckpt_path = Path(parser.get_parsed_content("ckpt_path"))
    output_dir = Path(output_dir) if output_dir is not None else bundle_root / "eval" / "int8"
    xml, binary, record_file = quantized_files(ckpt_path)
    # every check before any work: weights and their fit, the data, the output files
    state = load_weights(ckpt_path, "trained weights to quantize (train first, or pass --bundle_root)")
    network = parser.get_parsed_content("network_def")
    raise_misfit(network, state, f"trained weights {str(ckpt_path)!r}")
    calibration, held_out = quantization_split(dataset_dir, held_out_fraction, seed)
    from ..data import check_dataset

    check_dataset({"calibration": calibration, "held_out": held_out},
                  **{key: parser.get_parsed_content(key) for key in ("num_classes", "spatial_dims", "in_channels")})
    for folder, files in ((ckpt_path.parent, [xml, binary, record_file]),
                          (output_dir, [output_dir / name for name in REPORT_FILES])):
        try:
            claim(folder, files, overwrite=overwrite)
        except OutputConflictError as error:  # claim's advice names the bundle commands' options; these are ours
            raise OutputConflictError(f"{str(error).split('; nothing was written')[0]}; nothing was written: move the "
                                      f"file(s), choose another --output_dir for the report, or pass --overwrite") from None
    with locked_folders([ckpt_path.parent, output_dir]):
        return _quantize_locked(parser, network, state, ckpt_path, calibration, held_out, task, source, overrides,
                                output_dir, calibration_size, seed, max_dice_drop, force, overwrite, nncf_version)


def _evaluate(task: str | None, source: Path | None, overlay: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's evaluation with an inference overlay; returns its ``metrics.json``."""
    overlays = [overlay] if source is None else [str(Path(source) / overlay)]
    workflow = config_workflow("evaluate.json", task, overlays, source=source, **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return json.loads((Path(overrides["output_dir"]) / "metrics.json").read_text())


def _quantize_locked(parser, network, state, ckpt_path: Path, calibration, held_out, task, source, overrides,
                     output_dir: Path, calibration_size: int, seed: int, max_dice_drop: float, force: bool,
                     overwrite: bool, nncf_version: str) -> dict[str, Any]:
    import nncf
    import openvino

    started = time.perf_counter()
    network.load_state_dict(state)
    network.eval()
    digest = weights_digest(network)
    image_size = [int(s) for s in parser.get_parsed_content("image_size")]
    input_shape = (int(parser.get_parsed_content("in_channels")), *image_size)
    fp32_model = engine_model(network, ckpt_path, input_shape, digest)
    samples = calibration_samples(calibration, parser.get_parsed_content("preprocessing"), calibration_size, seed)
    logger.info("quantizing with %d calibration samples", len(samples))
    int8_model = nncf.quantize(fp32_model, nncf.Dataset(samples, lambda sample: sample[None]),
                               preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
                               subset_size=len(samples))
    held_out_list = {"training": [], "validation": [], "test": list(held_out)}
    int8_dtype = parser.get_parsed_content("autocast_dtype")
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=ckpt_path.parent) as staging:
        staged = Path(staging) / ckpt_path.name  # the INT8 files beside a name in the staging folder
        staged_xml, staged_bin, staged_record = quantized_files(staged)
        openvino.save_model(int8_model, str(staged_xml), compress_to_fp16=False)
        record_content = {"weights_sha256": digest, "ckpt_sha256": sha256(ckpt_path), "input_shape": list(input_shape),
                          "openvino": openvino.__version__, "nncf": nncf_version}
        staged_record.write_text(json.dumps(record_content, indent=2) + "\n")
        common = {**overrides, "dataset_dir": str(output_dir / "held_out.json"), "overwrite": overwrite,
                  "validate#dataset#data": held_out_list["test"]}
        write_text_atomically(output_dir / "held_out.json", json.dumps(held_out_list, indent=2) + "\n")
        record(output_dir, [output_dir / "held_out.json"])
        metrics_fp32 = _evaluate(task, source, "configs/inference_cpu.json",
                                 {**common, "output_dir": str(output_dir / "fp32"), "inferer#dtype": "$torch.float32"})
        metrics_int8 = _evaluate(task, source, "configs/inference_int8.json",
                                 {**common, "output_dir": str(output_dir / "int8"), "inferer#path": str(staged),
                                  "initialize": []})
        fp32_dice, int8_dice = float(metrics_fp32["mean_dice"]), float(metrics_int8["mean_dice"])
        passed = fp32_dice - int8_dice <= max_dice_drop
        written = passed or force
        if written:  # the .bin first and the record last: a record always names complete model files
            final_xml, final_bin, final_record = quantized_files(ckpt_path)
            for staged_file, final in ((staged_bin, final_bin), (staged_xml, final_xml), (staged_record, final_record)):
                os.replace(staged_file, final)
            record(ckpt_path.parent, quantized_files(ckpt_path))
    result = {"ckpt_path": str(ckpt_path), "ckpt_sha256": record_content["ckpt_sha256"], "weights_sha256": digest,
              "input_shape": list(input_shape), "openvino": openvino.__version__, "nncf": nncf_version,
              "int8_dtype": str(int8_dtype).removeprefix("torch."), "num_calibration_cases": len(calibration),
              "num_calibration_samples": len(samples), "num_held_out": len(held_out),
              "gate": {"max_dice_drop": max_dice_drop, "fp32_dice": fp32_dice, "int8_dice": int8_dice,
                       "dice_drop": fp32_dice - int8_dice, "passed": passed},
              "written": written, "int8_model": str(quantized_files(ckpt_path)[0]) if written else None,
              "seconds": round(time.perf_counter() - started, 1), "metrics": compare_metrics(metrics_fp32, metrics_int8)}
    if written:  # the gate's numbers in the record the CPU engine reads
        final_record = quantized_files(ckpt_path)[2]
        write_text_atomically(final_record, json.dumps({**record_content, "gate": result["gate"]}, indent=2) + "\n")
        record(ckpt_path.parent, [final_record])
    write_text_atomically(output_dir / "quantization.json", json.dumps(result, indent=2) + "\n")
    write_text_atomically(output_dir / "quantization.md", _markdown(result))
    record(output_dir, [output_dir / name for name in REPORT_FILES])
    if not passed and not force:
        raise QuantizationGateError(
            f"INT8 held-out mean Dice {int8_dice:.4f} against fp32's {fp32_dice:.4f}: a drop of "
            f"{fp32_dice - int8_dice:.4f}, more than the gate's {max_dice_drop} (missed by "
            f"{fp32_dice - int8_dice - max_dice_drop:.4f}); the INT8 model was not written (--force writes it anyway); "
            f"report: {output_dir / 'quantization.md'}")
    return result
