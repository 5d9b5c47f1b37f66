"""Inferers the bundle configs use."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

from .networks.fast import fast_autocast_available, optimize_for_inference

__all__ = ["AutocastInferer", "FastInferer"]


def _map_tensors(outputs: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``function`` applied to the tensors of a network's output: one tensor, or a tuple / list of them
    (the deep-supervision heads); anything else is returned as it is."""
    if isinstance(outputs, torch.Tensor):
        return function(outputs)
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_map_tensors(o, function) for o in outputs)
    return outputs


class AutocastInferer(Inferer):
    """The network called as it is, under autocast in ``dtype`` on the input's device (mixed precision
    for training and validation; ``amp_dtype`` in train.json, :func:`~transfuse_bundle.engines.resolve_amp_dtype`).

    Outputs come back as float32, so the loss, its backward seed and the metrics are computed in float32.
    With ``dtype=torch.float32`` it is MONAI's ``SimpleInferer``.

    Args:
        dtype: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32`` (no autocast).

    ``inputs``: ``(B, C, H, W)``; returns the network's output (a tensor or a tuple of heads), float32.
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.dtype == torch.float32:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            return _map_tensors(network(inputs, *args, **kwargs), torch.Tensor.float)


class FastInferer(Inferer):
    """Whole-image inference through an inference-optimised copy of the network.

    The copy has BatchNorm folded into the convolutions, its linears on oneDNN (fp32 CPU) and
    channels-last weights (:func:`~transfuse_bundle.networks.fast.optimize_for_inference`; fp32
    outputs equal the network's to ~1e-6) and runs under bf16 autocast where that is native (CUDA,
    CPUs with AVX512-BF16 or AMX); the logits come back as float32.
    The network itself is never modified, so MONAI Label can keep reloading weights into it: the
    copy is rebuilt whenever the network's parameters or buffers change. A network in training
    mode, or with any layer in training mode (MC dropout: only the dropout layers sampling), or a
    TorchScript module (``models/model.ts``) runs as it is. A MetaTensor input runs as a plain tensor
    (MONAI's per-operation metadata tracking cost 20-30 ms of a ~120 ms TransFuse-S forward at 192x256
    on 2 CPU cores, for the same values) and its metadata is given to the outputs, as MONAI's
    ``sliding_window_inference`` does.

    Args:
        bf16: ``"auto"`` (where native), ``True`` or ``False``.
        channels_last: use the channels-last memory layout.

    ``inputs``: ``(B, C, H, W)``; returns the network's output, float32.
    """

    def __init__(self, bf16: bool | str = "auto", channels_last: bool = True) -> None:
        super().__init__()
        # command-line overrides arrive as text: accept "true"/"false" too
        choices = {"auto": "auto", "true": True, "false": False}
        key = bf16.lower() if isinstance(bf16, str) else bf16
        if key not in (*choices, True, False):
            raise ValueError(f"bf16 must be 'auto', True or False, got {bf16!r}")
        self.bf16 = choices.get(key, key) if isinstance(key, str) else bool(key)
        self.channels_last = channels_last
        self._source: tuple[int, int] | None = None
        self._fast: nn.Module | None = None

    def _fingerprint(self, network: nn.Module) -> tuple[int, int]:
        # every in-place update (load_state_dict, an optimizer step) bumps a tensor's version counter
        return id(network), sum(t._version for t in (*network.parameters(), *network.buffers()))

    def optimized(self, network: nn.Module) -> nn.Module:
        """The optimised copy of ``network`` (rebuilt when the network's weights changed)."""
        fingerprint = self._fingerprint(network)
        if self._fast is None or fingerprint != self._source:
            self._fast = optimize_for_inference(copy.deepcopy(network).eval(), channels_last=self.channels_last,
                                                inplace=True)
            self._source = fingerprint
        return self._fast

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # a module in training mode anywhere (MC dropout: only the dropout layers sample) must stay as it is,
        # since the optimised copy is put in eval mode; nothing to optimise in TorchScript
        if isinstance(network, torch.jit.ScriptModule) or any(m.training for m in network.modules()):
            return network(inputs, *args, **kwargs)
        fast = self.optimized(network)
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        if meta is not None:
            inputs = inputs.as_tensor()
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        use_bf16 = fast_autocast_available(inputs.device) if self.bf16 == "auto" else bool(self.bf16)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = fast(inputs, *args, **kwargs)
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.float().contiguous()
        return outputs if meta is None else _map_tensors(outputs, lambda t: convert_to_dst_type(t, meta)[0])
