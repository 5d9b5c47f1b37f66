"""What the machine offers the bundle: the precision of its forwards and the data-loading processes.

:func:`resolve_amp_dtype` turns the configs' one precision switch ``amp_dtype`` into the autocast dtype of every
forward (training, validation, evaluation, serving; :class:`~transfuse_bundle.inferers.AutocastInferer` applies
it); MONAI's ``amp`` flag, which also creates a ``GradScaler``, is set only for float16.
:func:`loader_workers` is the configs' default ``num_workers``.
"""

from __future__ import annotations

import os

import torch

from .errors import UserInputError
from .networks.fast import fast_autocast_available

__all__ = ["AMP_DTYPES", "resolve_amp_dtype", "available_cpus", "loader_workers", "require_tensorrt",
           "trt_precision"]

AMP_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_amp_dtype(amp_dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """The autocast dtype for ``amp_dtype`` on ``device`` (``torch.float32``: no autocast).

    ``"auto"``: bfloat16 on a CUDA GPU with native bf16 (Ampere and later), float16 on older GPUs (with
    MONAI's ``GradScaler``), bfloat16 on a CPU with native bf16 (AVX512-BF16 / AMX: the training step
    runs ~2.2x faster), float32 elsewhere (emulated bf16 on a CPU is slower than float32).
    ``"float32"``, ``"bfloat16"``, ``"float16"`` (CUDA only) force a dtype.

    >>> resolve_amp_dtype("float32", "cpu")
    torch.float32
    """
    device = torch.device(device)
    names = {str(dtype).removeprefix("torch."): dtype for dtype in AMP_DTYPES.values()}
    key = str(amp_dtype).removeprefix("torch.").lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if fast_autocast_available(device) else torch.float32
    if key not in names:
        raise ValueError(f"amp_dtype must be one of 'auto', {', '.join(map(repr, names))}; got {amp_dtype!r}")
    if names[key] == torch.float16 and device.type != "cuda":
        raise ValueError(f"amp_dtype 'float16' needs a CUDA device (its GradScaler is CUDA's), the device is "
                         f"{device}; use 'bfloat16' or 'float32'")
    return names[key]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and ``taskset`` narrow; ``os.cpu_count()``
    where the OS has none): what PyTorch's ``DataLoader`` compares ``num_workers`` with (:func:`loader_workers` stays within it, so
    no warning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(device: torch.device | str) -> int:
    """The configs' default ``num_workers``: ``min(4, available_cpus())`` worker processes, but none when the
    compute runs on a CPU of at most 4 cores. There PyTorch's threads already use every core, and worker
    processes take cores from them: on 2 cores, 2 workers slowed a 192x256 training step from 5.7 to 6.9 s while
    augmenting its batch in the main process costs ~0.2 s (docs/performance.md, training loop)."""
    cpus = available_cpus()
    return 0 if torch.device(device).type == "cpu" and cpus <= 4 else min(4, cpus)


def require_tensorrt(device: torch.device | str) -> str:
    """Returns the TensorRT version when ``configs/inference_trt.json`` can run on ``device``: a CUDA device with
    the ``tensorrt`` and ``polygraphy`` packages (what MONAI's ``trt_compile`` needs). Otherwise raises
    :class:`~transfuse_bundle.errors.UserInputError` in one line: ``trt_compile`` itself would only log a warning
    and run the network eagerly, so a user would believe TensorRT ran."""
    import importlib.util

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise UserInputError(f"configs/inference_trt.json compiles the network with TensorRT, which needs a CUDA GPU; "
                             f"the device is {device} (CUDA available: {torch.cuda.is_available()}): run inference.json "
                             f"(PyTorch) or inference_cpu.json (the CPU engine) instead")
    missing = [name for name in ("tensorrt", "polygraphy", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(f"configs/inference_trt.json needs {', '.join(missing)} (MONAI's trt_compile): pip install "
                             f"tensorrt polygraphy onnx, matching this machine's CUDA")
    import tensorrt

    return tensorrt.__version__


def trt_precision(dtype: torch.dtype) -> str:
    """The ``trt_compile`` precision of the resolved ``amp_dtype``: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    >>> trt_precision(torch.bfloat16)
    'bf16'
    """
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
