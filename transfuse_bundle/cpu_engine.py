"""The CPU inference engine: the network converted once to OpenVINO, cached beside its weights, run on the CPU.

``configs/inference_cpu.json`` serves the bundle with :class:`CPUEngineInferer` instead of PyTorch eager, and
``configs/inference_int8.json`` with the INT8 model that ``transfuse-quantize`` wrote
(:mod:`transfuse_bundle.tools.quantize`). OpenVINO was chosen over ONNX Runtime because it measured faster here
for TransFuse-S at batch 1 on 2 cores, in fp32 and in bf16 / INT8 (ONNX Runtime has no bf16 on x86 CPUs), and
NNCF quantizes its models (docs/performance.md, "CPU engine"). OpenVINO is optional: the ``cpu`` extra
(``pip install -e ".[cpu]"``) installs it; without it :func:`require_engine` refuses in one line.

The inferer keeps the bundle's contract, ``inferer(inputs, network)``, and converts the network it is given,
so the weights are whatever was loaded into it (``ckpt_path`` by the configs' ``CheckpointLoader``, a new
``model.pt`` by MONAI Label after training). The converted model is cached beside the weights as
``model.openvino-KEY.xml`` / ``.bin``, KEY a hash of the weights' values, the input shape and the OpenVINO
version: a cache made from other weights is never used, and a new file replaces the old ones (MONAI's
``trt_compile`` keys its TensorRT plan by the checkpoint's time stamp; the weights' values also catch a file
copied over with an older time stamp). The batch dimension is dynamic (the prostate task's ``SliceInferer``
batches slices), the image size fixed per compiled model. Precision follows the bundle's one switch,
``amp_dtype``: its resolved ``autocast_dtype`` bfloat16 runs OpenVINO's bf16 inference precision (where the
CPU has native bf16), float32 runs f32 (OpenVINO's own default on such CPUs would be bf16).

Example::

    inferer = CPUEngineInferer("models/model.pt", dtype=torch.float32)
    logits = inferer(torch.rand(2, 3, 192, 256), network)     # (2, 1, 192, 256), float32
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import secrets
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from .errors import UserInputError
from .inferers import FastInferer

__all__ = ["ENGINE_EXTRA", "EngineError", "require_engine", "require_quantized_model", "weights_digest",
           "engine_cache_files", "quantized_files", "read_quantized_record", "convert_network", "engine_model",
           "compile_model", "save_model", "EngineNetwork",
           "CPUEngineInferer"]

logger = logging.getLogger(__name__)

#: how to get the engine: the project's optional dependencies
ENGINE_EXTRA = 'pip install -e ".[cpu]" in a checkout of transfuse-bundle (the `cpu` extra: openvino, nncf)'
#: the file names beside the weights: ``model.openvino-KEY.xml`` (the cache), ``model.int8.xml`` (transfuse-quantize)
CACHE_TAG, INT8_TAG = "openvino", "int8"


class EngineError(UserInputError):
    """The CPU engine cannot run what was asked: OpenVINO missing, no INT8 model, or one made from other weights."""


def require_engine() -> str:
    """The installed OpenVINO version, or :class:`EngineError` saying which extra to install (the overlays call
    it in ``initialize``, before any work)."""
    try:
        import openvino
    except ImportError:
        raise EngineError(f"the CPU engine (configs/inference_cpu.json, inference_int8.json) needs OpenVINO, which "
                          f"is not installed: {ENGINE_EXTRA}") from None
    return openvino.__version__


def _core():
    import openvino

    global _CORE
    if _CORE is None:
        _CORE = openvino.Core()
    return _CORE


_CORE = None


def weights_digest(network: nn.Module) -> str:
    """SHA-256 of ``network``'s state dict (names, dtypes, shapes, values): what its converted models are keyed by."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _stem(ckpt_path: str | os.PathLike) -> Path:
    return Path(ckpt_path).with_suffix("")


def engine_cache_files(ckpt_path: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """The cached converted model of the weights ``ckpt_path`` (``models/model.pt``) for ``key``:
    ``models/model.openvino-KEY.xml`` and ``.bin``."""
    stem = _stem(ckpt_path)
    return stem.with_name(f"{stem.name}.{CACHE_TAG}-{key}.xml"), stem.with_name(f"{stem.name}.{CACHE_TAG}-{key}.bin")


def quantized_files(ckpt_path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The INT8 model of the weights ``ckpt_path`` that ``transfuse-quantize`` writes: ``models/model.int8.xml``,
    ``.bin`` and ``.json`` (what it was made from, and its accuracy gate)."""
    stem = _stem(ckpt_path)
    return tuple(stem.with_name(f"{stem.name}.{INT8_TAG}{suffix}") for suffix in (".xml", ".bin", ".json"))


def read_quantized_record(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """``model.int8.json`` of ``ckpt_path``'s INT8 model, checked to exist with its model files; else
    :class:`EngineError` naming the file and the command that makes it."""
    xml, binary, record = quantized_files(ckpt_path)
    missing = [p for p in (xml, binary, record) if not p.is_file()]
    if missing:
        raise EngineError(f"{missing[0]}: no INT8 model beside {ckpt_path}; make it with transfuse-quantize "
                          f"--bundle_root BUNDLE --dataset_dir DATA (docs/performance.md)")
    try:
        content = json.loads(record.read_text())
        content["weights_sha256"], content["input_shape"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EngineError(f"{record}: not a record of transfuse-quantize ({error}); make the INT8 model again "
                          f"with transfuse-quantize") from None
    return content


def require_quantized_model(ckpt_path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> str:
    """Returns ``ckpt_path`` after checking that its INT8 model exists, was quantized from these very weights (the
    file's SHA-256 recorded by ``transfuse-quantize``) and, given ``input_shape`` ``(C, H, W)``, for that network
    input; :class:`EngineError` otherwise. For ``initialize`` of ``inference_int8.json``, before any work."""
    from .files import sha256

    require_engine()
    record = read_quantized_record(ckpt_path)
    if input_shape is not None and [int(s) for s in input_shape] != list(record["input_shape"]):
        raise EngineError(f"{quantized_files(ckpt_path)[0]} was quantized for network inputs {record['input_shape']} "
                          f"(channels, height, width), the config's are {[int(s) for s in input_shape]}: set "
                          f"image_size to theirs, or run transfuse-quantize again with --image_size")
    if Path(ckpt_path).is_file() and record.get("ckpt_sha256") not in (None, sha256(ckpt_path)):
        raise EngineError(f"{quantized_files(ckpt_path)[0]} was quantized from other weights than {ckpt_path} "
                          f"(sha256 {record['ckpt_sha256'][:12]}...): run transfuse-quantize again for these weights")
    return str(ckpt_path)


def convert_network(network: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """``network`` (a copy, in eval mode) as an OpenVINO model for inputs ``(B, *input_shape)``, ``B`` dynamic."""
    import openvino

    model = copy.deepcopy(network).eval().cpu()
    example = torch.zeros(1, *input_shape)
    # no autocast: the inferer converts on its first call, inside its bf16 autocast, whose casts of the weights the
    # trace would take for constants ("Cannot insert a Tensor that requires grad as a constant")
    with torch.no_grad(), torch.autocast("cpu", enabled=False), warnings.catch_warnings():
        # the trace OpenVINO takes warns about the network's shape checks (constants for one input shape, which the
        # converted model has) and about torch.jit's deprecation: nothing a user acts on
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
        return openvino.convert_model(model, example_input=example,
                                      input=[openvino.PartialShape([-1, *input_shape])])


def save_model(model: Any, xml: Path) -> None:
    """Writes ``model`` as ``xml`` and its ``.bin`` whole or not at all: saved under temporary names in the same
    folder, the ``.bin`` then the ``.xml`` swapped in (``os.replace``), weights kept in fp32."""
    import openvino

    partial = xml.with_name(f".{xml.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial.xml")
    try:
        openvino.save_model(model, str(partial), compress_to_fp16=False)
        os.replace(partial.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(partial, xml)
    finally:
        for leftover in (partial, partial.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


def compile_model(model: Any, dtype: torch.dtype = torch.float32, threads: int | None = None) -> Any:
    """``model`` (an OpenVINO model or its ``.xml``) compiled for this CPU at batch-1 latency, with ``threads``
    (default: torch's) and the inference precision of ``dtype``: bf16 where the CPU has native bf16, else f32."""
    core = _core()
    native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if dtype == torch.bfloat16 and not native_bf16:
        logger.warning("amp_dtype bfloat16: this CPU has no native bf16, the CPU engine runs float32")
    precision = "bf16" if dtype == torch.bfloat16 and native_bf16 else "f32"
    return core.compile_model(model if not isinstance(model, (str, Path)) else str(model), "CPU", {
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY"})


def engine_model(network: nn.Module, ckpt_path: str | os.PathLike, input_shape: tuple[int, ...],
                 digest: str | None = None) -> Any:
    """The OpenVINO model of ``network`` for inputs ``(B, *input_shape)``: read from the cache beside the weights
    file ``ckpt_path`` when it was made from the same weights (``digest``: :func:`weights_digest`, computed when
    not given), else converted and cached there, replacing the caches of other weights. A folder that cannot be
    written only loses the cache (a warning); a damaged cache file is converted again."""
    digest = digest or weights_digest(network)
    key = hashlib.sha256(f"{digest}:{tuple(input_shape)}:{require_engine()}".encode()).hexdigest()[:16]
    xml, binary = engine_cache_files(ckpt_path, key)
    if xml.is_file() and binary.is_file():
        try:
            return _core().read_model(str(xml))
        except RuntimeError as error:
            logger.warning("%s: unreadable cached engine model (%s); converting the network again", xml, error)
    logger.info("converting the network to OpenVINO for inputs %s (cached as %s)", list(input_shape), xml.name)
    model = convert_network(network, tuple(input_shape))
    try:
        save_model(model, xml)
    except (OSError, RuntimeError) as error:  # OpenVINO reports a folder it cannot write as a RuntimeError
        logger.warning("%s: cannot cache the converted model (%s); it is converted again in each process",
                       xml.parent, error)
        return model
    for stale in xml.parent.glob(f"{_stem(ckpt_path).name}.{CACHE_TAG}-*"):
        if stale.suffix in (".xml", ".bin") and stale.stem != xml.stem:  # the caches of earlier weights
            stale.unlink(missing_ok=True)
    return model


class EngineNetwork(nn.Module):
    """A compiled OpenVINO model per input shape, called like the network: ``(B, C, H, W)`` -> float32 on the
    input's device. ``compile_for(shape)`` makes the compiled model of ``(C, H, W)`` on first use."""

    def __init__(self, compile_for: Callable[[tuple[int, ...]], Any]):
        super().__init__()
        self.compile_for = compile_for
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()  # one infer request per compiled model: calls from threads take turns

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        with self._lock:
            if shape not in self._compiled:
                self._compiled[shape] = self.compile_for(shape)
            array = np.ascontiguousarray(inputs.detach().float().cpu().numpy())
            output = self._compiled[shape](array)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32)).to(inputs.device)


class CPUEngineInferer(FastInferer):
    """:class:`~transfuse_bundle.inferers.FastInferer` with the network run by OpenVINO on the CPU (see the module
    doc): converted on first use for each input shape, cached beside ``path``, rebuilt when the weights change.

    A network in training mode, or with any layer in training mode (MC dropout), or a TorchScript module runs as
    :class:`FastInferer` runs it (PyTorch).

    Args:
        path: the weights file the network is loaded from (``ckpt_path``); the cache files go beside it.
        dtype: the resolved ``amp_dtype``: ``torch.bfloat16`` runs the engine in bf16 (native CPUs), else f32.
        inferer: as for :class:`~transfuse_bundle.inferers.AutocastInferer` (the task's ``window_inferer``).
        quantized: run the INT8 model of ``transfuse-quantize`` (``models/model.int8.xml``) when it was made
            from the network's weights; otherwise (MONAI Label retrained the network) the fp32 engine, with a
            warning.
        threads: the engine's CPU threads (default: torch's, ``torch.get_num_threads()`` at compile time).

    ``inputs``: ``(B, C, H, W)`` (or ``(B, C, H, W, D)`` with a ``SliceInferer``); returns ``(B, K, H, W)``
    float32 on the inputs' device.
    """

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32, inferer: Inferer | None = None,
                 quantized: bool = False, threads: int | None = None) -> None:
        super().__init__(dtype, inferer, channels_last=False)
        self.version = require_engine()
        self.path, self.quantized, self.threads = Path(path), bool(quantized), threads

    def optimized(self, network: nn.Module) -> nn.Module:
        """The engine model of ``network`` (a new one when the network's weights changed)."""
        fingerprint = self._fingerprint(network)
        if self._fast is None or fingerprint != self._source:
            digest = weights_digest(network)
            self._fast = EngineNetwork(lambda shape: self._compile(network, digest, shape))
            self._source = fingerprint
        return self._fast

    def _compile(self, network: nn.Module, digest: str, shape: tuple[int, ...]) -> Any:
        if self.quantized:
            xml = self._quantized_model(digest, shape)
            if xml is not None:
                return compile_model(xml, self.dtype, self.threads)
        return compile_model(engine_model(network, self.path, shape, digest), self.dtype, self.threads)

    def _quantized_model(self, digest: str, shape: tuple[int, ...]) -> Path | None:
        """``model.int8.xml`` if it was made from these weights for this input shape, else None (with a warning)."""
        record = read_quantized_record(self.path)
        if record["weights_sha256"] == digest and tuple(record["input_shape"]) == shape:
            return quantized_files(self.path)[0]
        logger.warning("%s was quantized from other weights or for another input shape (%s) than the network's "
                       "now (%s): running the fp32 CPU engine until transfuse-quantize is run again",
                       quantized_files(self.path)[0], record["input_shape"], list(shape))
        return None
